"""The classifier registry."""

from __future__ import annotations

import pytest
import torch

from smoothapi import InvalidInputError
from smoothapi.training import create_classifier, list_classifiers


def test_registry_lists_and_builds_architectures():
    assert "small_cnn" in list_classifiers()
    for size in (8, 28, 32):
        model = create_classifier("small_cnn", in_channels=3, num_classes=7, width=8)
        assert model(torch.rand(2, 3, size, size)).shape == (2, 7)
    assert model.arch_config == {"arch": "small_cnn",
                                 "kwargs": {"in_channels": 3, "num_classes": 7, "width": 8}}


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InvalidInputError, match="known: .*small_cnn"):
        create_classifier("resnet9000")
