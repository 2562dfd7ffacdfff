"""Registers, spills and shared memory of every autotuning candidate of the attention kernels, compiled for a GPU
on this machine (no GPU needed; see kernels/offline_compile.py). Spilled registers go to slow local memory, so a
candidate that spills is unlikely to win; this is how the candidate lists were picked without a GPU.

    python bench/attention_registers.py [--arch 90] [--dtype bf16] [--head-dims 64 128]

Writes bench/results/attention_registers.csv and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.offline_compile import CANDIDATES, compile_kernel, resource_usage  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability: 80 (A100), 90 (H100/H200)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--out", default="bench/results/attention_registers.csv")
    args = parser.parse_args()

    rows, t0 = [], time.time()
    header = ["kernel", "D", "BM", "BN", "warps", "stages", "regs", "spill B", "smem KB"]
    print(" ".join(f"{h:>7}" for h in header))
    for kernel, candidates in CANDIDATES.items():
        for head_dim in args.head_dims:
            for config in candidates:
                usage = resource_usage(compile_kernel(kernel, args.dtype, head_dim, config, arch=args.arch))
                row = dict(
                    zip(["kernel", "head_dim", "block_m", "block_n", "warps", "stages"], [kernel, head_dim, *config])
                )
                rows.append(row | usage | {"arch": args.arch, "dtype": args.dtype})
                values = [kernel, head_dim, *config, usage["registers"], usage["spill_bytes"]]
                print(" ".join(f"{v:>7}" for v in values), f"{usage['shared_bytes'] / 1024:7.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} compiles in {time.time() - t0:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
