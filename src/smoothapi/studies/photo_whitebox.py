"""The natural-photo study's white-box reference: the target distilled under noise.

No noise-trained ImageNet model can be had offline, so the study's "whitebox" row is the
target itself fine-tuned under Gaussian noise to match its own clean softmax (all weights,
or only the batch-norm layers, which cannot forget ImageNet on a few dozen photos).
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..training.loop import fit
from ..zoo import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from .natural_photos import PhotoStudy

__all__ = ["train_whitebox"]


def train_whitebox(study: PhotoStudy, sigma: float) -> None:
    """Fine-tune ``study``'s target under noise at ``sigma`` so it keeps its clean
    predictions (its softmax on the clean image), saving each epoch's weights at
    ``study.classifier_path("whitebox@<sigma>")`` with the recipe in their metadata."""
    teacher = study.classifier("target")
    teacher.module.requires_grad_(False)
    student = copy.deepcopy(teacher.module).train()
    only_norms = study.scale.whitebox_params == "batchnorm"
    student.requires_grad_(not only_norms)
    for layer in student.modules() if only_norms else ():
        if isinstance(layer, nn.BatchNorm2d):
            layer.requires_grad_(True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def loss_fn(model, images, labels, generator, step):
        with torch.no_grad():
            soft = teacher.logits(images).softmax(dim=1)
        noisy = images + sigma * torch.randn(
            images.shape, generator=generator, device=images.device
        )
        log_probs = model((noisy - mean.to(images)) / std.to(images)).log_softmax(dim=1)
        return F.kl_div(log_probs, soft, reduction="batchmean")

    path = study.classifier_path(f"whitebox@{sigma:g}")

    def save(model, epoch, record):
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(path),
            metadata={
                "smoothapi": json.dumps(
                    {
                        "kind": "classifier",
                        "arch": study.scale.target,
                        "sigma": sigma,
                        "recipe": "distillation under noise",
                        "epochs": epoch,
                        "crop": study.scale.whitebox_crop or study.scale.size,
                        "trained": study.scale.whitebox_params,
                    }
                )
            },
        )

    fit(
        student,
        study.train_set(study.scale.whitebox_crop),
        loss_fn,
        study.config(study.scale.whitebox_epochs, study.scale.whitebox_lr),
        path.parent,
        on_epoch_end=save,
    )

