"""The paper's ImageNet / vision-API setting on natural photos, end to end.

``smoothapi experiment natural-photos --out results/natural-photos`` runs, in order:

1. **manifest**: the photos used (source, licence, SHA-256), split by photo, and the
   fixed test crops with their labels: the target's clean top-1, since the vision-API
   setting certifies the API's own answer (as the paper did);
2. **denoisers** per sigma (the headline 0.25 first): MSE, then STAB+MSE in query
   access (guided by the surrogates EfficientNet-Lite0 and Lite1 only), the ones that
   ship; STAB+MSE in full access (through the target, EfficientNet-Lite2) is trained
   per sigma just before that sigma's certification needs it;
3. **white-box reference** per sigma: no noise-trained ImageNet model can be had here,
   so the target itself is fine-tuned under Gaussian noise to keep its clean
   predictions (distillation: the noisy student matches the clean target's softmax);
4. **certification**, sigma by sigma, the headline sigma first (the other sigmas on
   every ``extras_every``-th test crop): CERTIFY with no denoiser, MSE and query-access
   STAB+MSE **through the target served as a vision API** on loopback (Clarifai's wire
   format and gRPC client, PNG images, tags named by ImageNet class), full-access
   STAB+MSE and the white-box model locally, plus the paper's API budget (n0 = 20,
   n = 100) for no denoiser and query access; last, the shipped ``photo-mse`` (a
   noise-level-aware DRUNet trained apart, on the same split) through the API; then the
   test photos whole at the sizes a user sends (``whole_sides``), with no denoiser and
   with ``photo-mse``, the API's clean answer asked beside each certificate;
5. **report**: tables, curves, the share of the white-box gap closed with bootstrap
   intervals, denoising examples, stage times and ``summary.json``.

Stages resume exactly as in :mod:`~smoothapi.studies.fashion_mnist` (markers under
``OUT/stages``); certification also journals every answer, so a killed stage resumes
without recomputing. ``--scale small`` fits 2 CPU cores (96-px training crops, 160-px
test crops, an 8-layer DnCNN, n = 500); ``paper`` is the GPU configuration (native
260 px, DnCNN-17 width 64, n = 10,000); ``tiny`` runs in a minute on the pip-shipped
photos alone, for tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import photos as photo_data
from ..adapters.base import Adapter
from ..adapters.clarifai import ClarifaiAdapter
from ..adapters.local import LocalModelAdapter
from ..errors import InvalidInputError
from ..journal import Journal
from ..runs import CERTIFY_COLUMNS, CLEAN_COLUMNS, LogWriter, certify_many, write_log
from ..smoothing import RateLimits, SmoothedClassifier
from ..testing import LoopbackProvider
from ..training.data import ArrayDataset
from ..zoo import load_classifier
from .photo_certify import WHOLE_METHODS, whole_lines, whole_log_path, whole_photos
from .photo_levers import Lever, chosen_lever, diagnose, lever_lines, train_lever
from .photo_whitebox import train_whitebox
from .snapshots import restore
from .stages import Stages
from .study import Study

__all__ = ["PHOTO_SCALES", "PhotoScale", "run_photo_study"]


@dataclass(frozen=True)
class PhotoScale:
    """Everything that sizes the natural-photo study (field names shared with
    :class:`~smoothapi.studies.fashion_mnist.Scale` where the stages are shared)."""

    sigmas: tuple[float, ...]
    size: int
    train_count: int
    denoiser: tuple[str, dict]
    mse_epochs: int  # at the headline sigma, from scratch
    warm_epochs: int  # MSE at the other sigmas, starting from the headline sigma's
    stab_epochs: int
    whitebox_epochs: int
    n0: int = 100
    n: int = 500
    alpha: float = 0.001
    api_n0: int = 20
    api_n: int = 100
    certify_images: int | None = None  # None: every test crop
    test_size: int | None = None  # test crops' side (default: ``size``, the training crops')
    batch_size: int = 32
    mse_lr: float = 1e-3
    stab_lr: float = 1e-4
    whitebox_lr: float = 1e-4
    eval_size: int = 126
    train_photos: tuple[str, ...] | None = None  # None: every "train" photo available
    test_photos: tuple[str, ...] | None = None  # None: the "test" split
    target: str = "efficientnet_lite2"
    surrogates: dict[str, str] = field(
        default_factory=lambda: {"lite0": "efficientnet_lite0", "lite1": "efficientnet_lite1"}
    )
    extras_sigma: float = 0.25
    dataset: str = "natural photos"
    certify_skip: int = 1
    scratch_epochs: int = 0
    denoiser_dtype: str = "float32"  # the denoisers' precision when certifying ("auto": see
    # smoothapi._precision)
    extras_every: int = 1  # at sigmas other than extras_sigma, certify every k-th test crop
    whitebox_crop: int | None = None  # the white box's training crops (default: ``size``)
    # What the white box fine-tunes: "all" weights, or only the "batchnorm" layers (their
    # scales, shifts and statistics), which cannot forget ImageNet on a few dozen photos.
    whitebox_params: str = "all"
    levers: tuple[Lever, ...] = ()  # tried at extras_sigma after its certifications
    diagnose_draws: int = 20  # noise draws per test crop in the levers' diagnostic
    # The test photos whole, at these shorter sides, certified at extras_sigma (last).
    whole_sides: tuple[int, ...] = ()

    @property
    def test_crop_size(self) -> int:
        return self.test_size or self.size

    @property
    def classifier_epochs(self) -> int:
        return self.whitebox_epochs


# The small study's training photos: the 25 it started with. The Lomiri wallpapers came
# later and feed only the "more photos" lever, so the finished stages stay valid.
FIRST_TRAIN_PHOTOS = tuple(
    p.name for p in photo_data.PHOTOS
    if p.split == "train" and p.source in ("mate-backgrounds", "plasma-workspace-wallpapers")
)

PHOTO_SCALES: dict[str, PhotoScale] = {
    "small": PhotoScale(
        sigmas=(0.25, 0.12, 0.5),
        train_photos=FIRST_TRAIN_PHOTOS,
        size=96,
        test_size=160,
        train_count=4_000,
        denoiser=("dncnn", {"depth": 8, "width": 32}),
        mse_epochs=4,
        warm_epochs=2,
        stab_epochs=2,
        whitebox_epochs=1,
        whitebox_crop=160,  # the test crops' size: the reference gets its best shot
        # Fine-tuning all of Lite2 for 2 epochs (lr 1e-4) on the 25 training photos matched
        # the teacher on them and forgot the rest: 0% agreement on the held-out crops.
        whitebox_params="batchnorm",
        whitebox_lr=1e-3,
        # bfloat16 on a CPU with bfloat16 instructions (2.7x faster there, -0.06 dB; see
        # bench_denoiser.py), float32 on one without (bfloat16 is 8.6x slower there)
        denoiser_dtype="auto",
        extras_every=3,  # sigma 0.12 and 0.5 on 42 of the 126 crops (6 per photo)
        whole_sides=(224, 384),
        levers=(
            Lever("stab+mse-query-rr", "surrogates in turn, one per batch, not averaged",
                  start="mse", epochs=2, guidance="round-robin"),
            Lever("stab+mse-query-long", "4 more epochs (6 in all)", start="stab+mse-query",
                  epochs=4),
            Lever("stab+mse-query-160", "2 more epochs on 2,000 160-px crops (test size)",
                  start="stab+mse-query", epochs=2, crop=160, count=2_000),
            Lever("stab+mse-query-photos", "crops of 39 training photos, not 25 (from MSE)",
                  start="mse", epochs=2, photos="all"),
        ),
    ),
    "tiny": PhotoScale(
        sigmas=(0.25, 0.5),
        size=48,
        test_size=64,
        train_count=32,
        denoiser=("dncnn", {"depth": 3, "width": 8}),
        mse_epochs=1,
        warm_epochs=1,
        stab_epochs=1,
        whitebox_epochs=1,
        n0=8,
        n=24,
        alpha=0.05,
        api_n0=4,
        api_n=20,  # certifies up to r = 0.27 at alpha 0.05: the gain at 0.25 is reported
        certify_images=3,
        batch_size=16,
        eval_size=8,
        train_photos=("astronaut", "rocket"),
        test_photos=("chelsea", "coffee"),
        whitebox_crop=64,
        whitebox_params="batchnorm",
        denoiser_dtype="auto",
        extras_every=2,
        whole_sides=(48,),
        levers=(
            Lever("stab+mse-query-rr", "round-robin", start="mse", epochs=1,
                  guidance="round-robin"),
            Lever("stab+mse-query-64", "64-px crops", start="stab+mse-query", epochs=1,
                  crop=64, count=16),
        ),
        diagnose_draws=4,
    ),
    "paper": PhotoScale(
        sigmas=(0.25, 0.12, 0.5),
        size=260,
        train_count=50_000,
        denoiser=("dncnn", {"depth": 17, "width": 64}),
        mse_epochs=90,
        warm_epochs=30,
        stab_epochs=20,
        whitebox_epochs=10,
        n=10_000,
        batch_size=64,
        stab_lr=1e-5,
        whitebox_lr=1e-5,
        whole_sides=(224, 384, 512),
    ),
}

#: Methods certified through the loopback vision API (query access to the target).
API_METHODS = ("none", "mse", "stab+mse-query")
#: The paper's API budget rows: (method, base method).
BUDGET_METHODS = {"api-none": "none", "api-stab+mse-query": "stab+mse-query",
                  "api-photo-mse": "photo-mse"}  # fmt: skip
#: Rows certified with a denoiser the package ships (by name) instead of one the study
#: trains: the noise-level-aware ``photo-mse``, trained on more photos by
#: :mod:`~smoothapi.studies.photo_mse` (the same test photos held out). Certified last.
SHIPPED_METHODS = ("photo-mse",)


def _shipped(method: str) -> bool:
    """Whether ``method`` (an API budget row too) uses a denoiser the package ships."""
    return BUDGET_METHODS.get(method, method) in SHIPPED_METHODS


def _chosen(names: tuple[str, ...] | None, split: str) -> list[photo_data.Photo]:
    """The photos ``names`` (None: every available photo of ``split``), all on this machine."""
    if names is None:
        found = photo_data.available_photos(split)
    else:
        have = {p.name: p for p in photo_data.available_photos()}
        found = [have[name] for name in names] if set(names) <= have.keys() else []
    if not found:
        raise InvalidInputError(f"no {split} photos found; run `make photos` first")
    return found


class PhotoStudy(Study[PhotoScale]):
    """The natural-photo study in ``out``; stages skipped when already done."""

    train: ArrayDataset
    test: ArrayDataset

    def __init__(self, scale: PhotoScale, out: Path, device: str | None) -> None:
        super().__init__(scale, out, device)
        self.channels, self.size = 3, [scale.size, scale.size]
        self.train_photos = _chosen(scale.train_photos, "train")
        self.test_photos = _chosen(scale.test_photos, "test")
        if {p.name for p in self.train_photos} & {p.name for p in self.test_photos}:
            raise InvalidInputError("a photo may not be in both the train and the test split")
        self.check_photos()
        train_images = [photo_data.load_photo(p) for p in self.train_photos]
        crops = photo_data.train_crops(train_images, scale.train_count, scale.size, seed=0)
        self.train = ArrayDataset(crops.transpose(0, 2, 3, 1), np.zeros(len(crops), np.int64))
        test_images = [photo_data.load_photo(p) for p in self.test_photos]
        tiles, self.where = photo_data.test_crops(test_images, scale.test_crop_size)
        if scale.certify_images is not None:
            tiles, self.where = tiles[: scale.certify_images], self.where[: scale.certify_images]
        target = self.classifier("target")
        with torch.inference_mode():
            labels = target.logits(torch.from_numpy(tiles).float() / 255).argmax(1).numpy()
        self.class_names = [str(name) for name in target.class_names or ()]
        self.test = ArrayDataset(tiles.transpose(0, 2, 3, 1), labels, self.class_names)

    def train_set(self, crop: int | None, count: int | None = None,
                  photos: str = "study") -> ArrayDataset:  # fmt: skip
        """The training crops (``crop`` None or the study's size), or ``count`` other
        random crops of the training photos at ``crop`` pixels (the same for every caller);
        ``photos="all"``: of every training photo on this machine, not just the study's."""
        if photos not in ("study", "all"):
            raise InvalidInputError(f"photos must be 'study' or 'all', got {photos!r}")
        if photos == "study" and (crop is None or (crop == self.scale.size and count is None)):
            return self.train
        crop, count = crop or self.scale.size, count or self.scale.train_count
        chosen = self.train_photos if photos == "study" else _chosen(None, "train")
        images = [photo_data.load_photo(p) for p in chosen]
        crops = photo_data.train_crops(images, count, crop, seed=1)
        return ArrayDataset(crops.transpose(0, 2, 3, 1), np.zeros(count, np.int64))

    # --- classifiers -------------------------------------------------------------------

    def classifier(self, name: str) -> LocalModelAdapter:
        """``target``, a surrogate's short name, or ``whitebox@<sigma>``; each sees images at
        their own size (96-px training crops, ``test_size`` test crops)."""
        weights = self.classifier_path(name) if name.startswith("whitebox@") else None
        zoo_name = (self.scale.target if name == "target" or weights is not None
                    else self.scale.surrogates[name])  # fmt: skip
        return load_classifier(zoo_name, weights=weights, device=self.device, resize=False)

    def classifier_path(self, name: str) -> Path:
        return self.out / "classifiers" / name / "weights.safetensors"

    def train_whitebox(self, sigma: float) -> None:
        """Fine-tune the target under noise so it keeps its clean predictions."""
        train_whitebox(self, sigma)

    def initial_denoiser(self, objective: str, sigma: float) -> tuple[nn.Module, int, float]:
        """As the base study, except that MSE at the other sigmas starts from the headline
        sigma's MSE denoiser (``warm_epochs``): the same images, a nearby noise level."""
        from ..denoisers import load_denoiser

        headline = self.denoiser_path("mse", self.scale.extras_sigma)
        if objective == "mse" and sigma != self.scale.extras_sigma and headline.exists():
            return load_denoiser(headline), self.scale.warm_epochs, self.scale.mse_lr
        return super().initial_denoiser(objective, sigma)

    # --- certification -----------------------------------------------------------------

    def runs(self) -> list[tuple[str, float]]:
        """(method, sigma) pairs to certify, the headline sigma first."""
        scale = self.scale
        pairs = []
        for sigma in scale.sigmas:
            methods = ["none", "stab+mse-query", "stab+mse-full", "whitebox"]
            if sigma == scale.extras_sigma:  # short: before MSE's full budget
                methods += [m for m in BUDGET_METHODS if not _shipped(m)]
            methods.append("mse")
            if sigma == scale.extras_sigma:
                lever = chosen_lever(self, sigma)
                methods += [lever] if lever else []
            pairs += [(method, sigma) for method in methods]
        # The shipped denoisers last, at every sigma (their budget rows at the headline's):
        # added after the study was done.
        budget = [method for method in BUDGET_METHODS if _shipped(method)]
        for sigma in scale.sigmas:
            extras = budget if sigma == scale.extras_sigma else []
            pairs += [(method, sigma) for method in (*SHIPPED_METHODS, *extras)]
        return pairs

    def sample_counts(self, method: str) -> tuple[int, int]:
        """The paper's API budget for the ``api-*`` rows, the study's n0 and n otherwise."""
        scale = self.scale
        return (scale.api_n0, scale.api_n) if method in BUDGET_METHODS else (scale.n0, scale.n)

    def certified_indices(self, sigma: float) -> list[int]:
        """The test crops certified at ``sigma``: all of them at the headline sigma, every
        ``extras_every``-th at the others."""
        every = 1 if sigma == self.scale.extras_sigma else self.scale.extras_every
        return list(range(0, len(self.test), every))

    def certify(self, method: str, sigma: float) -> dict[str, str]:
        indices = self.certified_indices(sigma)
        images, labels = zip(*(self.test[i] for i in indices), strict=True)
        return self._certify(method, sigma, list(images),
                      [self.class_names[label] for label in labels], indices,
                      self.log_path(method, sigma),
                      self.out / "journals" / f"{method}@{sigma:g}.sqlite")  # fmt: skip

    def whole_photos(self, side: int) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
        """The test photos whole at shorter side ``side`` (:func:`.photo_certify.whole_photos`)."""
        return whole_photos(self.test_photos, side, self.classifier("target"))

    def certify_whole(self, method: str, sigma: float, side: int) -> dict[str, str]:
        """Certify the test photos whole, at shorter side ``side``, with the API's clean
        answer asked beside each (labels: the target's clean top-1)."""
        images, meta = self.whole_photos(side)
        return self._certify(method, sigma, images, [m["answer"] for m in meta],
                      list(range(len(images))), whole_log_path(self.out, method, sigma, side),
                      self.out / "journals" / f"whole-{method}@{sigma:g}_{side}px.sqlite",
                      clean=True)  # fmt: skip

    def _certify(self, method: str, sigma: float, images: list, labels: list[str],
                 indices: list[int], path: Path, journal_path: Path,
                 clean: bool = False) -> dict[str, str]:  # fmt: skip
        """CERTIFY ``images`` with ``method`` at ``sigma`` into the log ``path``, every
        answer journaled in ``journal_path`` (a killed run resumes from it). Returns the
        denoiser's precision, for the stage's marker (``{}`` without a denoiser)."""
        from ..denoisers import load_denoiser

        scale = self.scale
        base = BUDGET_METHODS.get(method, method)
        n0, n = self.sample_counts(method)
        denoiser = None
        if base in SHIPPED_METHODS:  # noise-level aware: SmoothedClassifier passes sigma
            denoiser = load_denoiser(base, self.device, scale.denoiser_dtype)
        elif base not in ("none", "whitebox"):
            denoiser = load_denoiser(self.denoiser_path(base, sigma), self.device,
                                     scale.denoiser_dtype)
        local = self.classifier(f"whitebox@{sigma:g}" if base == "whitebox" else "target")
        path.parent.mkdir(parents=True, exist_ok=True)
        journal_path.parent.mkdir(parents=True, exist_ok=True)
        if restore(journal_path):  # a snapshot committed by an earlier session
            print(f"[experiment] resuming {journal_path.name} from its snapshot", flush=True)
        journal = Journal(journal_path)
        with LoopbackProvider(local, rate_limit=None) as api:
            adapter: Adapter = local
            if base in (*API_METHODS, *SHIPPED_METHODS) or base.startswith("stab+mse-query"):
                # Clarifai's gRPC client and wire format, PNG images. The loopback server
                # computes every request on this machine's CPU: a long timeout and 2 in
                # flight, or a busy machine times requests out, and their retries queue
                # behind the work already started (the study died that way).
                adapter = ClarifaiAdapter(target=api.target(), insecure=True, pat="loopback",
                                          timeout=900)  # fmt: skip
            smoothed = SmoothedClassifier(adapter, sigma, denoiser, batch_size=100, seed=0,
                                          device=self.device, journal=journal,
                                          limits=RateLimits(max_in_flight=2))
            columns = (*CERTIFY_COLUMNS, *CLEAN_COLUMNS) if clean else CERTIFY_COLUMNS
            with smoothed, open(path.with_suffix(".part"), "w", encoding="utf-8") as f:
                outcomes = certify_many(smoothed, images, n0, n, scale.alpha, shard=False,
                                        clean=clean)  # fmt: skip
                write_log(outcomes, LogWriter(f, columns=columns), indices=indices,
                          labels=labels)
        journal.close()
        path.with_suffix(".part").rename(path)
        if denoiser is None:
            return {}
        return {"denoiser_dtype": str(next(denoiser.parameters()).dtype).removeprefix("torch.")}

    radii = (0.0, 0.12, 0.25, 0.5, 0.75, 1.0)
    example_methods = ("mse", "stab+mse-query", "stab+mse-full")

    def example_indices(self, count: int) -> list[int]:
        """The whole-photo crop of each test photo (then the next crops), ``count`` in all."""
        firsts = [
            k
            for k, (_, top, left, side) in enumerate(self.where)
            if k == 0 or self.where[k - 1][0] != self.where[k][0]
        ]
        rest = [k for k in range(len(self.where)) if k not in firsts]
        return (firsts + rest)[:count]

    def check_photos(self) -> None:
        """When ``OUT/manifest.json`` exists (a study under way or finished), the photos on
        this machine must be the very files it lists: the same SHA-256, or the study's
        stages would mix results from other pictures."""
        path = self.out / "manifest.json"
        if not path.exists():
            return
        recorded = {e["name"]: e["sha256"] for e in json.loads(path.read_text())["photos"]}
        here = photo_data.manifest([*self.train_photos, *self.test_photos])
        differ = [e["name"] for e in here if recorded.get(e["name"], e["sha256"]) != e["sha256"]]
        if differ:
            raise InvalidInputError(
                f"{len(differ)} photos on this machine differ from the files {path} lists "
                f"(SHA-256): {', '.join(differ)}; this study's results came from those files. "
                "Unpack the package versions it names, or give a new --out folder"
            )

    def write_manifest(self) -> None:
        # The split as this study used it (the tiny scale splits the held-out photos).
        lever_only = []  # photos only a lever trains on ("lever-train")
        if any(lever.photos == "all" for lever in self.scale.levers):
            lever_only = [p for p in _chosen(None, "train") if p not in self.train_photos]
        entries = [
            {**entry, "split": split}
            for split, chosen in (("train", self.train_photos), ("lever-train", lever_only),
                                  ("test", self.test_photos))  # fmt: skip
            for entry in photo_data.manifest(chosen)
        ]
        crops = [
            {
                "photo": self.test_photos[i].name,
                "top": t,
                "left": left,
                "side": side,
                "label": self.class_names[int(self.test.labels[k])],
            }
            for k, (i, t, left, side) in enumerate(self.where)
        ]
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "manifest.json").write_text(
            json.dumps(
                {
                    "photos": entries,
                    "crop_size": self.scale.size,
                    "test_crop_size": self.scale.test_crop_size,
                    "test_crops": crops,
                    "train_crops": self.scale.train_count,
                },
                indent=1,
            )
        )

    targets = {"stab+mse-query": 0.60, "stab+mse-full": 0.70}
    targets_source = "the paper on ImageNet: 53% / 56% in query access, 60% / 60% in full"

    def extra_sections(self) -> list[str]:
        scale, sigma = self.scale, self.scale.extras_sigma
        lines = lever_lines(self, sigma)
        if any(whole_log_path(self.out, m, sigma, side).exists()
               for side in scale.whole_sides for m in WHOLE_METHODS):  # fmt: skip
            meta = {side: self.whole_photos(side)[1] for side in scale.whole_sides}
            lines += whole_lines(self.out, meta, sigma, WHOLE_METHODS, scale.n0, scale.n,
                                 scale.alpha)  # fmt: skip
        return lines

    def report_notes(self) -> list[str]:
        scale = self.scale
        notes = [
            "Target: EfficientNet-Lite2 (published ImageNet weights) on "
            f"{scale.test_crop_size}-px test crops (denoisers trained on {scale.size}-px crops), "
            "served as a vision API on loopback (Clarifai's gRPC wire format, "
            "PNG images, concepts named by ImageNet class) for the no-denoiser, MSE, "
            "query-access and photo-mse rows, their API-budget (api-*) rows and the lever "
            "certified, if any. Labels are "
            "its clean top-1 on each test crop.",
            "photo-mse: the shipped noise-level-aware denoiser (`load_denoiser(\"photo-mse\")`, "
            "a DRUNet of 2.3M parameters trained on MSE alone by `smoothapi experiment "
            "photo-mse`, on 35 training photos with these test photos held out, "
            "results/photo-mse/), called with each row's sigma; no classifier guided it.",
            "White box: no noise-trained ImageNet model is available offline, so 'whitebox' is "
            "the target fine-tuned under Gaussian noise to match its own clean predictions "
            f"(distillation, {scale.whitebox_epochs} epoch(s) on {scale.train_count:,} "
            f"{scale.whitebox_crop or scale.size}-px training crops, "
            f"{'batch-norm layers only' if scale.whitebox_params == 'batchnorm' else 'all weights'}"
            "): a reference, not Cohen et al.'s model, and a weak one: the training photos "
            "are too few to fine-tune an ImageNet model on.",
            precision_note(self.out / "stages"),
            f"API budget rows (api-*) use n0 = {scale.api_n0}, n = {scale.api_n} (the paper's "
            "vision-API setting); every other row uses the n0 and n in the header.",
        ]
        return [line for note in notes for line in (note, "")]


def precision_note(stages: Path) -> str:
    """Which precision the denoisers ran in when certifying, from the stages' markers (a
    marker without it predates the record: those rows ran in bfloat16, then the setting)."""
    rows: dict[str, list[str]] = {}
    for marker in sorted(stages.glob("certify*.json")):
        record = json.loads(marker.read_text())
        method = record["stage"].split(":")[1].split("@")[0]
        if BUDGET_METHODS.get(method, method) not in ("none", "whitebox"):
            rows.setdefault(record.get("denoiser_dtype", "bfloat16"), []).append(record["stage"])
    if len(rows) <= 1:
        dtype = next(iter(rows), "float32")
        return f"Denoisers run in {dtype} when certifying (trained in float32)."
    common = max(rows, key=lambda dtype: len(rows[dtype]))
    others = "; ".join(f"{dtype} for {', '.join(names)}" for dtype, names in rows.items()
                       if dtype != common)  # fmt: skip
    return (f"Denoisers run in {common} when certifying (trained in float32), except {others}: "
            "bfloat16 where the certifying CPU has bfloat16 instructions, float32 where it "
            "has none (emulated bfloat16 ran 8.6x slower; smoothapi._precision).")


def run_photo_study(scale_name: str, out: str | Path, *, device: str | None = None,
                    only: tuple[str, ...] | None = None, fresh: bool = False) -> Path:  # fmt: skip
    """Run (or resume) the natural-photo study; returns the output folder. ``only``: run
    just the stages whose names contain one of these strings (say, ``("lever", "diagnose")``
    in a second process while the first certifies); ``fresh``: refuse an ``out`` that
    holds finished stages (a run from scratch)."""
    if scale_name not in PHOTO_SCALES:
        raise InvalidInputError(f"unknown scale {scale_name!r}; known: {', '.join(PHOTO_SCALES)}")
    scale, out = PHOTO_SCALES[scale_name], Path(out)
    if fresh:
        Stages(out).require_fresh()
    study = PhotoStudy(scale, out, device)
    study.only = only
    study.command = f"make photos && smoothapi experiment natural-photos --scale {scale_name}"
    study.stage("manifest", study.write_manifest)
    shipped = [(m, s) for m, s in study.runs() if _shipped(m)]
    for sigma in scale.sigmas:  # denoisers first: they are what ships
        study.stage(f"denoiser:mse@{sigma:g}", partial(study.train_denoiser, "mse", sigma))
        study.stage(f"denoiser:stab+mse-query@{sigma:g}",
                    partial(study.train_denoiser, "stab+mse-query", sigma))
    levers = {lever.method for lever in scale.levers}
    for sigma in scale.sigmas:  # the headline sigma first, then its levers
        for method, at in study.runs():
            if at == sigma and method not in levers and not _shipped(method):
                _certify_stage(study, method, sigma)
        if sigma == scale.extras_sigma and scale.levers:
            _lever_stages(study, sigma)
    best = chosen_lever(study, scale.extras_sigma) if scale.levers else None
    if best is not None:  # last: the one row beyond what the other sigmas need
        study.stage(f"certify:{best}@{scale.extras_sigma:g}",
                    lambda: study.certify(best, scale.extras_sigma), keep=True)
    for method, sigma in shipped:  # added after the rest was done: certified after it
        _certify_stage(study, method, sigma)
    for side in scale.whole_sides:
        for method in WHOLE_METHODS:
            study.stage(f"certify-whole:{method}@{scale.extras_sigma:g}:{side}px",
                        partial(study.certify_whole, method, scale.extras_sigma, side),
                        keep=True)
    study.report()
    print(study.closing_line())
    return out


def _certify_stage(study: PhotoStudy, method: str, sigma: float) -> None:
    """Certify ``method`` at ``sigma``, after training what it needs and is not shipped.

    Once certified, what it needed is not trained again (a fresh checkout lacks the
    white-box weights, which are not committed); the certification's marker keeps the
    seconds of those stages (``needed_seconds``) for the report's stage times."""
    name = f"certify:{method}@{sigma:g}"
    certified = study.marker(name).exists()
    needs: list[str] = []

    def need(stage: str, work: Callable[[], object]) -> None:
        if not certified or study.marker(stage).exists():  # found done, it is only timed
            needs.append(stage)
            study.stage(stage, work)

    if method == "stab+mse-full":  # trained where first needed: after the headline's rows
        need(f"denoiser:stab+mse-full@{sigma:g}",
             lambda: study.train_denoiser("stab+mse-full", sigma))
    if method == "whitebox":
        need(f"classifier:whitebox@{sigma:g}", lambda: study.train_whitebox(sigma))

    def certify() -> dict[str, Any]:
        record: dict[str, Any] = dict(study.certify(method, sigma))
        record["needed_seconds"] = {n: study.times[n] for n in needs if n in study.times}
        return record

    study.stage(name, certify, keep=True)


def _lever_stages(study: PhotoStudy, sigma: float) -> None:
    """Diagnose the baselines, train and diagnose each lever (the best is certified last)."""
    for method in ("none", "mse", "stab+mse-query", "stab+mse-full", "whitebox"):
        needs = (study.classifier_path(f"whitebox@{sigma:g}") if method == "whitebox"
                 else None if method == "none" else study.denoiser_path(method, sigma))
        name = f"diagnose:{method}@{sigma:g}"
        # a baseline not trained yet waits for its stage (found done, it is only timed)
        if needs is None or needs.exists() or study.marker(name).exists():
            study.stage(name, partial(diagnose, study, method, sigma))
    for lever in study.scale.levers:
        study.stage(f"lever:{lever.method}@{sigma:g}", partial(train_lever, study, lever, sigma))
        study.stage(f"diagnose:{lever.method}@{sigma:g}",
                    partial(diagnose, study, lever.method, sigma))
