"""align/core/masking.py: seeded, the stated fraction masked, mean fill, the rest and the input untouched."""

from __future__ import annotations

import pytest
import torch

from align.core.masking import mask_blocks, mask_random


def pixels(seed: int = 0, shape=(2, 3, 28, 28)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def masked_positions(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """[B, H, W] True where any channel changed (random normals never equal their mean exactly)."""
    return (before != after).any(dim=1)


MASKERS = [
    lambda x, g: mask_random(x, 0.3, generator=g),
    lambda x, g: mask_blocks(x, 0.3, block=7, generator=g),
]


@pytest.mark.parametrize("mask", MASKERS, ids=["random", "blocks"])
def test_seeded_and_not_in_place(mask):
    x = pixels()
    copy = x.clone()
    a, b, c = mask(x, gen(1)), mask(x, gen(1)), mask(x, gen(2))
    assert torch.equal(x, copy)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("mask", MASKERS, ids=["random", "blocks"])
def test_mean_fill_same_positions_across_channels(mask):
    x = pixels()
    out = mask(x, gen(3))
    where = masked_positions(x, out)
    mean = x.mean(dim=(-2, -1))  # per image, per channel, of the original
    for b in range(x.shape[0]):
        for ch in range(x.shape[1]):
            assert torch.allclose(out[b, ch][where[b]], mean[b, ch].expand(int(where[b].sum())))
            assert torch.equal(out[b, ch][~where[b]], x[b, ch][~where[b]])
    # every channel changed at every masked position: the positions are shared
    assert ((x != out).sum(dim=1)[where] == x.shape[1]).all()
    # two images of one batch get different masks
    assert not torch.equal(where[0], where[1])


def test_random_fraction():
    x = pixels()
    out = mask_random(x, 0.3, generator=gen(4))
    frac = masked_positions(x, out).float().mean(dim=(-2, -1))
    assert frac.tolist() == pytest.approx([0.3, 0.3], abs=1 / 784)  # round(0.3*784) = 235 of 784
    assert torch.equal(mask_random(x, 0.0, generator=gen(4)), x)


def test_blocks_cover_ratio_in_whole_blocks():
    x = pixels()
    out = mask_blocks(x, 0.3, block=7, generator=gen(5))
    where = masked_positions(x, out)
    # 16 cells of 7x7, round(0.3*16) = 5 cells = 245/784 = 0.3125 of the area
    assert where.float().mean(dim=(-2, -1)).tolist() == pytest.approx([5 / 16, 5 / 16])
    cells = where.view(2, 4, 7, 4, 7)
    per_cell = cells.sum(dim=(2, 4))
    assert set(per_cell.unique().tolist()) <= {0, 49}  # each cell is either whole or untouched


def test_blocks_uneven_grid_is_close_to_ratio():
    x = pixels(shape=(1, 3, 30, 30))
    out = mask_blocks(x, 0.3, block=7, generator=gen(6))
    frac = masked_positions(x, out).float().mean().item()
    assert frac == pytest.approx(0.3, abs=0.1)  # 5x5 grid with clipped edge cells


def test_bad_inputs():
    with pytest.raises(ValueError):
        mask_random(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError):
        mask_blocks(torch.zeros(1, 3, 8, 8), ratio=1.5)
