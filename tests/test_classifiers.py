"""The classifier registry."""

from __future__ import annotations

import pytest
import torch

from smoothapi import InvalidInputError
from smoothapi.classifiers import create_classifier, list_classifiers


def test_registry_lists_and_builds_architectures():
    assert "small_cnn" in list_classifiers()
    for size in (8, 28, 32):
        model = create_classifier("small_cnn", in_channels=3, num_classes=7, width=8)
        assert model(torch.rand(2, 3, size, size)).shape == (2, 7)
    assert model.arch_config == {
        "arch": "small_cnn",
        "kwargs": {"in_channels": 3, "num_classes": 7, "width": 8},
    }


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InvalidInputError, match="known: .*small_cnn"):
        create_classifier("resnet9000")


ARCHITECTURES = list_classifiers()


def _build(name: str, channels: int, size: int, num_classes: int = 10) -> torch.nn.Module:
    kwargs = {"input_size": size} if name == "mlp" else {}
    return create_classifier(name, in_channels=channels, num_classes=num_classes, **kwargs)


def test_at_least_five_architectures_are_registered():
    expected = {"small_cnn", "lenet", "mlp", "resnet_small", "vgg_small", "mobilenet_small"}
    assert expected <= set(ARCHITECTURES) and len(ARCHITECTURES) >= 5


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (1, 32), (3, 28), (3, 32)])
def test_every_architecture_maps_images_to_logits(name, channels, size):
    model = _build(name, channels, size, num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, channels, size, size))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_defaults_are_small_and_trainable(name):
    torch.manual_seed(0)
    model = create_classifier(name)
    n_params = sum(p.numel() for p in model.parameters())
    assert 10_000 < n_params < 1_000_000
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 1, 28, 28)), torch.tensor([3, 5]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_size_arguments_change_the_model():
    def count(name, **kw):
        return sum(p.numel() for p in create_classifier(name, **kw).parameters())

    assert count("resnet_small", blocks_per_stage=1) < count("resnet_small", blocks_per_stage=2)
    assert count("vgg_small", width=8) < count("vgg_small", width=16)
    assert count("mobilenet_small", width=8) < count("mobilenet_small", width=16)
    assert count("mlp", hidden=[64]) < count("mlp", hidden=(256, 128))


def test_mlp_needs_its_input_size():
    model = create_classifier("mlp", input_size=28)
    with pytest.raises(RuntimeError):
        model(torch.rand(2, 1, 32, 32))
