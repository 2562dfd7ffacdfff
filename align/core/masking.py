"""Image masking for OPA-DPO's image-contrast (CoPO) terms: the same answer is preferred with the real image over
a masked one, so the policy is pushed to ground its words in the pixels rather than in the text prior.

Both functions take normalised pixel_values [B, C, H, W], return a new tensor (the input is untouched) and fill
masked positions with the per-image, per-channel mean of the *unmasked original* image (OPA-DPO replaces pixels by
the image mean; a mean fill carries no object information but keeps the input statistics in range). Positions are
shared across channels, and drawn from the given torch.Generator (same seed, same masks; CPU generator, any
pixel device).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def _fill(pixels: Tensor, masks: Tensor) -> Tensor:
    """Replace positions where masks [B, H, W] is True by each image's channel means."""
    mean = pixels.mean(dim=(-2, -1), keepdim=True).expand_as(pixels)
    return torch.where(masks.unsqueeze(1).to(pixels.device), mean, pixels)


def _check(pixels: Tensor, ratio: float) -> None:
    if pixels.dim() != 4:
        raise ValueError(f"expected pixel_values [B, C, H, W], got shape {tuple(pixels.shape)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")


def mask_random(pixels: Tensor, ratio: float = 0.3, generator: torch.Generator | None = None) -> Tensor:
    """Mask round(ratio * H * W) pixel positions per image, chosen uniformly without replacement (OPA-DPO's
    'random' CoPO method; an exact count rather than a Bernoulli draw, so every image loses the same share)."""
    _check(pixels, ratio)
    B, _, H, W = pixels.shape
    k = round(ratio * H * W)
    masks = torch.zeros(B, H * W, dtype=torch.bool)
    for b in range(B):
        masks[b, torch.randperm(H * W, generator=generator)[:k]] = True
    return _fill(pixels, masks.view(B, H, W))


def mask_blocks(
    pixels: Tensor, ratio: float = 0.3, block: int = 14, generator: torch.Generator | None = None
) -> Tensor:
    """Mask whole square blocks of side `block` on a grid aligned with the image origin (with block = the vision
    patch size, every masked block is a whole ViT patch), choosing round(ratio * number of grid cells) cells per
    image; the covered area is exactly `ratio` (up to rounding) when `block` divides H and W, and close to it
    otherwise (edge cells are clipped)."""
    _check(pixels, ratio)
    B, _, H, W = pixels.shape
    block = max(1, min(block, H, W))
    rows, cols = math.ceil(H / block), math.ceil(W / block)
    k = round(ratio * rows * cols)
    masks = torch.zeros(B, rows * cols, dtype=torch.bool)
    for b in range(B):
        masks[b, torch.randperm(rows * cols, generator=generator)[:k]] = True
    # each grid cell expands to a block x block square, cropped to the image
    grid = masks.view(B, rows, cols).repeat_interleave(block, dim=1).repeat_interleave(block, dim=2)
    return _fill(pixels, grid[:, :H, :W])
