"""The kernels compile for real GPUs (A100 and H100 targets) in every dtype and mask variant, without a GPU: the
interpreter runs the kernels' Python, but only the compiler checks types and lowers them."""

from __future__ import annotations

import pytest

from kernels import fused_attention as op

pytestmark = pytest.mark.skipif(op.INTERPRET, reason="compiles the real kernels; the interpreter replaces them")


@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq", "delta"])
@pytest.mark.parametrize(
    "dtype, head_dim, causal, has_ranges, arch",
    [("bf16", 128, True, True, 90), ("fp16", 80, False, False, 80), ("fp32", 64, True, False, 90)],
)
def test_kernel_compiles_for_the_gpu(kernel, dtype, head_dim, causal, has_ranges, arch):
    from kernels.offline_compile import CANDIDATES, compile_kernel, resource_usage

    compiled = compile_kernel(kernel, dtype, head_dim, CANDIDATES[kernel][0], causal, has_ranges, arch)
    usage = resource_usage(compiled)
    assert 0 < usage["registers"] <= 255 and usage["shared_bytes"] > 0


def test_compiles_the_kernels_the_op_launches():
    """The op's kernels live in kernels.fused_attention_kernels; the op and the offline compiler see the same ones."""
    from kernels import fused_attention_kernels as jit
    from kernels.offline_compile import CANDIDATES, KERNELS

    launched = {"fwd": op._attn_fwd, "dkdv": op._attn_bwd_dkdv, "dq": op._attn_bwd_dq, "delta": op._attn_bwd_delta}
    assert all(KERNELS[name] is kernel for name, kernel in launched.items())
    assert [CANDIDATES[name] for name in ("fwd", "dkdv", "dq")] == [op.FWD_CONFIGS, op.DKDV_CONFIGS, op.DQ_CONFIGS]
    assert op.INTERPRET is jit.INTERPRET
