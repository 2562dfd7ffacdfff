"""Pure-torch attention with the exact semantics of the Triton kernel: the ground truth for its tests.

Layout follows `torch.nn.functional.scaled_dot_product_attention`: q (B, H, Nq, D), k and v (B, H_kv, Nk, D),
with H a multiple of H_kv (grouped-query attention: query head h reads key/value head h // (H // H_kv)).

Masking, shared by every backend in this package:
- padding: key j of batch row b is visible only if kv_start[b] <= j < kv_end[b] (left and right padding are both
  one contiguous range of real tokens);
- causal: query i sits at position i + (Nk - Nq) (bottom-right aligned, as with a KV cache: one decoding query sees
  every key) and sees keys at positions <= its own;
- a query row that sees no key at all returns zeros (and zero gradients), not NaN.
"""

from __future__ import annotations

import math

import torch


def key_ranges_from_mask(key_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_start, kv_end) int32 per batch row from a (B, Nk) key-padding mask (True/1 = a real token).

    Raises ValueError when a row's real tokens are not one contiguous run (packed or holed masks), which the
    kernel cannot express."""
    if key_mask.dim() != 2:
        raise ValueError(f"key-padding mask must be 2-D (batch, keys), got shape {tuple(key_mask.shape)}")
    mask = key_mask.bool()
    count = mask.sum(dim=1)
    start = torch.where(count > 0, mask.int().argmax(dim=1), torch.zeros_like(count))
    end = start + count
    pos = torch.arange(mask.shape[1], device=mask.device)
    contiguous = mask == ((pos >= start[:, None]) & (pos < end[:, None]))
    if not bool(contiguous.all()):
        rows = (~contiguous.all(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"attention mask rows {rows[:8]} have padding between real tokens; the fused kernel needs each row's "
            "tokens to be one contiguous run (left- or right-padded). Use attn_implementation 'sdpa' for such masks."
        )
    return start.to(torch.int32), end.to(torch.int32)


def visibility_mask(
    batch: int,
    n_q: int,
    n_k: int,
    causal: bool,
    kv_start: torch.Tensor | None = None,
    kv_end: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B, 1, Nq, Nk) bool: True where query i may attend key j under the rules in the module docstring."""
    keys = torch.arange(n_k, device=device)
    visible = torch.ones(batch, 1, n_q, n_k, dtype=torch.bool, device=device)
    if kv_start is not None:
        visible &= (keys >= kv_start.to(device).view(-1, 1, 1, 1)) & (keys < kv_end.to(device).view(-1, 1, 1, 1))
    if causal:
        query_pos = torch.arange(n_q, device=device) + (n_k - n_q)
        visible &= keys[None, :] <= query_pos[:, None]
    return visible


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    kv_start: torch.Tensor | None = None,
    kv_end: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (output in q's dtype, log-sum-exp (B, H, Nq) in fp32, -inf on rows that see no key).

    Computed in fp32 and differentiable, so `torch.autograd.grad` through it gives the reference dQ, dK, dV."""
    batch, heads, n_q, dim = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    if heads % kv_heads:
        raise ValueError(f"query heads {heads} must be a multiple of key/value heads {kv_heads}")
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    group = heads // kv_heads
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = torch.matmul(q.float(), kf.transpose(-1, -2)) * scale
    visible = visibility_mask(batch, n_q, n_k, causal, kv_start, kv_end, device=q.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    seen = torch.isfinite(lse)
    # exp(score - lse) is the softmax; rows that see nothing get weight 0 everywhere instead of NaN
    probs = torch.exp(scores - torch.where(seen, lse, 0.0)[..., None]) * seen[..., None]
    out = torch.matmul(probs, vf)
    return out.to(q.dtype), lse
