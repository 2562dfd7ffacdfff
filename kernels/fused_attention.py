"""Triton fused attention (FlashAttention-2 style): forward with online softmax, backward recomputing P.

    from kernels.fused_attention import fused_attention
    out = fused_attention(q, k, v, causal=True, scale=None, kv_start=None, kv_end=None)   # (B, H, Nq, D)

Same semantics as `kernels.reference.attention_reference` (read its docstring): grouped-query attention without
expanding K/V, per-row key ranges for left/right padding, bottom-right causal alignment, zeros for rows that see
no key. Any Nq/Nk (1 included) and head dims up to 256 (padded to a power of two inside the kernel).

Precision: scores, softmax statistics and accumulators are fp32. fp16/bf16 inputs feed `tl.dot` in their own type
on a GPU; under TRITON_INTERPRET=1 every load is upcast to fp32 first, because the interpreter computes bf16
arithmetic on raw bits (wrong answers, no error).

This module is the op: launch code (grids, strides, per-dtype constexprs), the autograd Function and the public
functions. The @triton.jit kernels (forward; backward delta, dK/dV and dQ), their shared jit helpers and autotuning
candidates, and INTERPRET (TRITON_INTERPRET, read once at import) are in `kernels.fused_attention_kernels`;
INTERPRET and the candidate lists are re-exported here.
"""

from __future__ import annotations

import math

import torch
import triton

from kernels.fused_attention_kernels import (
    DKDV_CONFIGS,
    DQ_CONFIGS,
    FWD_CONFIGS,
    INTERPRET,
    _attn_bwd_delta,
    _attn_bwd_dkdv,
    _attn_bwd_dq,
    _attn_fwd,
)

__all__ = [  # INTERPRET and the candidate lists are re-exported from the kernels module
    "DKDV_CONFIGS", "DQ_CONFIGS", "FWD_CONFIGS", "INTERPRET", "LOG2E",
    "FusedAttentionFunction", "check_inputs", "fused_attention", "fused_attention_with_lse",
]  # fmt: skip
LOG2E = 1.4426950408889634


def _launch_args(q: torch.Tensor, k: torch.Tensor, kv_start, kv_end, causal: bool) -> dict:
    batch, heads, n_q, dim = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    has_ranges = kv_start is not None
    upcast = INTERPRET or q.dtype == torch.float32
    return dict(
        KV_START=kv_start if has_ranges else q,  # never read without ranges; any pointer will do
        KV_END=kv_end if has_ranges else q,
        H=heads,
        GROUP=heads // kv_heads,
        N_Q=n_q,
        N_K=n_k,
        LEN_BUCKET=triton.next_power_of_2(max(n_q, n_k)),
        HEAD_DIM=dim,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
        CAUSAL=causal,
        HAS_RANGES=has_ranges,
        UPCAST=upcast,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 inputs keep fp32 accuracy on a GPU
    )


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) contiguous, or the (B, N, H, D) buffer transformers passes seen as (B, H, N, D): both dense, so
    empty_like keeps their strides, which the backward kernels assume gradients share with their inputs."""
    return t if t.is_contiguous() or t.transpose(1, 2).is_contiguous() else t.contiguous()


def _forward(q, k, v, kv_start, kv_end, causal: bool, scale: float):
    batch, heads, n_q, dim = q.shape
    # (B, Nq, H, D) storage seen as (B, H, Nq, D): transformers wants the transposed layout, now free of a copy
    out = torch.empty(batch, n_q, heads, dim, device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty(batch, heads, n_q, device=q.device, dtype=torch.float32)
    args = _launch_args(q, k, kv_start, kv_end, causal)

    def grid(meta):
        return triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads

    _attn_fwd[grid](
        q, k, v, out, lse, qk_scale=scale * LOG2E,
        s_qb=q.stride(0), s_qh=q.stride(1), s_qm=q.stride(2), s_kb=k.stride(0), s_kh=k.stride(1),
        s_kn=k.stride(2), s_vb=v.stride(0), s_vh=v.stride(1), s_vn=v.stride(2), s_ob=out.stride(0),
        s_oh=out.stride(1), s_om=out.stride(2), **args,
    )  # fmt: skip
    return out, lse


def _backward(q, k, v, out, lse, d_out, kv_start, kv_end, causal: bool, scale: float):
    batch, heads, n_q, _ = q.shape
    kv_heads, n_k = k.shape[1], k.shape[2]
    d_out = d_out if d_out.stride(-1) == 1 else d_out.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    args = _launch_args(q, k, kv_start, kv_end, causal)
    delta = torch.empty(batch, heads, n_q, device=q.device, dtype=torch.float32)
    block = 32 if INTERPRET else 64
    _attn_bwd_delta[(triton.cdiv(n_q, block), batch * heads)](
        out, d_out, delta, *_strides(out), *_strides(d_out), heads, n_q,
        HEAD_DIM=args["HEAD_DIM"], BLOCK_D=args["BLOCK_D"], BLOCK_M=block,
    )  # fmt: skip
    common = dict(
        qk_scale=scale * LOG2E, sm_scale=scale,
        s_qb=q.stride(0), s_qh=q.stride(1), s_qm=q.stride(2), s_kb=k.stride(0), s_kh=k.stride(1),
        s_kn=k.stride(2), s_vb=v.stride(0), s_vh=v.stride(1), s_vn=v.stride(2), s_db=d_out.stride(0),
        s_dh=d_out.stride(1), s_dm=d_out.stride(2), **args,
    )  # fmt: skip

    def grid_kv(meta):
        return triton.cdiv(n_k, meta["BLOCK_N"]), batch * kv_heads

    def grid_q(meta):
        return triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads

    _attn_bwd_dkdv[grid_kv](q, k, v, d_out, lse, delta, dk, dv, **common)
    _attn_bwd_dq[grid_q](q, k, v, d_out, lse, delta, dq, **common)
    return dq, dk, dv


class FusedAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kv_start, kv_end, causal: bool, scale: float):
        out, lse = _forward(q, k, v, kv_start, kv_end, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse, kv_start, kv_end)
        ctx.causal, ctx.scale = causal, scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, d_out, _d_lse):
        q, k, v, out, lse, kv_start, kv_end = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, d_out, kv_start, kv_end, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None, None, None


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_start, kv_end) -> None:
    """Shape, dtype and device checks with messages that say what was passed."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected 4-D (batch, heads, seq, head_dim) q/k/v, got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch or head_dim")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}")
    if q.shape[3] > 256:
        raise ValueError(f"head_dim {q.shape[3]} > 256 is not supported")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"q/k/v must share one of fp32/fp16/bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    if (kv_start is None) != (kv_end is None):
        raise ValueError("give both kv_start and kv_end, or neither")
    if kv_start is not None and (kv_start.shape != (q.shape[0],) or kv_end.shape != (q.shape[0],)):
        raise ValueError(f"kv_start/kv_end must have shape ({q.shape[0]},), got {kv_start.shape}, {kv_end.shape}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v are on different devices: {q.device}, {k.device}, {v.device}")


def fused_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    kv_start: torch.Tensor | None = None,
    kv_end: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (B, H, Nq, D), natural-log LSE (B, H, Nq) fp32, -inf where a row sees no key); output differentiable."""
    out, lse2 = _apply(q, k, v, causal, scale, kv_start, kv_end)
    return out, torch.where(torch.isinf(lse2), float("-inf"), lse2 / LOG2E)


def fused_attention(q, k, v, causal: bool = False, scale: float | None = None, kv_start=None, kv_end=None):
    """Attention output (B, H, Nq, D); see the module docstring. Differentiable in q, k and v.

    The output is a (B, Nq, H, D) buffer seen as (B, H, Nq, D), the layout transformers returns, so
    `out.transpose(1, 2)` is contiguous; call `.contiguous()` before `.view` on the (B, H, Nq, D) form."""
    return _apply(q, k, v, causal, scale, kv_start, kv_end)[0]


def _apply(q, k, v, causal, scale, kv_start, kv_end):
    check_inputs(q, k, v, kv_start, kv_end)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if kv_start is not None:
        kv_start = kv_start.to(device=q.device, dtype=torch.int32).contiguous()
        kv_end = kv_end.to(device=q.device, dtype=torch.int32).contiguous()
    return FusedAttentionFunction.apply(_dense(q), _dense(k), _dense(v), kv_start, kv_end, bool(causal), scale)
