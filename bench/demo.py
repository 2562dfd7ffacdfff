"""Wall time and peak memory of `align demo`, and the base policy's hallucination metrics over seeds.

    python bench/demo.py                      # seeds 0 1 2 → bench/results/demo.{json,md}
    python bench/demo.py --seeds 0            # one seed
    python bench/demo.py --base-only          # without the OPA-DPO stages → bench/results/demo_base.{json,md}

Each seed runs `align demo --seed S --workdir runs/bench-demo[-full]/seed-S` in a fresh process; its wall time and its
own peak RSS are kept in that workdir's bench.json, then the metrics are aggregated as mean ± std. The full demo
also reports each aligned model's CHAIR_i and recall (OPA step, OPA-DPO, the off-policy baseline). A rerun reuses
a finished seed's bench.json (its figures are the first run's); delete the workdir to measure again. The dataset
cache ($ALIGN_CACHE) is shared: point it at an empty folder to include the data build in the wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import machine_info  # noqa: E402  (this script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from align.eval.seeds import mean_std, verdict  # noqa: E402

METRICS = [
    ("toyworld_chair", "chair_s", "CHAIR_s", True),
    ("toyworld_chair", "chair_i", "CHAIR_i", True),
    ("toyworld_chair", "recall", "recall", True),
    ("toyworld_chair", "length", "length", False),
    ("toyworld_chair", "prior_share", "absent scene-typical share", True),
    ("toyworld_chair", "addition_share", "added-object share", True),
    ("toyworld_chair", "substitution_share", "misnamed-object share", True),
    ("toyworld_pope", "f1_mean", "POPE F1 (mean of 3)", True),
    ("toyworld_pope_adversarial", "f1", "POPE F1 adversarial", True),
    ("toyworld_pope", "yes_ratio_mean", "POPE yes-ratio", True),
]


MODEL_BENCHES = ("toyworld_chair", "toyworld_pope", "toyworld_pope_adversarial")
MODEL_METRICS = [m for m in METRICS if m[1] in ("chair_s", "chair_i", "recall", "prior_share", "f1")]


def model_summary(runs: list[dict]) -> dict:
    """{model: {"bench.metric": {values, mean, std}}} over the seeds, for every model the demo trained."""
    out = {}
    for name in runs[0].get("models", {}):
        out[name] = {}
        for bench, key, _, _ in MODEL_METRICS:
            vals = [r["models"][name][bench][key] for r in runs if bench in r["models"][name]]
            if len(vals) == len(runs):
                mean, std = mean_std(vals)
                out[name][f"{bench}.{key}"] = {"values": vals, "mean": mean, "std": std}
    return out


# Runs the demo as its only child and writes that child's peak RSS (KiB), so each seed's figure is its own:
# RUSAGE_CHILDREN in this process would be a running maximum over every seed run so far.
_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
)


def run_seed(seed: int, root: Path, extra: list[str]) -> dict:
    """Run (or reuse) one seed's demo; `extra` is passed to `align demo`."""
    workdir = root / f"seed-{seed}"
    measured = workdir / "bench.json"
    if measured.is_file():  # a rerun of the bench would only resume the demo: keep the first run's figures
        return json.loads(measured.read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    demo = [sys.executable, "-m", "align.cli", "demo", "--seed", str(seed), "--workdir", str(workdir), *extra]
    subprocess.run([sys.executable, "-c", _WRAPPER, str(workdir / "peak_rss_kb"), *demo], check=True)
    wall = time.time() - t0
    peak_mb = int((workdir / "peak_rss_kb").read_text()) / 1024
    report = json.loads((workdir / "report.json").read_text())
    result = {"seed": seed, "wall_seconds": round(wall, 1), "peak_rss_mb": round(peak_mb, 1), "report": report}
    compared = json.loads((workdir / "comparison.json").read_text())  # every model the demo trained, on the test split
    result["models"] = {name: {b: r[b] for b in MODEL_BENCHES if b in r} for name, r in compared.items()}
    measured.write_text(json.dumps(result, indent=2))
    return result


def fmt(values: list[float], pct: bool) -> str:
    scale = 100 if pct else 1
    mean, std = (scale * x for x in mean_std(values))
    return f"{mean:.1f} ± {std:.1f}" if pct else f"{mean:.2f} ± {std:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default=None, help="default: runs/bench-demo (--base-only), runs/bench-demo-full")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--base-only", action="store_true", help="time the demo without its OPA-DPO stages")
    ap.add_argument("overrides", nargs="*", help="passed to `align demo`")
    args = ap.parse_args()
    extra = (["--base-only"] if args.base_only else []) + args.overrides
    root = args.root or ("runs/bench-demo" if args.base_only else "runs/bench-demo-full")
    runs = [run_seed(s, Path(root), extra) for s in args.seeds]

    rows = [
        "| metric | " + " | ".join(f"seed {r['seed']}" for r in runs) + " | mean ± std |",
        "|---" * (len(runs) + 2) + "|",
    ]
    summary = {}
    for bench, key, label, pct in METRICS:
        vals = [r["report"][bench][key] for r in runs]
        mean, std = mean_std(vals)
        summary[f"{bench}.{key}"] = {"values": vals, "mean": mean, "std": std}
        cells = [f"{100 * v:.1f}" if pct else f"{v:.2f}" for v in vals]
        rows.append(f"| {label}{' (%)' if pct else ''} | " + " | ".join(cells) + f" | {fmt(vals, pct)} |")
    rows.append(
        "| demo wall time (s) | "
        + " | ".join(str(r["wall_seconds"]) for r in runs)
        + f" | {fmt([r['wall_seconds'] for r in runs], False)} |"
    )
    rows.append("| peak RSS (MB) | " + " | ".join(str(r["peak_rss_mb"]) for r in runs) + " | |")
    models = model_summary(runs)
    for name in list(models)[1:]:  # the full demo: each aligned model (the first is the base, above)
        for bench, key, label, _ in MODEL_METRICS:
            vals = models[name].get(f"{bench}.{key}", {}).get("values")
            if vals:
                cells = " | ".join(f"{100 * v:.1f}" for v in vals)
                rows.append(f"| {name}: {label} (%) | {cells} | {fmt(vals, True)} |")
        base = list(models)[0]
        for key, label in (("toyworld_chair.chair_i", "CHAIR_i"), ("toyworld_chair.recall", "recall")):
            d = [100 * (a - b) for a, b in zip(models[name][key]["values"], models[base][key]["values"])]
            cells = " | ".join(f"{x:+.1f}" for x in d)
            rows.append(f"| {name}: {label} − base (pts) | {cells} | {statistics.mean(d):+.1f}: {verdict(d)} |")
    table = "\n".join(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "demo_base" if args.base_only else "demo"
    (out / f"{name}.json").write_text(
        json.dumps(
            {"runs": runs, "summary": summary, "models": models, "seeds": args.seeds, "machine": machine_info()},
            indent=2,
        )
    )
    (out / f"{name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
