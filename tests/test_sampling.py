"""Which noise: image keys, the noise of each (seed, key, phase, batch), clean batches."""

from __future__ import annotations

import pytest
import torch

from smoothapi.sampling import NOISE_SCHEME, ImageKey, Phase, Sampler, image_digest

CPU = torch.device("cpu")


def test_the_noise_scheme_is_pinned():
    # Journals and published results replay only if this derivation never changes; these
    # numbers come from NOISE_SCHEME = 2, which added the attempt (the call's settings).
    sampler = Sampler(0.5, 7, CPU, batch_size=4)
    x = torch.zeros(1, 2, 2)
    key = sampler.key(x, settings={"method": "certify", "n0": 100, "n": 10_000, "alpha": 0.001})
    assert NOISE_SCHEME == 2
    digest = "56f46952d721098cd33503f79fdeb4fcd72e78f4a9ddc2b7400523d1dfddca99"
    assert key == ImageKey(digest, 0, "f87f392fbfc64c91", digest)
    batch = sampler.noisy_batch(x, sampler.key(x), Phase.ESTIMATION, 3, 2)
    assert batch.flatten().tolist() == pytest.approx(
        [-0.512453556, -0.781154752, -0.06938421, -0.094867244,
         0.245693043, -0.208417639, 0.048820913, -0.490262419], abs=1e-8
    )  # fmt: skip


def test_other_settings_draw_another_stream_and_the_same_settings_replay_it():
    x = torch.zeros(1, 4, 4)
    small, large = {"method": "certify", "n": 64}, {"method": "certify", "n": 128}
    first, second = Sampler(1.0, 3, CPU), Sampler(1.0, 3, CPU)
    a, b = first.key(x, settings=small), second.key(x, settings=large)
    assert (a.occurrence, b.occurrence) == (0, 0) and a.attempt != b.attempt
    assert not torch.equal(first.noisy_batch(x, a, Phase.ESTIMATION, 0, 8),
                           second.noisy_batch(x, b, Phase.ESTIMATION, 0, 8))  # fmt: skip
    replay = Sampler(1.0, 3, CPU).key(x, settings=small)
    assert replay == a  # a new sampler (process) with the same seed and settings
    assert first.key(x, settings=small).occurrence == 1  # a repeat in one process: fresh
    assert first.key(x, settings=large).occurrence == 0  # occurrences count per attempt
    assert first.key(x, "cat-17").content == a.content != first.key(x, "cat-17").digest


def test_every_stream_draws_its_own_noise_and_the_seed_replays_it():
    x = torch.zeros(1, 4, 4)
    sampler = Sampler(1.0, 3, CPU)
    first, second = sampler.key(x), sampler.key(x)
    assert (first.occurrence, second.occurrence) == (0, 1) and first.digest == second.digest
    streams = [
        sampler.noisy_batch(x, key, phase, index, 5)
        for key in (first, second)
        for phase in Phase
        for index in (0, 1)
    ]
    flat = torch.stack([s.flatten() for s in streams])
    assert len({tuple(row.tolist()) for row in flat}) == len(streams)  # no two streams agree
    again = Sampler(1.0, 3, CPU)
    assert torch.equal(again.noisy_batch(x, again.key(x), Phase.SELECTION, 0, 5), streams[0])
    other = Sampler(1.0, 4, CPU)
    assert not torch.equal(other.noisy_batch(x, other.key(x), Phase.SELECTION, 0, 5), streams[0])


def test_image_keys_come_from_the_pixels_or_the_callers_id():
    x = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert image_digest(x) == image_digest(x.clone())
    assert image_digest(x) != image_digest(x.reshape(3, 25, 1))  # the shape counts
    assert image_digest(x) != image_digest(x + 1e-3)
    assert image_digest(x, "cat-17") == image_digest(torch.zeros(1), "cat-17")


def test_noise_has_the_right_scale_and_the_denoiser_runs_in_inference_mode():
    class Halve(torch.nn.Module):
        def forward(self, batch):
            assert torch.is_inference_mode_enabled()
            return batch * 0.5

    x = torch.full((1, 16, 16), 0.5)
    plain = Sampler(0.25, 0, CPU)
    noise = plain.noisy_batch(x, plain.key(x), Phase.PREDICTION, 0, 400) - 0.5
    assert abs(noise.std().item() / 0.25 - 1) < 0.02  # 102,400 draws: 9 standard errors
    denoised = Sampler(0.25, 0, CPU, denoiser=Halve())
    assert torch.allclose(denoised.noisy_batch(x, denoised.key(x), Phase.PREDICTION, 0, 400),
                          (noise + 0.5) * 0.5)  # fmt: skip
    assert torch.equal(denoised.clean_batch(x), x.unsqueeze(0) * 0.5)


def test_a_bfloat16_denoiser_runs_in_bfloat16_and_hands_back_float32():
    seen = []

    class Smooth(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
            torch.nn.init.constant_(self.conv.weight, 1 / 9)

        def forward(self, batch):
            seen.append(batch.dtype)
            return self.conv(batch)

    x = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0))
    full = Sampler(0.25, 0, CPU, denoiser=Smooth())
    half = Sampler(0.25, 0, CPU, denoiser=Smooth().to(torch.bfloat16))
    a = full.noisy_batch(x, full.key(x), Phase.ESTIMATION, 0, 8)
    b = half.noisy_batch(x, half.key(x), Phase.ESTIMATION, 0, 8)
    assert seen == [torch.float32, torch.bfloat16]
    assert b.dtype == torch.float32
    # The same noise went in; bfloat16 keeps 8 bits of mantissa, so values agree to ~1%.
    assert not torch.equal(a, b) and torch.allclose(a, b, rtol=0.02, atol=0.01)
