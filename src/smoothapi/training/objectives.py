"""Denoiser objectives (Salman et al. 2020, section 3.3), each a small pure function.

``denoised`` is ``D(x + delta)``, ``clean`` is ``x``; ``logits`` is a classifier's
differentiable ``(B, C, H, W) -> (B, K)`` map (e.g. ``LocalModelAdapter.logits``),
frozen by the caller: gradients flow *through* it into the denoiser, never into it.

* **MSE** reconstructs the clean image (no labels, no classifier).
* **STAB** asks the classifier to give ``D(x + delta)`` the label it gives ``x``
  (pseudo-labels: no dataset labels needed).
* **CLF** asks the classifier to give ``D(x + delta)`` the true label.

STAB+MSE / CLF+MSE are STAB / CLF fine-tuning of a denoiser first trained with MSE.
An optional *MSE anchor* (``mse_weight`` > 0) adds ``mse_weight * MSE`` to a guided
loss, so fine-tuning keeps the image close to the clean one while it follows the guides
(not in the paper: there the fine-tuning loss is STAB alone, ``mse_weight = 0``).
With several classifiers (surrogates in query access), :func:`guided_loss` either
takes them in turn, one per batch (``"round-robin"``, as the authors' code did), or
averages the loss over all of them (``"mean"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "GUIDANCE_MODES",
    "OBJECTIVES",
    "clf_objective",
    "guided_loss",
    "mse_objective",
    "stab_objective",
]

Logits = Callable[[torch.Tensor], torch.Tensor]

OBJECTIVES = ("mse", "stab", "clf", "stab+mse", "clf+mse")
GUIDANCE_MODES = ("round-robin", "mean")


def mse_objective(denoised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``D(x + delta)`` and ``x`` (eq. 4, averaged over pixels)."""
    return F.mse_loss(denoised, clean)


def stab_objective(
    logits: Logits, denoised: torch.Tensor, clean: torch.Tensor, soft: bool = False
) -> torch.Tensor:
    """Cross-entropy of ``logits(D(x + delta))`` against the classifier's label on ``x`` (eq. 5).

    ``soft``: against the classifier's whole output distribution on ``x`` instead of its
    top label (the KL divergence from it, as in distillation; not in the paper): a crop the
    classifier is unsure of asks the denoiser to keep that uncertainty, not one arbitrary
    label."""
    with torch.no_grad():
        target = logits(clean)
    if soft:
        return F.kl_div(F.log_softmax(logits(denoised).float(), dim=1),
                        F.log_softmax(target.float(), dim=1), log_target=True,
                        reduction="batchmean")  # fmt: skip
    return F.cross_entropy(logits(denoised), target.argmax(dim=1))


def clf_objective(logits: Logits, denoised: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits(D(x + delta))`` against the dataset's true labels."""
    return F.cross_entropy(logits(denoised), labels)


def guided_loss(
    objective: str,
    classifiers: Sequence[Logits],
    denoised: torch.Tensor,
    clean: torch.Tensor,
    labels: torch.Tensor,
    step: int,
    guidance: str = "round-robin",
    mse_weight: float = 0.0,
    soft: bool = False,
) -> torch.Tensor:
    """The loss of ``objective`` for one batch; ``step`` picks the round-robin classifier;
    a guided objective gains ``mse_weight`` times the MSE (the anchor; 0: none); ``soft``
    makes STAB match each classifier's whole distribution on the clean image."""
    if objective == "mse":
        return mse_objective(denoised, clean)
    if not classifiers:
        raise ValueError(f"objective {objective!r} needs at least one classifier")
    if objective in ("stab", "stab+mse"):
        one = lambda logits: stab_objective(logits, denoised, clean, soft)  # noqa: E731
    elif objective in ("clf", "clf+mse"):
        one = lambda logits: clf_objective(logits, denoised, labels)  # noqa: E731
    else:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if guidance == "round-robin":
        loss = one(classifiers[step % len(classifiers)])
    elif guidance == "mean":
        loss = torch.stack([one(logits) for logits in classifiers]).mean()
    else:
        raise ValueError(f"unknown guidance {guidance!r}; known: {', '.join(GUIDANCE_MODES)}")
    if mse_weight:
        return loss + mse_weight * mse_objective(denoised.float(), clean.float())
    return loss
