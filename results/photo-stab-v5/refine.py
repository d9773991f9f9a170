r"""A small refiner after the frozen photo MSE denoiser, guided by classifiers (STAB+MSE v5).

Usage (from the repository root, with the project's .venv):
    OMP_NUM_THREADS=1 .venv/bin/python results/photo-stab-v5/refine.py \
        THREADS GUIDES OUT.pt [LR] [MSE_WEIGHT] [CROPS] [EPOCHS] [CONFIDENCE] [DRAWS]
The two runs: ``1 efficientnet_lite2 /tmp/full.pt 1e-3 100 3000 12`` (full access,
run.log) and ``1 efficientnet_lite0,efficientnet_lite1 /tmp/query.pt 1e-3 100 6000 8
0.5 1`` (query access on the crops the guides are confident about,
run-query-confident.log). CONFIDENCE keeps the training crops whose guides' mean
top-1 probability reaches it; DRAWS noise draws per crop.
An exploratory script kept with its record; nothing from it ships.
"""
import sys, time, json, torch, numpy as np
import torch.nn.functional as F
from torch import nn
torch.set_num_threads(int(sys.argv[1]))
GUIDES = sys.argv[2].split(",")  # e.g. efficientnet_lite2
OUT = sys.argv[3]
LR = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-3
LAM = float(sys.argv[5]) if len(sys.argv) > 5 else 100.0
N = int(sys.argv[6]) if len(sys.argv) > 6 else 3000
EPOCHS = int(sys.argv[7]) if len(sys.argv) > 7 else 12
CONF = float(sys.argv[8]) if len(sys.argv) > 8 else 0.0
DRAWS = int(sys.argv[9]) if len(sys.argv) > 9 else 2
from smoothapi import photos as photo_data
from smoothapi.denoisers import load_denoiser
from smoothapi.denoisers.noise_level import denoise
from smoothapi.zoo import load_classifier
from smoothapi.studies.photo_figures import psnr
torch.manual_seed(0)
sigma = 0.25
allp = photo_data.available_photos()
val = [p for p in allp if p.name in photo_data.VALIDATION_PHOTOS]
train = [p for p in photo_data.available_photos("train") if p.name not in photo_data.VALIDATION_PHOTOS]
print(len(train), "train photos", flush=True)
vc, _ = photo_data.test_crops([photo_data.load_photo(p) for p in val], 160)
vc = torch.from_numpy(vc).float() / 255
tc = torch.from_numpy(photo_data.train_crops([photo_data.load_photo(p) for p in train], N, 160, seed=0)).float() / 255
names0 = sorted(set(GUIDES) | {"efficientnet_lite2"})
clfs0 = {n: load_classifier(n, input_size=None, resize=False) for n in names0}
with torch.inference_mode():
    conf = torch.stack([torch.cat([clfs0[n].logits(q).softmax(1).amax(1) for q in tc.split(32)]) for n in GUIDES]).mean(0)
print("crops", len(tc), "confident", int((conf >= CONF).sum()), flush=True)
tc = tc[conf >= CONF]
mse = load_denoiser("photo-mse").eval()
for p in mse.parameters(): p.requires_grad_(False)
names = sorted(set(GUIDES) | {"efficientnet_lite2"})
clfs = {n: load_classifier(n, input_size=None, resize=False) for n in names}
for c in clfs.values():
    c.module.eval()
    for p in c.module.parameters(): p.requires_grad_(False)
t = time.time()
def pre(crops, draws, seed):
    g = torch.Generator().manual_seed(seed); noisy, den = [], []
    with torch.inference_mode():
        for _ in range(draws):
            nz = crops + sigma * torch.randn(crops.shape, generator=g)
            noisy.append(nz.half()); den.append(torch.cat([denoise(mse, q, sigma) for q in nz.split(16)]).half())
    return torch.cat(noisy), torch.cat(den)
tn, td = pre(tc, DRAWS, 0)
tclean = torch.cat([tc] * DRAWS)
vn, vd = pre(vc, 4, 1)
vclean = torch.cat([vc] * 4)
with torch.inference_mode():
    tprob = {n: torch.cat([clfs[n].logits(q).log_softmax(1) for q in tclean.split(32)]) for n in GUIDES}
    vlab = {n: torch.cat([c.logits(q).argmax(1) for q in vclean.split(32)]) for n, c in clfs.items()}
    vconf = torch.cat([clfs["efficientnet_lite2"].logits(q).softmax(1).amax(1) for q in vclean.split(32)]) >= 0.5
print("confident val samples", int(vconf.sum()), flush=True)
print("precomputed", round(time.time() - t), "s", flush=True)

class Refiner(nn.Module):
    def __init__(self, width=32, depth=5):
        super().__init__()
        layers = [nn.Conv2d(24, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2): layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        last = nn.Conv2d(width, 12, 3, padding=1); nn.init.zeros_(last.weight); nn.init.zeros_(last.bias)
        self.body = nn.Sequential(*layers, last)
    def forward(self, den, noisy):
        x = F.pixel_unshuffle(torch.cat([den, noisy], 1), 2)
        return den + F.pixel_shuffle(self.body(x), 2)

ref = Refiner()
opt = torch.optim.Adam(ref.parameters(), lr=LR)
def evaluate():
    ref.eval(); kept = {n: [] for n in names}; q = []
    with torch.inference_mode():
        for i in range(0, len(vn), 32):
            out = ref(vd[i:i+32].float(), vn[i:i+32].float())
            q.append(psnr(out, vclean[i:i+32]))
            for n, c in clfs.items():
                kept[n].append((c.logits(out).argmax(1) == vlab[n][i:i+32]).float())
    ref.train()
    k2 = torch.cat(kept["efficientnet_lite2"])
    return {"psnr": round(torch.cat(q).mean().item(), 2), **{n[-5:]: round(torch.cat(v).mean().item(), 4) for n, v in kept.items()}, "lite2_conf": round(k2[vconf].mean().item(), 4)}
print(json.dumps({"epoch": 0, **evaluate()}), flush=True)
best = -1
for epoch in range(1, EPOCHS + 1):
    t = time.time(); perm = torch.randperm(len(tn)); losses = []
    for i in range(0, len(perm), 16):
        idx = perm[i:i+16]
        out = ref(td[idx].float(), tn[idx].float())
        loss = LAM * F.mse_loss(out, tclean[idx])
        for n in GUIDES:
            lp = clfs[n].logits(out).log_softmax(1)
            loss = loss + F.kl_div(lp, tprob[n][idx], log_target=True, reduction="batchmean") / len(GUIDES)
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    r = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4), **evaluate(), "s": round(time.time() - t)}
    print(json.dumps(r), flush=True)
    if r["lite2"] > best:
        best = r["lite2"]; torch.save(ref.state_dict(), OUT)
