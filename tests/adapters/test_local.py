"""LocalModelAdapter: the input pipeline, labels, ranking, gradients and checkpoints."""

from __future__ import annotations

import pytest
import torch

from smoothapi import CheckpointError, InvalidInputError, LocalModelAdapter
from smoothapi.training import create_classifier


class Probe(torch.nn.Module):
    """Returns fixed logits and remembers the input it was given."""

    def __init__(self, logits):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(logits, dtype=torch.float32))
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.weight.expand(len(x), -1) * (1 + 0 * x.flatten(1)[:, :1])


def test_normalisation_and_resizing_happen_inside_the_adapter():
    probe = Probe([0.0, 1.0])
    adapter = LocalModelAdapter(
        probe, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 2.0], input_size=(4, 6)
    )
    adapter.top_labels(torch.ones(2, 3, 8, 12))
    assert probe.seen.shape == (2, 3, 4, 6)
    assert torch.allclose(probe.seen[:, 0], torch.full((2, 4, 6), 1.0))
    assert torch.allclose(probe.seen[:, 1], torch.full((2, 4, 6), 3.0))
    assert torch.allclose(probe.seen[:, 2], torch.full((2, 4, 6), 0.5))


def test_a_bfloat16_model_gets_bfloat16_inputs_and_gives_float32_logits():
    probe = Probe([0.0, 1.0, 0.5]).to(torch.bfloat16)
    adapter = LocalModelAdapter(probe, mean=[0.5], std=[0.5])
    logits = adapter.logits(torch.ones(2, 1, 4, 4))
    assert probe.seen.dtype == torch.bfloat16 and logits.dtype == torch.float32
    assert adapter.top_labels(torch.ones(2, 1, 4, 4)) == [1, 1]


def test_labels_ranking_and_class_names():
    adapter = LocalModelAdapter(Probe([0.1, 2.0, 0.1, -1.0]), class_names=["a", "b", "c", "d"])
    image = torch.zeros(1, 2, 2)
    assert adapter.top_label(image) == "b"
    assert adapter.top_labels(torch.zeros(3, 1, 2, 2)) == ["b", "b", "b"]
    ranked = adapter.ranked_labels(image)
    assert [label for label, _ in ranked] == ["b", "a", "c", "d"]  # tie a/c: lower index first
    assert sum(score for _, score in ranked) == pytest.approx(1.0)
    assert LocalModelAdapter(Probe([3.0, 1.0])).top_label(image) == 0


def test_logits_are_differentiable_and_the_model_is_not_updated():
    model = create_classifier("small_cnn", in_channels=1, num_classes=3, width=4)
    adapter = LocalModelAdapter(model, mean=[0.5], std=[0.25])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 1, 12, 12, requires_grad=True)
    adapter.logits(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    adapter.top_labels(torch.rand(4, 1, 12, 12))
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_checkpoint_round_trip_rebuilds_the_same_classifier(tmp_path):
    torch.manual_seed(0)
    model = create_classifier("small_cnn", in_channels=3, num_classes=4, width=4)
    adapter = LocalModelAdapter(
        model,
        mean=[0.4, 0.5, 0.6],
        std=[0.2, 0.2, 0.3],
        class_names=["w", "x", "y", "z"],
        input_size=(16, 16),
    )
    path = tmp_path / "clf.safetensors"
    adapter.save(path, dataset="generated", epochs=0)
    loaded = LocalModelAdapter.from_checkpoint(path)
    images = torch.rand(8, 3, 20, 20)
    assert loaded.top_labels(images) == adapter.top_labels(images)
    assert torch.allclose(loaded.logits(images), adapter.logits(images), atol=1e-6)
    assert loaded.class_names == ["w", "x", "y", "z"] and loaded.input_size == (16, 16)


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        LocalModelAdapter.from_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable"):
        LocalModelAdapter.from_checkpoint(junk)
    with pytest.raises(CheckpointError, match="create_classifier"):
        LocalModelAdapter(torch.nn.Linear(3, 2)).save(tmp_path / "plain.safetensors")


def test_mean_without_std_is_rejected():
    with pytest.raises(InvalidInputError):
        LocalModelAdapter(torch.nn.Linear(3, 2), mean=[0.5])
    with pytest.raises(InvalidInputError):
        LocalModelAdapter(torch.nn.Linear(3, 2), mean=[0.5], std=[0.0])


def test_async_form_gives_the_same_labels():
    import asyncio

    model = create_classifier("small_cnn", in_channels=1, num_classes=5, width=4)
    adapter = LocalModelAdapter(model)
    images = torch.rand(6, 1, 10, 10)
    assert asyncio.run(adapter.atop_labels(images)) == adapter.top_labels(images)
