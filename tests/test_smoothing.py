"""SmoothedClassifier end to end: soundness against an analytic ground truth, noise, inputs."""

from __future__ import annotations

import asyncio
import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import beta, binom, binomtest, norm

from smoothapi import (
    ABSTAIN,
    Adapter,
    InvalidInputError,
    LocalModelAdapter,
    SmoothedClassifier,
)
from smoothapi.errors import UsageError

from .conftest import linear_adapter


class Recorder(Adapter):
    """Records every batch it is shown and answers a fixed label (or None)."""

    name = "recorder"

    def __init__(self, answer=0):
        self.batches: list[torch.Tensor] = []
        self.answer = answer

    def top_labels(self, images):
        self.batches.append(images.clone())
        return [self.answer] * len(images)

    def ranked_labels(self, image):
        return [(self.answer, 1.0)]


def _false_certificate_rate_test(observed: int, trials: int, alpha: float) -> float:
    """p-value of "the false-certificate rate is at most alpha" (one-sided exact binomial)."""
    return binomtest(observed, trials, alpha, alternative="greater").pvalue


def test_certificates_beyond_the_true_radius_occur_at_most_at_rate_alpha(digit_images):
    # Soundness through the whole SDK path. Each trial certifies a real digit against a linear
    # classifier whose smoothed version has robust radius exactly d, so a certificate is
    # false when its radius exceeds d or its label is not the true class (1).
    # False-alarm rate of this test: at most 0.001 (one-sided exact binomial test at 0.001).
    sigma, d, alpha, trials = 0.25, 0.25, 0.01, 20_000
    smoothed = SmoothedClassifier(
        linear_adapter(digit_images[0], d), sigma, batch_size=512, device="cpu", seed=2024
    )
    false = certified = 0
    for _ in range(trials):
        result = smoothed.certify(digit_images[0], n0=20, n=200, alpha=alpha)
        certified += not result.abstained
        false += (not result.abstained) and (result.label != 1 or result.radius > d)
    assert certified > 0.9 * trials  # the test exercises real certificates
    assert _false_certificate_rate_test(false, trials, alpha) > 0.001, (false, trials)


def test_boundary_case_certifies_at_the_exact_clopper_pearson_rate(digit_images):
    # At d = 0 each class has probability 1/2, so any certificate is false; CERTIFY must
    # certify with exactly P[Bin(n, 1/2) >= k_min], which reuse of the n0 selection samples
    # for estimation (or reused noise) would roughly double.
    # False-alarm rate of this test: 0.001 (two-sided exact binomial test at 0.001).
    sigma, alpha, n, trials = 0.5, 0.05, 50, 20_000
    x = digit_images[7]
    smoothed = SmoothedClassifier(linear_adapter(x, 0.0), sigma, device="cpu", seed=7)
    k = np.arange(n + 1)
    k_min = k[beta.ppf(alpha, np.maximum(k, 1), n - k + 1) >= 0.5].min()
    exact = binom.sf(k_min - 1, n, 0.5)
    certified = sum(
        not smoothed.certify(x, n0=10, n=n, alpha=alpha).abstained for _ in range(trials)
    )
    assert 0.01 < exact < alpha
    assert binomtest(certified, trials, exact).pvalue > 0.001, (certified, trials * exact)


def test_noise_is_independent_within_batches_and_across_calls():
    # x = 0, so every batch the adapter sees is pure noise. For independent N(0, sigma^2)
    # vectors in dimension D, sqrt(D) * correlation is about N(0, 1); |z| > 6 for any of the
    # ~18,000 pairs checked has probability < 1e-5 (the test's false-alarm rate).
    recorder = Recorder()
    sigma = 0.3
    smoothed = SmoothedClassifier(recorder, sigma, batch_size=32, device="cpu", seed=11)
    x = torch.zeros(1, 28, 28)
    smoothed.certify(x, n0=32, n=64)
    smoothed.certify(x, n0=32, n=32)
    smoothed.predict(x, n=32)
    noise = torch.cat(recorder.batches).flatten(1).double()
    assert noise.shape == (6 * 32, 784)
    dimension = noise.shape[1]
    z = math.sqrt(dimension) * torch.corrcoef(noise)
    off_diagonal = z[~torch.eye(len(noise), dtype=torch.bool)]
    assert off_diagonal.abs().max() < 6
    # Marginals: mean 0 and standard deviation sigma (5 standard errors).
    count = noise.numel()
    assert abs(noise.mean().item()) < 5 * sigma / math.sqrt(count)
    assert abs(noise.std().item() / sigma - 1) < 5 / math.sqrt(2 * count)


def test_seed_replays_the_same_noise_and_default_seeds_differ():
    x = torch.zeros(1, 6, 6)
    runs = []
    for seed in (5, 5, 6, None, None):
        recorder = Recorder()
        SmoothedClassifier(recorder, 0.5, device="cpu", seed=seed).certify(x, n0=3, n=5)
        runs.append(torch.cat(recorder.batches))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[3], runs[4])


def test_radius_scales_with_image_and_sigma(digit_images):
    # f(z) = 1[w.z > 0] is invariant to scaling z by c > 0; scaling x and sigma by c scales
    # the noise by c too, so the counts match and R scales by exactly c.
    x = digit_images[3]
    flat = x.flatten().double()
    other = torch.randn(
        flat.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    other -= (other @ flat) / (flat @ flat) * flat
    cos = 0.3 / flat.norm()  # w.x = 0.3 with a unit w and no bias
    w = cos * flat / flat.norm() + torch.sqrt(1 - cos**2) * other / other.norm()
    adapter = linear_adapter(x, 0.3)
    with torch.no_grad():
        adapter.module[2].weight[1].copy_(w)
        adapter.module[2].bias.zero_()
    results = {}
    for c in (1.0, 0.5, 0.25):
        smoothed = SmoothedClassifier(adapter, 0.4 * c, device="cpu", seed=99)
        # The same image_id keys the same noise streams, so the noise is exactly c times.
        results[c] = smoothed._bridge.run(smoothed.acertify(x * c, 50, 2_000, 0.001, image_id="x"))
    assert not results[1.0].abstained and results[1.0].radius > 0
    for c in (0.5, 0.25):
        assert results[c].counts == results[1.0].counts
        assert results[c].radius == pytest.approx(c * results[1.0].radius, rel=1e-9)


def test_certify_matches_phi_of_distance_on_average(digit_images):
    # p_A = Phi(d / sigma): the estimation counts' mean must match it (5 standard errors).
    x, sigma, d, n = digit_images[1], 0.25, 0.1, 20_000
    result = SmoothedClassifier(linear_adapter(x, d), sigma, device="cpu", seed=3).certify(
        x, n0=100, n=n, alpha=0.001
    )
    p_a = norm.cdf(d / sigma)
    assert abs(result.counts[1] / n - p_a) < 5 * math.sqrt(p_a * (1 - p_a) / n)
    assert result.label == 1 and 0 < result.radius < d


def test_predict_never_returns_none_and_abstains_on_a_coin_flip(digit_images):
    nothing = SmoothedClassifier(Recorder(answer=None), 0.25, device="cpu", seed=1)
    assert nothing.predict(torch.zeros(1, 4, 4), n=200).label is ABSTAIN
    assert nothing.certify(torch.zeros(1, 4, 4), n0=10, n=20).label is ABSTAIN
    x = digit_images[5]
    coin = SmoothedClassifier(linear_adapter(x, 0.0), 0.25, device="cpu", seed=1)
    abstained = sum(coin.predict(x, n=100, alpha=0.001).abstained for _ in range(50))
    assert abstained >= 48  # each abstains with probability >= 0.999
    sure = SmoothedClassifier(linear_adapter(x, 1.0), 0.25, device="cpu", seed=1)
    assert sure.predict(x, n=100, alpha=0.001).label == 1


def test_denoiser_runs_before_the_adapter_in_inference_mode():
    class Halve(torch.nn.Module):
        def forward(self, x):
            assert torch.is_inference_mode_enabled()
            return x * 0.5

    recorder = Recorder()
    x = torch.full((3, 4, 4), 0.8)
    SmoothedClassifier(recorder, 1e-6, denoiser=Halve(), device="cpu", seed=0).certify(x, n0=2, n=2)
    assert torch.allclose(recorder.batches[0], torch.full((2, 3, 4, 4), 0.4), atol=1e-4)


def test_accepts_pil_uint8_and_tensor_images_in_the_same_pixel_space():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    seen = []
    for image in (Image.fromarray(pixels), pixels, torch.from_numpy(pixels).permute(2, 0, 1) / 255):
        recorder = Recorder()
        SmoothedClassifier(recorder, 1e-9, device="cpu", seed=0).certify(image, n0=1, n=1)
        seen.append(recorder.batches[0][0])
    for batch in seen:
        assert batch.shape == (3, 5, 7)
        assert torch.allclose(batch, seen[2], atol=1e-6)
    grey = Image.fromarray(pixels[:, :, 0])
    recorder = Recorder()
    SmoothedClassifier(recorder, 1e-9, device="cpu", seed=0).certify(grey, n0=1, n=1)
    assert recorder.batches[0].shape == (1, 1, 5, 7)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((8, 8), dtype=np.float64), "uint8"),
        (np.zeros((8, 8, 5), dtype=np.uint8), "C in"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), "C in"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "floating"),
        (torch.zeros(8, 8, 3), "C in"),
        (torch.zeros(1, 3, 8, 8), "C in"),
        (torch.full((1, 8, 8), math.nan), "NaN"),
        (torch.full((1, 8, 8), 2.0), r"\[0, 1\]"),
        (torch.zeros(1, 0, 8), "no pixels"),
        ([[0.0]], "expected a PIL image"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    smoothed = SmoothedClassifier(Recorder(), 0.25, device="cpu", seed=0)
    with pytest.raises(InvalidInputError, match=message):
        smoothed.certify(image, n0=1, n=1)
    with pytest.raises(ValueError):
        smoothed.predict(image, n=1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SmoothedClassifier(Recorder(), 0.0),
        lambda: SmoothedClassifier(Recorder(), -0.5),
        lambda: SmoothedClassifier(Recorder(), float("inf")),
        lambda: SmoothedClassifier(Recorder(), 0.25, batch_size=0),
        lambda: SmoothedClassifier(Recorder(), 0.25, seed=-1),
        lambda: SmoothedClassifier(torch.nn.Linear(2, 2), 0.25),
        lambda: SmoothedClassifier(Recorder(), 0.25).certify(torch.zeros(1, 2, 2), n0=0),
        lambda: SmoothedClassifier(Recorder(), 0.25).certify(torch.zeros(1, 2, 2), n=-5),
        lambda: SmoothedClassifier(Recorder(), 0.25).certify(torch.zeros(1, 2, 2), n=2.5),
        lambda: SmoothedClassifier(Recorder(), 0.25).certify(torch.zeros(1, 2, 2), alpha=0),
        lambda: SmoothedClassifier(Recorder(), 0.25).certify(torch.zeros(1, 2, 2), alpha=1.5),
        lambda: SmoothedClassifier(Recorder(), 0.25).predict(torch.zeros(1, 2, 2), n=0),
        lambda: SmoothedClassifier(Recorder(), 0.25).predict(torch.zeros(1, 2, 2), alpha=-0.1),
    ],
)
def test_bad_settings_raise_value_errors(make):
    with pytest.raises(InvalidInputError):
        make()


def test_local_model_adapter_labels_follow_class_names_and_batch_size_does_not_matter(
    digit_images,
):
    adapter = linear_adapter(digit_images[0], 0.05)
    named = LocalModelAdapter(adapter.module, class_names=["no", "yes"])
    x = digit_images[0]
    a = SmoothedClassifier(adapter, 0.25, batch_size=7, device="cpu", seed=4).certify(x, 10, 300)
    b = SmoothedClassifier(named, 0.25, batch_size=7, device="cpu", seed=4).certify(x, 10, 300)
    assert b.candidate == {0: "no", 1: "yes"}[a.candidate]
    assert b.counts == {{0: "no", 1: "yes"}[k]: v for k, v in a.counts.items()}


# --- inputs refused or accepted the same way everywhere ------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SmoothedClassifier(Recorder(), 1e39), "float32"),
        (lambda: SmoothedClassifier(Recorder(), 1e-40), "float32"),
        (lambda: SmoothedClassifier(Recorder(), True), "sigma"),
        (lambda: SmoothedClassifier(Recorder(), 0.25, seed=True), "seed"),
        (lambda: SmoothedClassifier(Recorder(), 0.25, seed=1.0), "seed"),
        (lambda: SmoothedClassifier(Recorder(), 0.25, batch_size=True), "batch_size"),
    ],
)
def test_sigma_bools_and_floats_are_refused_where_an_int_is_wanted(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()


def test_numpy_numbers_are_accepted_wherever_a_python_one_is():
    smoothed = SmoothedClassifier(
        Recorder(), np.float32(0.25), device="cpu", seed=np.uint32(7), batch_size=np.int64(4)
    )
    assert (smoothed.seed, smoothed.batch_size, smoothed.sigma) == (7, 4, 0.25)
    assert type(smoothed.seed) is int and type(smoothed.batch_size) is int
    result = smoothed.certify(torch.zeros(1, 2, 2), n0=np.int64(3), n=np.int32(5))
    assert (result.n0, result.n) == (3, 5)
    assert smoothed.predict(torch.zeros(1, 2, 2), n=np.int16(5)).n == 5


class _NaNDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((1,), math.nan))

    def forward(self, x):
        return x * self.weight


def test_non_finite_denoised_batches_are_refused_before_anything_is_sent():
    recorder = Recorder()
    smoothed = SmoothedClassifier(recorder, 0.25, _NaNDenoiser(), device="cpu", seed=0)
    with pytest.raises(InvalidInputError, match="denoiser's output has NaN"):
        smoothed.certify(torch.zeros(1, 4, 4), n0=2, n=2)
    assert recorder.batches == []


def test_the_largest_sigma_allowed_still_draws_finite_noise():
    from smoothapi.certification import SIGMA_MAX

    recorder = Recorder()
    smoothed = SmoothedClassifier(recorder, SIGMA_MAX, device="cpu", seed=0)
    smoothed.certify(torch.zeros(1, 8, 8), n0=2, n=64)
    assert all(bool(torch.isfinite(batch).all()) for batch in recorder.batches)


def test_a_model_or_denoiser_that_cannot_take_the_image_is_an_invalid_input_error():
    model = LocalModelAdapter(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)))
    smoothed = SmoothedClassifier(model, 0.25, device="cpu", seed=0)
    with pytest.raises(InvalidInputError, match="model cannot take 1x3x3") as caught:
        smoothed.certify(torch.zeros(1, 3, 3), n0=2, n=2)
    assert isinstance(caught.value.__cause__, RuntimeError)
    rgb_denoiser = torch.nn.Conv2d(3, 3, 3, padding=1)
    smoothed = SmoothedClassifier(Recorder(), 0.25, rgb_denoiser, device="cpu", seed=0)
    with pytest.raises(InvalidInputError, match="denoiser cannot take 1x4x4") as caught:
        smoothed.certify(torch.zeros(1, 4, 4), n0=2, n=2)
    assert isinstance(caught.value.__cause__, RuntimeError)


# --- one classifier, several threads; closing -----------------------------------------------


def test_sync_calls_from_several_threads_take_turns_and_agree_with_a_serial_run(tmp_path):
    images = [torch.full((1, 6, 6), v) for v in (0.1, 0.3, 0.5, 0.7, 0.9, 0.2)]

    def make(journal):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3))
        adapter = LocalModelAdapter(model)
        return SmoothedClassifier(adapter, 0.5, batch_size=8, device="cpu", seed=2,
                                  journal=journal)  # fmt: skip

    with make(None) as serial:
        expected = [serial.certify(x, n0=8, n=40) for x in images]
    with make(tmp_path / "j.sqlite") as shared:
        results: dict[int, object] = {}
        errors: list[BaseException] = []

        def work(i):
            try:
                results[i] = shared.certify(images[i], n0=8, n=40)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [results[i] for i in range(len(images))] == expected
        assert shared.stats.images == 48 * len(images)


class _Gate(Recorder):
    """Holds its first request until released; notes the loops it was closed on."""

    def __init__(self):
        super().__init__()
        self.entered, self.release, self.closed_on = threading.Event(), threading.Event(), []

    async def atop_labels(self, images):
        self.entered.set()
        while not self.release.is_set():
            await asyncio.sleep(0.005)
        return self.top_labels(images)

    async def aclose(self):
        self.closed_on.append(asyncio.get_running_loop())


def test_async_calls_from_a_second_event_loop_at_once_are_refused():
    gate = _Gate()
    smoothed = SmoothedClassifier(gate, 0.25, device="cpu", seed=0)
    image = torch.zeros(1, 2, 2)
    first = threading.Thread(target=lambda: asyncio.run(smoothed.acertify(image, n0=2, n=2)))
    first.start()
    assert gate.entered.wait(30)
    with pytest.raises(UsageError, match="another event loop"):  # at once, not after a wait
        asyncio.run(asyncio.wait_for(smoothed.acertify(image, n0=2, n=2), 10))
    gate.release.set()
    first.join()
    assert smoothed.certify(torch.zeros(1, 2, 2), n0=2, n=2).n == 2  # free again


def test_async_with_closes_the_adapter_on_the_running_loop_and_then_refuses_use():
    gate = _Gate()
    gate.release.set()

    async def main():
        async with SmoothedClassifier(gate, 0.25, device="cpu", seed=0) as smoothed:
            await smoothed.acertify(torch.zeros(1, 2, 2), n0=2, n=2)
        return smoothed, asyncio.get_running_loop()

    smoothed, loop = asyncio.run(main())
    assert loop in gate.closed_on
    with pytest.raises(UsageError, match="closed"):
        smoothed.certify(torch.zeros(1, 2, 2), n0=2, n=2)


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_it_is_drawn():
    recorder = Recorder()
    smoothed = SmoothedClassifier(recorder, 0.25, batch_size=10**9, device="cpu", seed=0)
    with pytest.raises(InvalidInputError, match="batch_size=1000000000 on a 64x64 image"):
        smoothed.certify(torch.zeros(3, 64, 64), n0=10**9, n=10**9)
    assert recorder.batches == []
    assert smoothed.certify(torch.zeros(3, 64, 64), n0=2, n=2).n == 2  # batches of 2 fit


# --- Ctrl-C in IPython: each cell runs with run_until_complete on one persistent loop ------


class _Slow(Recorder):
    """Answers after ``latency`` seconds; counts its requests as they are sent."""

    max_in_flight = 4
    max_batch = 4

    def __init__(self, latency):
        super().__init__(answer="cat")
        self.latency, self.sent = latency, 0

    async def atop_labels(self, images):
        self.sent += 1
        await asyncio.sleep(self.latency)
        return self.top_labels(images)


def _interrupt_when(loop, condition):
    """Raise KeyboardInterrupt out of ``loop.run_until_complete`` once ``condition()`` holds,
    as Ctrl-C does when a handler other than smoothapi's turns it into KeyboardInterrupt."""

    def check():
        if not condition():
            loop.call_later(0.002, check)
            return
        raise KeyboardInterrupt

    loop.call_soon(check)


def test_ctrl_c_of_an_awaited_call_in_a_cell_neither_resumes_nor_blocks_later_calls():
    adapter = _Slow(latency=0.05)
    smoothed = SmoothedClassifier(adapter, 0.25, batch_size=16, device="cpu", seed=0)
    image = torch.zeros(1, 4, 4)
    loop = asyncio.new_event_loop()  # IPython's, kept from cell to cell
    try:
        _interrupt_when(loop, lambda: adapter.sent >= 8)
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(smoothed.acertify(image, n0=16, n=100_000))
        # The next cell calls the classifier: it used to raise UsageError ("another event loop").
        assert smoothed.predict(image, n=8).n == 8
        sent = adapter.sent
        loop.run_until_complete(asyncio.sleep(0.3))  # a later cell runs the loop again
        assert adapter.sent == sent  # the interrupted call sent nothing more
        assert loop.run_until_complete(smoothed.apredict(image, n=8)).n == 8
        assert adapter.sent == sent + 2
    finally:
        loop.close()
    smoothed.close()


def test_ctrl_c_in_a_cell_awaiting_a_call_stops_it_there_and_then():
    import os
    import signal
    import time

    from smoothapi.errors import Interrupted

    adapter = _Slow(latency=0.05)
    smoothed = SmoothedClassifier(adapter, 0.25, batch_size=16, device="cpu", seed=0)
    image = torch.zeros(1, 4, 4)

    def interrupt():  # Python's own handler is in place, as in IPython
        while adapter.sent < 8:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGINT)

    loop = asyncio.new_event_loop()
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(Interrupted, match="sent in all"):
            loop.run_until_complete(smoothed.acertify(image, n0=16, n=100_000))
        sent = adapter.sent
        loop.run_until_complete(asyncio.sleep(0.3))  # the next cell: nothing of it resumes
        assert adapter.sent == sent <= 8 + 2 * _Slow.max_in_flight
    finally:
        loop.close()
    assert smoothed.predict(image, n=8).n == 8 and adapter.sent == sent + 2
    smoothed.close()


def test_ctrl_c_of_a_sync_call_in_a_cell_stops_it_before_returning_to_the_prompt():
    import os
    import signal
    import time

    def ipython_handler(signum, frame):  # not Python's: smoothapi leaves it in place
        raise KeyboardInterrupt

    adapter = _Slow(latency=0.5)
    smoothed = SmoothedClassifier(adapter, 0.25, batch_size=16, device="cpu", seed=0)
    image = torch.zeros(1, 4, 4)

    async def cell():  # a cell with an await runs on the loop; the sync call in it, in a thread
        return smoothed.certify(image, n0=16, n=100_000)

    def interrupt():
        while adapter.sent < 8:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGINT)

    loop = asyncio.new_event_loop()
    previous = signal.signal(signal.SIGINT, ipython_handler)
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(cell())
        sent = adapter.sent
        # At once, the next cell: the interrupted call has stopped (it used to still be
        # settling in its thread, and this raised UsageError), and sends nothing more.
        assert loop.run_until_complete(_sync_in_a_cell(smoothed.predict, image, n=8)).n == 8
        assert adapter.sent == sent + 2
    finally:
        signal.signal(signal.SIGINT, previous)
        loop.close()
    smoothed.close()


async def _sync_in_a_cell(method, *args, **kwargs):
    return method(*args, **kwargs)


# --- issue 26, item 6: the same denoiser from Python as from the shell ------------------------


def test_auto_denoiser_is_the_shipped_photo_one_for_a_vision_api_and_keeps_explicit_keys(caplog):
    import logging

    from smoothapi._checkpoint import module_digest
    from smoothapi.denoisers import load_denoiser

    from .adapters.fake import FakeAdapter

    with caplog.at_level(logging.INFO, logger="smoothapi"):
        auto = SmoothedClassifier(FakeAdapter(), 0.25, device="cpu", seed=0)
    named = [r.getMessage() for r in caplog.records if r.name == "smoothapi"]
    assert len(named) == 1 and "photo-mse" in named[0] and "denoiser=None" in named[0]
    shipped = load_denoiser("photo-mse")
    assert module_digest(auto.denoiser) == module_digest(shipped)
    explicit = SmoothedClassifier(FakeAdapter(), 0.25, shipped, device="cpu", seed=0)
    assert auto.run_key == explicit.run_key  # "auto" keys a run as passing the denoiser does
    off = SmoothedClassifier(FakeAdapter(), 0.25, None, device="cpu", seed=0)
    assert off.denoiser is None and off.run_config()["denoiser"] == module_digest(None)
    assert off.run_key != auto.run_key
    # RGB images only: a grey one goes to the API as it is.
    grey = torch.rand(2, 1, 8, 8)
    assert torch.equal(auto.sampler._denoise(grey, 0.25), grey)
    rgb = torch.rand(2, 3, 16, 16)
    assert not torch.equal(auto.sampler._denoise(rgb, 0.25), rgb)
    # No shipped denoiser for the sigma (photo-mse serves up to 0.5): none; a local model:
    # none (its users pass their own).
    assert SmoothedClassifier(FakeAdapter(), 0.7, device="cpu", seed=0).denoiser is None
    local = linear_adapter(torch.rand(1, 4, 4), 0.1)
    assert SmoothedClassifier(local, 0.25, device="cpu", seed=0).denoiser is None
    for s in (auto, explicit, off):
        s.close()


def test_clean_answer_is_one_journaled_query_on_the_clean_image(tmp_path):
    from .adapters.fake import FakeAdapter

    image = torch.full((1, 8, 8), 0.9)
    journal = tmp_path / "j.sqlite"
    with SmoothedClassifier(FakeAdapter(), 0.25, None, device="cpu", seed=0,
                            journal=journal) as smoothed:  # fmt: skip
        answer = smoothed.clean_answer(image)
        assert smoothed.stats.images == 1
    with SmoothedClassifier(FakeAdapter(), 0.25, None, device="cpu", seed=0,
                            journal=journal) as again:  # fmt: skip
        assert again.clean_answer(image) == answer
        assert again.stats.images == 0  # found in the journal: not paid again
    assert answer == FakeAdapter().top_labels(image[None])[0]
