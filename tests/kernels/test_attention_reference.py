"""The pure-torch reference (the ground truth of the kernel tests) against SDPA, and padding masks → key ranges."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.reference import attention_reference, key_ranges_from_mask, visibility_mask


def test_key_ranges_of_left_right_unpadded_and_empty_rows():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    start, end = key_ranges_from_mask(mask)
    assert start.tolist() == [2, 0, 0, 0] and end.tolist() == [4, 3, 4, 0]
    assert start.dtype == end.dtype == torch.int32


def test_a_mask_with_holes_is_refused_with_the_rows_named():
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 0, 1]])
    with pytest.raises(ValueError, match=r"rows \[1, 2\].*contiguous"):
        key_ranges_from_mask(mask)


def test_visibility_is_bottom_right_causal_within_the_key_range():
    visible = visibility_mask(1, 2, 5, True, torch.tensor([1]), torch.tensor([5]))
    # query 0 sits at position 3, query 1 at position 4; key 0 is padding
    assert visible[0, 0].int().tolist() == [[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]


@pytest.mark.parametrize("causal", [True, False])
def test_reference_matches_sdpa_with_gqa_and_padding(causal):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 9, 16, generator=gen, requires_grad=True)
    k = torch.randn(2, 2, 9, 16, generator=gen, requires_grad=True)
    v = torch.randn(2, 2, 9, 16, generator=gen, requires_grad=True)
    start, end = torch.tensor([0, 3]), torch.tensor([7, 9])
    out, lse = attention_reference(q, k, v, causal, 0.2, start, end)
    visible = visibility_mask(2, 9, 9, causal, start, end)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=0.2, enable_gqa=True)
    rows = visible.any(-1).squeeze(1)
    assert torch.allclose(out.transpose(1, 2)[rows], want.transpose(1, 2)[rows], atol=1e-6)
    assert torch.isinf(lse).any() == causal  # left padding + causal: row 1's first queries see nothing
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert all(torch.isfinite(g).all() for g in grads), "rows that see no key must not make NaN gradients"
