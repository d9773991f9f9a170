"""A local PyTorch classifier as a base classifier (full access: gradients flow through it)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .._checkpoint import as_module_input, load_checkpoint, module_digest, save_checkpoint
from ..certification import Label
from ..classifiers import create_classifier
from ..errors import CheckpointError, InvalidInputError
from .base import Adapter, Answer

__all__ = ["LocalModelAdapter"]


class LocalModelAdapter(Adapter):
    """Wrap a ``torch.nn.Module`` that maps ``(B, C, H, W)`` inputs to ``(B, K)`` logits.

    The adapter owns the model's input pipeline, applied after the noise:
    optional resizing to ``input_size`` and per-channel ``(x - mean) / std``
    normalisation. Labels are class indices, or ``class_names[index]`` when given.
    The module is put in eval mode and is never updated here; :meth:`logits` is
    differentiable so denoiser training can back-propagate through it.

    An answer is ranked like a vision API's: the ``ranked_length`` (default 20) most
    probable classes with their probabilities; a decision
    (:mod:`smoothapi.decisions`) reads those, and a journal keeps them.
    """

    name = "local"
    #: The most probable classes an answer lists (a vision API's list length).
    DEFAULT_RANKED_LENGTH = 20

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        class_names: Sequence[Label] | None = None,
        input_size: tuple[int, int] | None = None,
        device: str | torch.device | None = None,
        ranked_length: int = DEFAULT_RANKED_LENGTH,
    ) -> None:
        if isinstance(ranked_length, bool) or not isinstance(ranked_length, int) \
                or ranked_length < 1:
            raise InvalidInputError(f"ranked_length must be a positive int, got {ranked_length!r}")
        self.ranked_length = ranked_length
        if device is None:
            first = next(model.parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.module = model.to(self.device).eval()
        if (mean is None) != (std is None):
            raise InvalidInputError("give both mean and std, or neither")
        if std is not None and any(s <= 0 for s in std):
            raise InvalidInputError(f"std must be positive, got {list(std)}")
        self.mean = None if mean is None else torch.tensor(mean, device=self.device).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, device=self.device).view(-1, 1, 1)
        self.class_names = None if class_names is None else list(class_names)
        self.input_size = None if input_size is None else tuple(input_size)

    def to(self, device: str | torch.device) -> LocalModelAdapter:
        """Move the model and its normalisation to ``device``; returns ``self``."""
        self.device = torch.device(device)
        self.module.to(self.device)
        if self.mean is not None:
            assert self.std is not None  # __init__ sets mean and std together
            self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` logits for ``(B, C, H, W)`` images in pixel space (differentiable)."""
        x = images.to(self.device, non_blocking=True)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        try:
            if self.mean is not None:
                assert self.std is not None  # __init__ sets mean and std together
                x = (x - self.mean) / self.std
            return self.module(as_module_input(self.module, x)).float()
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as exc:  # a shape or dtype the model cannot take
            shape = "x".join(map(str, x.shape[1:]))
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInputError(f"the model cannot take {shape} images: {message}") from exc

    def _label(self, index: int) -> Label:
        return index if self.class_names is None else self.class_names[index]

    def top_labels(self, images: torch.Tensor) -> list[Label]:
        with torch.inference_mode():
            indices = self.logits(images).argmax(dim=1).tolist()
        if self.class_names is None:
            return indices
        return [self.class_names[i] for i in indices]

    async def atop_labels(self, images: torch.Tensor) -> list[Label]:
        """The model runs inline: local inference is compute, and the smoothing client
        sends a local model one batch at a time, so a thread would only add overhead."""
        return self.top_labels(images)

    ranks = True

    async def aanswers_or_errors(self, images: torch.Tensor) -> list[Answer]:
        """Per image: the top class, its softmax probability, and the :attr:`ranked_length`
        most probable classes with theirs (what a decision reads; inline, like
        :meth:`atop_labels`)."""
        with torch.inference_mode():
            probs = self.logits(images).softmax(dim=1)
            scores, indices = probs.topk(min(self.ranked_length, probs.shape[1]), dim=1)
        answers = []
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True):
            ranked = tuple((self._label(i), s) for i, s in zip(row_indices, row_scores,
                                                               strict=True))  # fmt: skip
            answers.append(Answer(ranked[0][0], ranked[0][1], ranked))
        return answers

    def identity(self) -> dict:
        return {
            **super().identity(),
            "model": module_digest(self.module),
            "mean": None if self.mean is None else self.mean.flatten().tolist(),
            "std": None if self.std is None else self.std.flatten().tolist(),
            "class_names": self.class_names,
            "input_size": self.input_size,
            # Only a non-default length is keyed: runs made before it existed resume.
            **({"ranked_length": self.ranked_length}
               if self.ranked_length != self.DEFAULT_RANKED_LENGTH else {}),
        }  # fmt: skip

    def ranked_labels(self, image: torch.Tensor) -> list[tuple[Label, float]]:
        """Softmax scores, highest first (ties: lower class index first)."""
        with torch.inference_mode():
            scores = self.logits(image.unsqueeze(0)).softmax(dim=1)[0].tolist()
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(self._label(i), scores[i]) for i in order]

    # --- checkpoints -----------------------------------------------------------------

    def save(self, path: str | os.PathLike, **metadata: Any) -> None:
        """Save as a safetensors checkpoint that :meth:`from_checkpoint` rebuilds.

        The module must come from :func:`smoothapi.training.create_classifier` (so its
        architecture is known); extra ``metadata`` (dataset, epochs, ...) is stored too.
        """
        config = getattr(self.module, "arch_config", None)
        if config is None:
            raise CheckpointError(
                "only classifiers built by create_classifier() can be saved with their "
                "architecture; save other modules' state_dict yourself"
            )
        save_checkpoint(
            path,
            self.module,
            {
                **metadata,
                "kind": "classifier",
                **config,
                "mean": None if self.mean is None else self.mean.flatten().tolist(),
                "std": None if self.std is None else self.std.flatten().tolist(),
                "class_names": self.class_names,
                "input_size": self.input_size,
            },
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device | None = None
    ) -> LocalModelAdapter:
        """Rebuild a classifier saved by :meth:`save` from the file's metadata alone."""
        tensors, meta = load_checkpoint(path, kind="classifier")
        arch, kwargs = meta.get("arch"), meta.get("kwargs", {})
        if not isinstance(arch, str) or not isinstance(kwargs, dict):
            raise CheckpointError(f"{path}: no architecture name, or malformed kwargs {kwargs!r}")
        try:
            model = create_classifier(arch, **kwargs)
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot rebuild classifier {arch!r}: {exc}") from exc
        try:
            model.load_state_dict(tensors)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit {meta['arch']}: {exc}") from exc
        return cls(
            model,
            mean=meta.get("mean"),
            std=meta.get("std"),
            class_names=meta.get("class_names"),
            input_size=meta.get("input_size"),
            device=device or "cpu",
        )
