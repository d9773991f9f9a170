"""The objectives as pure functions, and how several classifiers guide them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smoothapi.training.objectives import (
    clf_objective,
    guided_loss,
    mse_objective,
    stab_objective,
)


def _linear(seed: int):
    layer = torch.nn.Linear(12, 4)
    torch.manual_seed(seed)
    torch.nn.init.normal_(layer.weight)
    return lambda x: layer(x.flatten(1))


def test_mse_is_zero_for_a_perfect_reconstruction():
    clean = torch.rand(3, 1, 2, 6)
    assert mse_objective(clean, clean).item() == 0.0
    assert mse_objective(clean + 0.1, clean).item() == pytest.approx(0.01)


def test_stab_targets_the_classifiers_own_clean_label_not_the_true_one():
    logits = _linear(0)
    clean = torch.rand(5, 1, 2, 6)
    denoised = clean + 0.3 * torch.randn_like(clean)
    pseudo = logits(clean).argmax(1)
    expected = F.cross_entropy(logits(denoised), pseudo)
    assert stab_objective(logits, denoised, clean).item() == pytest.approx(expected.item())
    # A perfect denoiser cannot be improved on: it reproduces the classifier's own labels.
    assert stab_objective(logits, clean, clean) <= clf_objective(logits, clean, (pseudo + 1) % 4)


def test_gradients_reach_the_denoiser_output_but_not_the_pseudo_labels():
    logits = _linear(1)
    clean = torch.rand(4, 1, 2, 6, requires_grad=True)
    denoised = (clean.detach() + 0.1).requires_grad_()
    stab_objective(logits, denoised, clean).backward()
    assert denoised.grad is not None and denoised.grad.abs().sum() > 0
    assert clean.grad is None


def test_round_robin_uses_one_classifier_per_step_and_mean_averages_them():
    classifiers = [_linear(2), _linear(3), _linear(4)]
    clean = torch.rand(6, 1, 2, 6)
    denoised = clean + 0.2
    labels = torch.arange(6) % 4
    each = [clf_objective(c, denoised, labels).item() for c in classifiers]
    for step in range(6):
        got = guided_loss("clf", classifiers, denoised, clean, labels, step, "round-robin")
        assert got.item() == pytest.approx(each[step % 3])
    mean = guided_loss("stab+mse", classifiers, denoised, clean, labels, 0, "mean")
    stabs = [stab_objective(c, denoised, clean).item() for c in classifiers]
    assert mean.item() == pytest.approx(sum(stabs) / 3)


def test_bad_objective_or_guidance_is_refused():
    with pytest.raises(ValueError, match="known"):
        guided_loss(
            "l1",
            [_linear(0)],
            torch.zeros(1, 12),
            torch.zeros(1, 12),
            torch.zeros(1, dtype=torch.long),
            0,
        )
    with pytest.raises(ValueError, match="known"):
        guided_loss(
            "stab",
            [_linear(0)],
            torch.zeros(1, 12),
            torch.zeros(1, 12),
            torch.zeros(1, dtype=torch.long),
            0,
            guidance="best",
        )
    with pytest.raises(ValueError, match="classifier"):
        guided_loss(
            "stab", [], torch.zeros(1, 12), torch.zeros(1, 12), torch.zeros(1, dtype=torch.long), 0
        )


def test_the_mse_anchor_adds_its_multiple_of_the_mse_to_a_guided_loss():
    torch.manual_seed(0)
    clean, denoised = torch.rand(4, 3, 5, 5), torch.rand(4, 3, 5, 5)
    linear = torch.nn.Linear(75, 6)

    def logits(x):
        return linear(x.flatten(1))

    args = ("stab+mse", [logits], denoised, clean, torch.zeros(4, dtype=torch.long), 0)
    plain = guided_loss(*args)
    anchored = guided_loss(*args, mse_weight=50.0)
    assert anchored.item() == pytest.approx(plain.item() + 50 * F.mse_loss(denoised, clean).item())
    assert guided_loss("mse", [], denoised, clean, args[4], 0, mse_weight=50.0).item() == (
        pytest.approx(F.mse_loss(denoised, clean).item()))


def test_soft_stab_matches_the_clean_distribution_not_just_its_top_label():
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 5)

    def logits(x):
        return linear(x.flatten(1))

    clean = torch.rand(6, 3, 2, 2)
    assert stab_objective(logits, clean, clean, soft=True).item() == pytest.approx(0, abs=1e-6)
    assert stab_objective(logits, clean, clean).item() > 0.1  # hard labels: CE of itself
    denoised = torch.rand(6, 3, 2, 2)
    p, q = F.softmax(logits(clean), 1), F.log_softmax(logits(denoised), 1)
    expected = (p * (p.log() - q)).sum(1).mean()
    assert stab_objective(logits, denoised, clean, soft=True).item() == pytest.approx(
        expected.item(), rel=1e-5)
