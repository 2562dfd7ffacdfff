"""The Triton kernel against the pure-torch reference and PyTorch SDPA: outputs, LSE and dQ/dK/dV on odd shapes.

Runs where Triton can: under TRITON_INTERPRET=1 on the CPU (`make test` starts a second pytest process for the
`triton` marker with it set; it must be set before the kernels are imported) or on a CUDA device.

Tolerances are absolute + relative (|err| <= t * (1 + |ref|)), per dtype, against the reference computed in fp32
from the same inputs: fp32 1e-5 (output) and 1e-4 (gradients); fp16 2e-3 and 1e-2; bf16 2e-2 and 6e-2 (bf16 keeps
8 bits of mantissa). Worst errors measured over CASES under the interpreter, as t: fp32 5e-7 and 1e-6, fp16 2.8e-4
and 1.1e-3, bf16 5.1e-3 and 1.1e-2.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels import fused_attention as op
from kernels.reference import attention_reference, key_ranges_from_mask, visibility_mask

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(
        not (op.INTERPRET or torch.cuda.is_available()),
        reason="needs a GPU or TRITON_INTERPRET=1 set before import (make test runs these that way)",
    ),
]
DEVICE = "cuda" if torch.cuda.is_available() and not op.INTERPRET else "cpu"
TOL = {  # dtype: ((atol, rtol) for outputs, (atol, rtol) for gradients)
    torch.float32: ((1e-5, 1e-5), (1e-4, 1e-4)),
    torch.float16: ((2e-3, 2e-3), (1e-2, 1e-2)),
    torch.bfloat16: ((2e-2, 2e-2), (6e-2, 6e-2)),
}
# (batch, heads, kv heads, query length, key length, head dim, causal, padded)
CASES = [
    (1, 2, 2, 1, 1, 32, True, False),  # a single token
    (2, 4, 2, 17, 17, 64, True, True),  # GQA 4:2, one row right-padded, one left-padded
    (2, 8, 1, 17, 17, 32, False, True),  # GQA 8:1, bidirectional (a vision tower's layout), padded
    (2, 4, 2, 100, 100, 32, True, True),  # many blocks, partial last block
    (1, 4, 4, 100, 100, 80, False, False),  # head dim 80 (not a power of two)
    (2, 8, 1, 1, 40, 96, True, True),  # decoding: one query against a padded KV cache, head dim 96
    (1, 2, 1, 17, 50, 128, True, False),  # a chunk of queries after a cache (Nq < Nk), head dim 128
]


def _case_id(case) -> str:
    batch, heads, kv_heads, n_q, n_k, dim, causal, padded = case
    return (
        f"b{batch}h{heads}:{kv_heads}_q{n_q}k{n_k}_d{dim}_{'causal' if causal else 'full'}{'_pad' if padded else ''}"
    )


def _inputs(case, dtype, seed=0):
    batch, heads, kv_heads, n_q, n_k, dim, causal, padded = case
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype).requires_grad_()

    q, k, v = rand(batch, heads, n_q, dim), rand(batch, kv_heads, n_k, dim), rand(batch, kv_heads, n_k, dim)
    kv_start = kv_end = None
    if padded:  # row 0 right-padded by 3, row 1 left-padded by 5 (as TRL's collators lay them out)
        kv_start = torch.tensor([0, min(5, n_k - 1)][:batch], dtype=torch.int32)
        kv_end = torch.tensor([max(n_k - 3, 1), n_k][:batch], dtype=torch.int32)
    return q, k, v, causal, kv_start, kv_end


def _close(actual, expected, tol, what):
    atol, rtol = tol
    err = (actual.float() - expected.float()).abs().max().item()
    assert torch.allclose(actual.float(), expected.float(), atol=atol, rtol=rtol), f"{what}: max error {err:.3g}"


def _grads(out, tensors, seed=1):
    gen = torch.Generator().manual_seed(seed)
    d_out = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    return torch.autograd.grad(out, tensors, d_out)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference_fp32(case):
    q, k, v, causal, kv_start, kv_end = _inputs(case, torch.float32)
    out, lse = op.fused_attention_with_lse(q, k, v, causal, None, kv_start, kv_end)
    ref, ref_lse = attention_reference(q, k, v, causal, None, kv_start, kv_end)
    out_tol, grad_tol = TOL[torch.float32]
    _close(out, ref, out_tol, "output")
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))  # the same rows see no key
    seen = torch.isfinite(ref_lse)
    _close(lse[seen], ref_lse[seen], out_tol, "log-sum-exp")
    for name, got, want in zip("qkv", _grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        assert torch.isfinite(got).all()
        _close(got, want, grad_tol, f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", [CASES[1], CASES[5]], ids=["gqa_padded", "decode"])
def test_half_precision_matches_reference(case, dtype):
    q, k, v, causal, kv_start, kv_end = _inputs(case, dtype)
    out = op.fused_attention(q, k, v, causal, None, kv_start, kv_end)
    ref, _ = attention_reference(q, k, v, causal, None, kv_start, kv_end)
    assert out.dtype == dtype
    out_tol, grad_tol = TOL[dtype]
    _close(out, ref, out_tol, "output")
    for name, got, want in zip("qkv", _grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        assert got.dtype == dtype
        _close(got, want, grad_tol, f"d{name}")


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[6]], ids=["causal_gqa_padded", "full_8to1", "chunk"])
def test_matches_sdpa(case):
    """Against torch's own attention with an explicit boolean mask and enable_gqa, on rows that see some key."""
    q, k, v, causal, kv_start, kv_end = _inputs(case, torch.float32)
    visible = visibility_mask(q.shape[0], q.shape[2], k.shape[2], causal, kv_start, kv_end, device=DEVICE)
    out = op.fused_attention(q, k, v, causal, None, kv_start, kv_end)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=q.shape[1] != k.shape[1])
    rows = visible.any(-1).squeeze(1)  # (B, Nq); SDPA leaves rows with nothing visible undefined
    out_tol, grad_tol = TOL[torch.float32]
    _close(out.transpose(1, 2)[rows], ref.transpose(1, 2)[rows], out_tol, "output")
    d_out = torch.randn_like(out) * rows[:, None, :, None]
    got = torch.autograd.grad(out, (q, k, v), d_out)
    want = torch.autograd.grad(ref, (q, k, v), d_out)
    for name, g, w in zip("qkv", got, want):
        _close(g, w, grad_tol, f"d{name}")


def test_causal_unpadded_matches_sdpa_is_causal():
    q, k, v, *_ = _inputs((2, 4, 4, 33, 33, 64, True, False), torch.float32)
    out = op.fused_attention(q, k, v, causal=True)
    _close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), TOL[torch.float32][0], "output")


def test_rows_that_see_no_key_give_zeros_not_nan():
    """Left padding + causal: queries before a row's first real token see nothing; a fully padded row neither."""
    q, k, v, *_ = _inputs((3, 4, 2, 17, 17, 32, True, False), torch.float32)
    kv_start = torch.tensor([6, 0, 0], dtype=torch.int32)
    kv_end = torch.tensor([17, 0, 17], dtype=torch.int32)  # row 1: every key padded
    out = op.fused_attention(q, k, v, True, None, kv_start, kv_end)
    dq, dk, dv = _grads(out, (q, k, v))
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert out[0, :, :6].abs().max() == 0 and out[1].abs().max() == 0
    assert out[0, :, 6:].abs().min() > 0 and out[2].abs().sum() > 0
    assert dq[0, :, :6].abs().max() == 0 and dq[1].abs().max() == 0
    assert dk[0, :, :6].abs().max() == 0 and dv[1].abs().max() == 0  # padded keys get no gradient


def test_scale_is_honoured_and_transposed_layouts_work():
    """transformers hands over q as a (B, N, H, D) buffer seen as (B, H, N, D); the scale is not 1/sqrt(d)."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 20, 4, 32, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()
    k = torch.randn(2, 20, 2, 32, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()
    v = torch.randn(2, 20, 2, 32, generator=gen).to(DEVICE).transpose(1, 2).requires_grad_()
    scale = 0.3
    out = op.fused_attention(q, k, v, causal=True, scale=scale)
    ref, _ = attention_reference(q, k, v, causal=True, scale=scale)
    _close(out, ref, TOL[torch.float32][0], "output")
    default, _ = attention_reference(q, k, v, causal=True, scale=1 / math.sqrt(32))
    assert (out - default).abs().max() > 1e-2  # the scale made a difference
    assert out.transpose(1, 2).is_contiguous()  # the layout transformers returns, without a copy
    for name, got, want in zip("qkv", _grads(out, (q, k, v)), _grads(ref, (q, k, v))):
        assert got.stride() == {"q": q, "k": k, "v": v}[name].stride()
        _close(got, want, TOL[torch.float32][1], f"d{name}")


def test_ranges_past_the_keys_are_clamped():
    """kv_end beyond the keys (or kv_start below 0) must not turn zero-filled out-of-bounds loads into keys."""
    q, k, v, *_ = _inputs((2, 2, 2, 4, 4, 32, False, False), torch.float32)
    out = op.fused_attention(q, k, v, False, None, torch.tensor([-3, 1]), torch.tensor([6, 9]))
    ref, _ = attention_reference(q, k, v, False, None, torch.tensor([0, 1]), torch.tensor([4, 4]))
    _close(out, ref, TOL[torch.float32][0], "output")


def test_key_ranges_from_a_padding_mask_drive_the_kernel():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    kv_start, kv_end = key_ranges_from_mask(mask)
    q, k, v, *_ = _inputs((2, 2, 2, 6, 6, 32, True, False), torch.float32)
    out = op.fused_attention(q, k, v, True, None, kv_start, kv_end)
    ref, _ = attention_reference(q, k, v, True, None, kv_start, kv_end)
    _close(out, ref, TOL[torch.float32][0], "output")


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((1, 3, 4, 32), (1, 2, 4, 32)), "multiple of key/value heads"),
        (((1, 2, 4, 32), (1, 2, 4, 16)), "head_dim"),
        (((1, 2, 4, 512), (1, 2, 4, 512)), "256"),
    ],
)
def test_bad_shapes_are_named(shapes, message):
    q, k = (torch.zeros(s, device=DEVICE) for s in shapes)
    with pytest.raises(ValueError, match=message):
        op.fused_attention(q, k, k)
