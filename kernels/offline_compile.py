"""Compile the attention kernels for a GPU architecture without a GPU, and read their register use.

Triton's front end, its LLVM and the bundled ptxas need no driver, so a CPU machine can build the exact cubin a
GPU would run. That catches what the interpreter cannot (it never type-checks or lowers anything: a branch that
yields a constexpr on one side and a tensor on the other runs there and fails to compile), and it shows
registers and spills per config, which is how the autotuning candidates in `fused_attention_kernels` were chosen.

    from kernels.offline_compile import compile_kernel, resource_usage
    usage = resource_usage(compile_kernel("fwd", "bf16", head_dim=128, config=(128, 64, 8, 3)))
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime import Autotuner

from kernels import fused_attention_kernels as jit  # the @triton.jit kernels kernels.fused_attention launches

KERNELS = {"fwd": jit._attn_fwd, "dkdv": jit._attn_bwd_dkdv, "dq": jit._attn_bwd_dq, "delta": jit._attn_bwd_delta}
CANDIDATES = {"fwd": jit.FWD_CONFIGS, "dkdv": jit.DKDV_CONFIGS, "dq": jit.DQ_CONFIGS, "delta": [(64, 0, 4, 1)]}
_TENSORS = ("Q", "K", "V", "OUT", "DO", "DQ", "DK", "DV")
_STATS = ("LSE", "DELTA")
_RANGES = ("KV_START", "KV_END")
_FLOATS = ("qk_scale", "sm_scale")
_CONSTEXPRS = ("HEAD_DIM", "BLOCK_D", "CAUSAL", "HAS_RANGES", "UPCAST", "PRECISION", "BLOCK_M", "BLOCK_N")


def _signature(fn, dtype: str) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in _STATS:
            sig[name] = "*fp32"
        elif name in _RANGES:
            sig[name] = "*i32"
        elif name in _FLOATS:
            sig[name] = "fp32"
        elif name in _CONSTEXPRS:
            sig[name] = "constexpr"
        elif name in _TENSORS:
            sig[name] = f"*{dtype}"
        else:  # strides, sizes
            sig[name] = "i32"
    return sig


def compile_kernel(
    kernel: str,
    dtype: str,
    head_dim: int,
    config: tuple[int, int, int, int],
    causal: bool = True,
    has_ranges: bool = True,
    arch: int = 90,
):
    """The compiled kernel `kernel` ("fwd", "dkdv", "dq" or "delta") for inputs of `dtype` ("fp16", "bf16",
    "fp32"), with config (BLOCK_M, BLOCK_N, warps, stages), for CUDA compute capability `arch` (80 = A100,
    90 = H100/H200)."""
    if jit.INTERPRET:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces the kernels that would be compiled")
    fn = KERNELS[kernel]
    fn = fn.fn if isinstance(fn, Autotuner) else fn  # the JIT function
    block_m, block_n, warps, stages = config
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
        "CAUSAL": causal,
        "HAS_RANGES": has_ranges,
        "UPCAST": dtype == "fp32",
        "PRECISION": "ieee" if dtype == "fp32" else "tf32",
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
    }
    source = ASTSource(
        fn=fn,
        signature=_signature(fn, dtype),
        constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items() if k in fn.arg_names},
    )
    return triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages}
    )


def resource_usage(compiled) -> dict[str, int]:
    """Registers per thread, spilled bytes (stack) and shared memory, read from the cubin with Triton's bundled
    cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        report = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", report)
    if not found:
        raise RuntimeError(f"no resource line in cuobjdump's report:\n{report}")
    return {"registers": int(found[1]), "spill_bytes": int(found[2]), "shared_bytes": compiled.metadata.shared}
