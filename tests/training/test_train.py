"""Denoiser and classifier recipes end to end on real digits (small, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from smoothapi import InvalidInputError, LocalModelAdapter, create_denoiser, load_denoiser
from smoothapi.training import create_classifier
from smoothapi.training.loop import TrainConfig
from smoothapi.training.train import (
    _check_unchanged,
    evaluate_denoiser,
    psnr,
    train_classifier,
    train_denoiser,
)

SIGMA = 0.5
FAST = dict(batch_size=32, progress=False, seed=0)


@pytest.fixture(scope="module")
def digits(digit_images):
    from sklearn.datasets import load_digits

    labels = torch.from_numpy(load_digits().target).long()
    train = TensorDataset(digit_images[:1400], labels[:1400])
    test = TensorDataset(digit_images[1400:], labels[1400:])
    return train, test


@pytest.fixture(scope="module")
def classifier(digits, tmp_path_factory):
    torch.manual_seed(0)
    model = create_classifier("small_cnn", in_channels=1, num_classes=10, width=8)
    out = tmp_path_factory.mktemp("clf")
    history = train_classifier(
        model,
        digits[0],
        out_dir=out,
        mean=[0.3],
        std=[0.4],
        test_set=digits[1],
        eval_sigma=SIGMA,
        config=TrainConfig(epochs=4, lr=3e-3, **FAST),
    )
    assert history[-1]["accuracy_clean"] > 0.8
    return LocalModelAdapter.from_checkpoint(out / "classifier.safetensors")


@pytest.fixture(scope="module")
def mse_denoiser(digits, tmp_path_factory):
    torch.manual_seed(0)
    denoiser = create_denoiser("dncnn", in_channels=1, depth=5, width=16)
    out = tmp_path_factory.mktemp("mse")
    history = train_denoiser(
        denoiser,
        digits[0],
        sigma=SIGMA,
        out_dir=out,
        test_set=digits[1],
        config=TrainConfig(epochs=6, lr=3e-3, **FAST),
        metadata={"dataset": "digits"},
    )
    return out, history


def _stab_loss(adapter, denoiser, test):
    clean = torch.stack([test[i][0] for i in range(len(test))])
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        pseudo = adapter.logits(clean).argmax(1)
        return F.cross_entropy(adapter.logits(denoiser(clean + SIGMA * noise)), pseudo).item()


def test_mse_denoiser_beats_the_identity_on_held_out_images(digits, mse_denoiser):
    out, history = mse_denoiser
    assert [record["epoch"] for record in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["psnr_denoised"] > history[-1]["psnr_noisy"] + 3
    denoiser = load_denoiser(out / "denoiser.safetensors")
    meta = denoiser.checkpoint_metadata
    assert (meta["objective"], meta["sigma"], meta["epochs"]) == ("mse", SIGMA, 6)
    assert meta["dataset"] == "digits" and list(meta["input_size"]) == [8, 8]
    clean = torch.stack([digits[1][i][0] for i in range(len(digits[1]))])
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert psnr(denoiser(noisy), clean) > psnr(noisy, clean) + 3


def test_stab_fine_tuning_lowers_the_classifiers_loss_and_leaves_it_unchanged(
    digits, classifier, mse_denoiser, tmp_path
):
    out, _ = mse_denoiser
    denoiser = load_denoiser(out / "denoiser.safetensors")
    before_loss = _stab_loss(classifier, denoiser, digits[1])
    before_weights = copy.deepcopy(classifier.module.state_dict())
    history = train_denoiser(
        denoiser,
        digits[0],
        sigma=SIGMA,
        out_dir=tmp_path,
        objective="stab+mse",
        classifiers={"cnn": classifier},
        test_set=digits[1],
        config=TrainConfig(epochs=3, lr=1e-3, **FAST),
    )
    after_loss = _stab_loss(classifier, denoiser.eval(), digits[1])
    assert after_loss < before_loss
    assert "accuracy_cnn" in history[-1]
    for key, value in classifier.module.state_dict().items():
        assert torch.equal(value, before_weights[key]), key
    meta = load_denoiser(tmp_path / "denoiser.safetensors").checkpoint_metadata
    assert meta["objective"] == "stab+mse" and meta["surrogates"] == ["cnn"]


def test_noise_augmented_classifier_is_more_accurate_under_noise(digits, classifier, tmp_path):
    torch.manual_seed(0)
    model = create_classifier("small_cnn", in_channels=1, num_classes=10, width=8)
    history = train_classifier(
        model,
        digits[0],
        out_dir=tmp_path,
        mean=[0.3],
        std=[0.4],
        noise_sigma=SIGMA,
        test_set=digits[1],
        eval_sigma=SIGMA,
        config=TrainConfig(epochs=4, lr=3e-3, **FAST),
    )
    augmented = LocalModelAdapter.from_checkpoint(tmp_path / "classifier.safetensors")
    assert augmented.mean.flatten().tolist() == pytest.approx([0.3])
    clean = torch.stack([digits[1][i][0] for i in range(len(digits[1]))])
    labels = torch.tensor([digits[1][i][1] for i in range(len(digits[1]))])
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        robust = (augmented.logits(noisy).argmax(1) == labels).float().mean()
        plain = (classifier.logits(noisy).argmax(1) == labels).float().mean()
    assert robust > plain
    assert history[-1][f"accuracy_noise_{SIGMA:g}"] == pytest.approx(robust.item(), abs=0.05)


def test_bad_settings_and_tampering_are_caught(digits, classifier, tmp_path):
    denoiser = create_denoiser("dncnn", in_channels=1, depth=3, width=4)
    with pytest.raises(InvalidInputError, match="classifier"):
        train_denoiser(denoiser, digits[0], sigma=SIGMA, out_dir=tmp_path, objective="stab")
    with pytest.raises(InvalidInputError, match="objective"):
        train_denoiser(denoiser, digits[0], sigma=SIGMA, out_dir=tmp_path, objective="l1")
    snapshot = [{k: v.clone() for k, v in classifier.module.state_dict().items()}]
    first = next(iter(snapshot[0]))
    snapshot[0][first] += 1
    with pytest.raises(RuntimeError, match="changed"):
        _check_unchanged([classifier], snapshot)


def test_a_noise_level_aware_denoiser_is_trained_and_evaluated_at_the_runs_sigma(
    digits, tmp_path
):
    """Fine-tuning a noise-level-aware denoiser (one network for any sigma) for one sigma
    must hand it that sigma, not the level its checkpoint was loaded at (or none)."""
    torch.manual_seed(0)
    denoiser = create_denoiser("drunet", in_channels=1, widths=(4, 8, 8, 8), blocks=1)
    seen: list[float] = []
    original = type(denoiser).denoise

    def spy(self, x, sigma):
        seen.extend(sigma.unique().tolist())
        return original(self, x, sigma)

    denoiser.denoise = spy.__get__(denoiser)  # type: ignore[method-assign]
    train_set = TensorDataset(*(t[:64] for t in digits[0].tensors))
    train_denoiser(denoiser, train_set, sigma=0.12, out_dir=tmp_path, test_set=digits[1],
                   eval_size=32, config=TrainConfig(epochs=1, **FAST))  # fmt: skip
    assert seen and all(s == pytest.approx(0.12) for s in seen)


def test_evaluate_denoiser_gives_the_record_an_epoch_logs(digits, classifier, mse_denoiser,
                                                          tmp_path):  # fmt: skip
    """Evaluating the trained denoiser must give the record its last epoch logged: the
    same held-out items, noise draw and figures (so a start evaluated before training is
    comparable with every epoch)."""
    out, _ = mse_denoiser
    denoiser = load_denoiser(out / "denoiser.safetensors")
    views: list[tuple] = []

    def augment(images, generator):
        views.append((tuple(images.shape), isinstance(generator, torch.Generator)))
        return images.flip(3)

    history = train_denoiser(
        denoiser, digits[0], sigma=SIGMA, out_dir=tmp_path, objective="stab+mse",
        classifiers={"cnn": classifier}, mse_weight=10.0, augment=augment,
        test_set=digits[1], eval_size=100, config=TrainConfig(epochs=1, lr=1e-3, **FAST),
    )  # fmt: skip
    figures = dict(sigma=SIGMA, classifiers={"cnn": classifier}, eval_size=100)
    after = evaluate_denoiser(denoiser, digits[1], **figures)
    start = evaluate_denoiser(load_denoiser(out / "denoiser.safetensors"), digits[1], **figures)
    assert start["psnr_denoised"] != after["psnr_denoised"]  # training moved it
    for key in ("psnr_noisy", "psnr_denoised", "accuracy_cnn"):
        assert history[0][key] == pytest.approx(after[key], abs=1e-6), key
    assert len(views) == -(-1400 // 32) and all(is_generator for _, is_generator in views)
    meta = load_denoiser(tmp_path / "denoiser.safetensors").checkpoint_metadata
    assert meta["mse_weight"] == 10.0


def test_the_mse_anchor_is_refused_where_it_means_nothing(digits, classifier, tmp_path):
    denoiser = create_denoiser("dncnn", in_channels=1, depth=3, width=4)
    for objective, weight in (("mse", 1.0), ("stab+mse", -1.0), ("stab+mse", float("nan"))):
        with pytest.raises(InvalidInputError, match="mse_weight"):
            train_denoiser(denoiser, digits[0], sigma=SIGMA, out_dir=tmp_path,
                           objective=objective, classifiers={"cnn": classifier},
                           mse_weight=weight)  # fmt: skip
