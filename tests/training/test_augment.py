"""Random views of a batch, drawn from the step's generator."""

from __future__ import annotations

import pytest
import torch

from smoothapi.training.augment import random_view


def _tiles() -> torch.Tensor:
    return torch.arange(2 * 3 * 10 * 12, dtype=torch.uint8).reshape(2, 3, 10, 12)


def test_the_same_generator_state_gives_the_same_view():
    tiles = _tiles()
    first = random_view(tiles, torch.Generator().manual_seed(3), (4, 6, 8))
    again = random_view(tiles, torch.Generator().manual_seed(3), (4, 6, 8))
    assert torch.equal(first, again) and first.dtype == torch.float32
    views = {tuple(random_view(tiles, torch.Generator().manual_seed(s), (4, 6, 8)).shape)
             for s in range(40)}  # fmt: skip
    assert views == {(2, 3, 4, 4), (2, 3, 6, 6), (2, 3, 8, 8)}


def test_without_rotation_a_view_is_a_crop_or_its_mirror():
    tiles = _tiles().float()
    flipped = 0
    for seed in range(30):
        view = random_view(tiles, torch.Generator().manual_seed(seed), (5,), rotate=False)
        crops = [tiles[..., t : t + 5, c : c + 5] for t in range(6) for c in range(8)]
        plain = any(torch.equal(view, crop) for crop in crops)
        mirror = any(torch.equal(view.flip(3), crop) for crop in crops)
        assert plain or mirror
        flipped += mirror and not plain
    assert 0 < flipped < 30  # both happen (each with probability 1/2 per draw)


def test_a_crop_larger_than_the_tiles_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        random_view(_tiles(), torch.Generator().manual_seed(0), (11,))
