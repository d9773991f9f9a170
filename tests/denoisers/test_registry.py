"""The denoiser registry: architectures, shapes, residual structure and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothapi import (
    CheckpointError,
    InvalidInputError,
    LocalModelAdapter,
    create_denoiser,
    list_denoisers,
    load_denoiser,
)
from smoothapi.denoisers import save_denoiser
from smoothapi.training import create_classifier

# Small sizes per architecture so every test runs in well under a second on a CPU.
SMALL = {
    "dncnn": {"depth": 4, "width": 8},
    "dncnn_wide": {"depth": 4, "width": 8},
    "memnet": {"width": 8, "num_memory_blocks": 2, "num_resblocks": 2},
    "ffdnet": {"depth": 3, "width": 8},
    "drunet": {"widths": [4, 8], "blocks": 1},
}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_every_architecture_has_small_test_sizes():
    assert list_denoisers() == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_equals_input_shape(name, channels):
    torch.manual_seed(0)
    model = create_denoiser(name, in_channels=channels, **SMALL[name])
    if hasattr(model, "noise_level"):  # noise-level aware: model(x) uses this level
        model.noise_level = 0.25
    assert model.arch_config == {"arch": name, "kwargs": {"in_channels": channels, **SMALL[name]}}
    for height, width in [(13, 17), (8, 8), (28, 28)]:
        x = torch.rand(2, channels, height, width)
        for train in (True, False):
            model.train(train)
            out = model(x)
            assert out.shape == x.shape
            assert out.dtype == x.dtype and torch.isfinite(out).all()
    with pytest.raises(RuntimeError):  # wrong channel count is not silently accepted
        model(torch.rand(1, channels + 1, 8, 8))


def test_in_channels_is_always_recorded():
    assert create_denoiser("dncnn", depth=3, width=4).arch_config["kwargs"] == {
        "in_channels": 3,
        "depth": 3,
        "width": 4,
    }


def test_dncnn_default_layout():
    model = create_denoiser("dncnn")
    convs = _convs(model)
    assert len(convs) == 17
    assert (convs[0].in_channels, convs[0].out_channels) == (3, 64)
    assert all((c.in_channels, c.out_channels) == (64, 64) for c in convs[1:-1])
    assert (convs[-1].in_channels, convs[-1].out_channels) == (64, 3)
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 15

    wide = _convs(create_denoiser("dncnn_wide", in_channels=1))
    assert len(wide) == 17
    assert all(c.out_channels == 128 for c in wide[:-1]) and wide[-1].out_channels == 1


def test_dncnn_wide_has_about_four_times_the_parameters():
    narrow = _n_params(create_denoiser("dncnn", depth=17))
    wide = _n_params(create_denoiser("dncnn_wide", depth=17))
    assert narrow == 558_400  # 1792 + 15 * (64*64*9 + 2*64) + 64*3*9
    assert 3.5 <= wide / narrow <= 4.5


def test_dncnn_predicts_the_noise():
    torch.manual_seed(0)
    model = create_denoiser("dncnn", in_channels=1, **SMALL["dncnn"]).eval()
    x = torch.rand(3, 1, 13, 17)
    assert not torch.equal(model(x), x)
    assert torch.allclose(model(x), x - model.body(x))
    with torch.no_grad():
        _convs(model)[-1].weight.zero_()
    for train in (True, False):
        assert torch.equal(model.train(train)(x), x)


def test_memnet_has_a_global_residual():
    torch.manual_seed(0)
    model = create_denoiser("memnet", in_channels=3, **SMALL["memnet"])
    x = torch.rand(2, 3, 13, 17)
    assert not torch.equal(model(x), x)
    with torch.no_grad():
        model.reconstructor[-1].weight.zero_()
    for train in (True, False):
        assert torch.equal(model.train(train)(x), x)


def test_memnet_default_layout():
    model = create_denoiser("memnet")
    assert len(model.memory_blocks) == 6
    assert all(len(block.recursive_unit) == 6 for block in model.memory_blocks)
    # gate m (1-based) sees 6 short-term + m long-term states of 64 channels
    gates = [block.gate_unit[-1] for block in model.memory_blocks]
    assert [g.in_channels for g in gates] == [(6 + m) * 64 for m in range(1, 7)]
    assert all(g.kernel_size == (1, 1) and g.out_channels == 64 for g in gates)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InvalidInputError, match="known: dncnn, dncnn_wide, drunet, ffdnet, memnet"):
        create_denoiser("unet9000")


def test_bad_sizes_are_rejected():
    with pytest.raises(InvalidInputError, match="depth"):
        create_denoiser("dncnn", depth=1)
    with pytest.raises(InvalidInputError, match="width"):
        create_denoiser("memnet", width=0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_checkpoint_round_trip(tmp_path, name):
    torch.manual_seed(1)
    model = create_denoiser(name, in_channels=1, **SMALL[name])
    if hasattr(model, "noise_level"):  # noise-level aware: the loaded one gets sigma's
        model.noise_level = 0.25
    model.train()
    for _ in range(3):  # move the BatchNorm running statistics off their defaults
        model(torch.rand(4, 1, 10, 10))
    model.eval()
    path = tmp_path / "denoiser.safetensors"
    save_denoiser(
        path,
        model,
        sigma=0.25,
        objective="stab+mse",
        surrogates=["small_cnn"],
        dataset="fashion-mnist",
        input_size=(28, 28),
        epochs=7,
        lr=1e-3,
    )

    loaded = load_denoiser(path)
    assert not loaded.training
    weights = loaded.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    x = torch.rand(3, 1, 13, 17)
    with torch.no_grad():  # loaded channels-last: the same outputs to float rounding
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    meta = loaded.checkpoint_metadata
    assert meta["kind"] == "denoiser"
    assert meta["arch"] == name
    assert meta["kwargs"] == {"in_channels": 1, **SMALL[name]}
    assert meta["sigma"] == 0.25
    assert meta["objective"] == "stab+mse"
    assert meta["surrogates"] == ["small_cnn"]
    assert meta["dataset"] == "fashion-mnist"
    assert meta["input_size"] == (28, 28)
    assert meta["epochs"] == 7
    assert meta["lr"] == 1e-3


def test_loading_a_classifier_checkpoint_as_a_denoiser_fails(tmp_path):
    path = tmp_path / "classifier.safetensors"
    LocalModelAdapter(create_classifier("small_cnn", in_channels=1, width=4)).save(path)
    with pytest.raises(CheckpointError, match="classifier"):
        load_denoiser(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_denoiser(tmp_path / "missing.safetensors")


def test_only_registry_built_denoisers_can_be_saved(tmp_path):
    path = tmp_path / "d.safetensors"
    with pytest.raises(CheckpointError, match="create_denoiser"):
        save_denoiser(path, nn.Conv2d(1, 1, 3, padding=1), sigma=0.5, objective="mse")
    assert not path.exists()


def test_weights_that_do_not_fit_the_architecture_fail(tmp_path):
    model = create_denoiser("dncnn", in_channels=1, depth=3, width=8)
    model.arch_config = {"arch": "dncnn", "kwargs": {"in_channels": 1, "depth": 3, "width": 16}}
    path = tmp_path / "d.safetensors"
    save_denoiser(path, model, sigma=0.5, objective="mse")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_denoiser(path)


def test_extra_metadata_cannot_override_the_architecture(tmp_path):
    model = create_denoiser("dncnn", in_channels=1, depth=3, width=4)
    with pytest.raises(InvalidInputError, match="arch"):
        save_denoiser(tmp_path / "d.safetensors", model, sigma=0.5, objective="mse", arch="x")
