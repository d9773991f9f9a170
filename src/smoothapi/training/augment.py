"""Random views of a batch of tiles, drawn from the training loop's generator.

:func:`random_view` takes one random square crop of a batch (one size from
``crop_sizes``, one place for the whole batch), optionally a random quarter turn, and a
random horizontal flip. Every draw comes from ``generator`` (the per-step generator of
:func:`~smoothapi.training.loop.fit`), so a resumed run sees the views an uninterrupted
one would. One view per batch keeps the batch a single tensor at no copying cost; the
batches differ, so over an epoch a fixed pool of tiles is seen at many sizes and places.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["random_view"]


def random_view(
    tiles: torch.Tensor,
    generator: torch.Generator,
    crop_sizes: Sequence[int],
    rotate: bool = True,
) -> torch.Tensor:
    """``(N, C, S, S)`` crop of ``(N, C, H, W)`` ``tiles``, ``S`` drawn from ``crop_sizes``
    (each at most ``min(H, W)``), turned by a random multiple of 90 degrees if ``rotate``
    and flipped left-right with probability 1/2; returned as float."""
    device = tiles.device

    def draw(high: int) -> int:
        return int(torch.randint(high, (1,), generator=generator, device=device))

    size = crop_sizes[draw(len(crop_sizes))]
    if size > min(tiles.shape[-2:]):
        raise ValueError(f"crop size {size} exceeds the tiles' {tuple(tiles.shape[-2:])}")
    top, left = draw(tiles.shape[-2] - size + 1), draw(tiles.shape[-1] - size + 1)
    view = tiles[..., top : top + size, left : left + size].float()
    if rotate:
        view = torch.rot90(view, draw(4), (2, 3))
    if draw(2):
        view = view.flip(3)
    return view
