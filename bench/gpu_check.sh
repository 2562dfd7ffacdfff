#!/usr/bin/env bash
# bash bench/gpu_check.sh [OUT_DIR]
# What to run when a GPU is lent (<= 8 minutes on one GPU, no download), each part under its own time limit, one
# JSON of the figures at the end (OUT_DIR/gpu_check.json, default bench/results/gpu_check/):
#   1. the Triton kernel tests on CUDA (tests/kernels -m triton)
#   2. bench/attention.py --quick: our kernel against SDPA (flash) and flex at b4 d128 n1024, fwd/bwd times
#   3. bench/gpu_dpo_check.py: 20 DPO steps on a tiny LLaVA with triton_fused and with sdpa: the same losses (1e-3)
#      and each backend's steps/s
# A part that fails is recorded with its exit status; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu_check}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true

timeout 180 "$PY" -m pytest -q -m triton tests/kernels > "$OUT/kernel_tests.log" 2>&1
KERNEL_TESTS=$?
timeout 150 "$PY" bench/attention.py --quick --out "$OUT/attention.csv" > "$OUT/attention.log" 2>&1
ATTENTION=$?
timeout 150 "$PY" bench/gpu_dpo_check.py --out "$OUT/dpo.json" > "$OUT/dpo.log" 2>&1
DPO=$?

"$PY" - "$OUT" "$KERNEL_TESTS" "$ATTENTION" "$DPO" <<'PYEOF'
import csv, json, sys
from pathlib import Path
out, kernel, attention, dpo = Path(sys.argv[1]), *map(int, sys.argv[2:])
def read(path, load):
    try:
        return load(path)
    except (OSError, ValueError):
        return None
tail = lambda p: (read(p, lambda f: f.read_text().splitlines()[-1:]) or [""])[0]
report = {
    "gpu": read(out / "gpu.txt", lambda f: f.read_text().strip()),
    "kernel_tests": {"exit": kernel, "summary": tail(out / "kernel_tests.log")},
    "attention": {"exit": attention, "rows": read(out / "attention.csv", lambda f: list(csv.DictReader(f.open())))},
    "dpo": {"exit": dpo, **(read(out / "dpo.json", lambda f: json.loads(f.read_text())) or {})},
}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps({k: (v if k == "gpu" else {"exit": v["exit"]}) for k, v in report.items()}, indent=2))
PYEOF
exit $(( KERNEL_TESTS || ATTENTION || DPO ))
