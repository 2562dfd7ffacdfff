"""The Triton fused attention against PyTorch SDPA and FlexAttention on LLaVA-1.5-like shapes; a correctness sweep
where there is no GPU.

    python bench/attention.py                   # CUDA: the full grid → bench/results/attention.{csv,json}
    python bench/attention.py --batch 4 --seq 2048 --head-dim 128 --no-padding --repeats 50
    python bench/attention.py --quick           # a few shapes (without a GPU: the interpreter, < 30 s)
    python bench/attention.py --check           # the correctness sweep, on the GPU when there is one

With a CUDA device (timings, in one run for the three backends):
  ours         kernels.fused_attention.fused_attention (per-row key ranges for padding, GQA without expansion)
  sdpa(flash)  F.scaled_dot_product_attention under sdpa_kernel(FLASH_ATTENTION), is_causal, enable_gqa; unpadded
               shapes only, since the flash backend takes no mask
  sdpa(mask)   padded shapes: SDPA with the boolean mask of kernels.reference.visibility_mask under PyTorch's own
               backend choice (the note column names it). For GQA, K/V are expanded inside the timed call (as
               transformers' repeat_kv does) when enable_gqa would send the masked call to the MATH backend.
  flex         torch.compile(flex_attention) with a create_block_mask mask_mod: causal & per-row key range
  Grid: --batch x --heads x --head-dim x --seq x {unpadded, padded} with kv heads = heads, plus GQA cases
  (heads : --gqa-kv-heads) at the first batch size and largest head dim. Causal self-attention (Nq = Nk = seq,
  of which 576 would be image tokens: irrelevant to attention). Padded: each row's real length drawn uniformly in
  [60%, 100%] of seq (seed 0), even rows right-padded, odd rows left-padded.
  Modes: fwd (inputs require grad, as in training), bwd (backward of one retained graph), fwd+bwd. Each time is
  the median over --repeats calls, measured with CUDA events after --warmup untimed calls (the first call, which
  autotunes or compiles, is not timed either).
  FLOPs count the (query, key) pairs that are actually visible under the causal and padding mask, P (summed over
  batch rows and heads): fwd = 4*P*D (two matmuls), bwd = 2.5 x fwd, fwd+bwd = 3.5 x fwd; the same count for
  every backend, so TFLOP/s compare like times do (for an unpadded causal shape P = B*H*N*(N+1)/2).
  A backend that cannot run a shape (no kernel, out of memory, compile error) is recorded as unavailable.

Without CUDA (or with --check) there are no timings: our output and dQ/dK/dV are compared with
kernels.reference.attention_reference (fp32 math) and with SDPA (on query rows that see at least one key) over a
sweep of lengths 1, 17, 100, 130 (Nq = Nk, decoding Nq = 1 and chunked Nq < Nk), GQA 4:2 and 8:1, head dims 32 to
128, causal or not, padded or not, fp32 and a subset in fp16/bf16. Without a GPU the kernels run under
TRITON_INTERPRET=1 (set here before Triton is imported; about 1000x slower than SDPA, so the sweep is small).
Errors are max |ours - theirs| / (1 + |theirs|), as in tests/kernels/test_fused_attention.py: absolute for
values below 1, relative above (a bf16 gradient of 6 is only known to +-0.03). The exit status is 1 when one
exceeds its tolerance: outputs fp32 1e-5, fp16 2e-3, bf16 2e-2; gradients fp32 1e-4, fp16 1e-2, bf16 6e-2.

CSV (--out), one row per measurement:
  device, dtype, batch, heads, kv_heads, head_dim, seq_q, seq_k, causal, padded   the case
  backend      ours | sdpa(flash) | sdpa(mask) | flex
  mode         fwd | bwd | fwd+bwd (timings) or check (the correctness sweep)
  ms, tflops   median time and the FLOPs above divided by it; empty when unavailable or in check rows
  ours_speedup this backend's ms / our ms (> 1: ours is faster); 1 on our rows
  compared_to  what the err_* columns compare our results with: on a timing row, that row's backend (forward
               output only, one run); on a check row, reference or sdpa
  err_out, err_dq, err_dk, err_dv   ours vs compared_to over query rows that see a key: on timing rows (err_out
               only) max |ours - theirs|; on check rows the scaled error above
  tol_out, tol_grad, ok             check rows: the tolerances and whether every error is within them
  note         the SDPA backend actually selected, or why a backend is unavailable
Next to it, <out>.json holds the GPU name, torch/triton/CUDA versions, the command line and the failure count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

# The correctness sweep, the timings and what they share are siblings in bench/ (attention_check, attention_timing,
# attention_common), importable because `python bench/attention.py` puts the script's directory on sys.path.
from attention_check import run_checks
from attention_common import CsvOut
from attention_timing import run_benchmark

# Triton and kernels.* are imported inside functions, never at the top (nor at the top of the attention_* modules):
# TRITON_INTERPRET must be set before the first `import triton` when there is no GPU, and whether there is one is only
# known in main().


def write_environment(csv_path: Path, device_name: str, started: float, failures: int, mode: str) -> None:
    import triton

    info = {
        "mode": mode,
        "device": device_name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "failures": failures,
        "csv": csv_path.name,
    }
    csv_path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--heads", type=int, nargs="+", default=[32], help="query heads (= kv heads outside GQA cases)")
    ap.add_argument("--gqa-kv-heads", type=int, default=8, help="kv heads of the GQA cases; 0: none")
    ap.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--no-padding", action="store_true", help="unpadded shapes only")
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16", help="of the timings (the sweep mixes)")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per measurement (median)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls before them (at least 1)")
    ap.add_argument("--quick", action="store_true", help="a few shapes only (GPU: b4 d128 n1024; CPU: 5 cases)")
    ap.add_argument("--check", action="store_true", help="run the correctness sweep even on a GPU")
    ap.add_argument("--out", type=Path, default=Path("bench/results/attention.csv"))
    args = ap.parse_args()
    args.warmup = max(args.warmup, 1)  # the first backward autotunes (ours) or compiles (flex): never time it
    if args.quick:
        args.batch, args.head_dim, args.seq = args.batch[:1], [max(args.head_dim)], args.seq[:1]
    return args


def main() -> int:
    args = parse_args()
    started = time.time()
    has_gpu = torch.cuda.is_available()
    interpret = not has_gpu or os.environ.get("TRITON_INTERPRET") == "1"
    if not has_gpu:
        print("No CUDA GPU present: timings are skipped. Correctness sweep only, kernels under TRITON_INTERPRET=1.")
        os.environ["TRITON_INTERPRET"] = "1"  # before the first import of triton (kernels.* imports it)
    elif interpret:
        print("TRITON_INTERPRET=1 is set: timings would measure the interpreter. Correctness sweep only, on the CPU.")

    from kernels import fused_attention as op

    if op.INTERPRET != interpret:
        raise SystemExit(f"triton was imported before TRITON_INTERPRET could be set (INTERPRET={op.INTERPRET})")
    checking = interpret or args.check
    device = "cpu" if interpret else "cuda"
    device_name = "cpu (TRITON_INTERPRET=1)" if interpret else torch.cuda.get_device_name()
    out = CsvOut(args.out)
    try:
        failures = (run_checks if checking else run_benchmark)(args, device, device_name, out)
    finally:
        out.close()
    write_environment(args.out, device_name, started, failures, "check" if checking else "benchmark")
    what = "cases over tolerance" if checking else "shapes where ours failed"
    print(f"{failures} {what}; {time.time() - started:.0f} s → {args.out}, {args.out.with_suffix('.json')}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
