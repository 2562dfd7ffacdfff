"""Plain DPO vs RLHF-V's DDPO on ToyWorld, on equal data (the same OPA-DPO rollouts and oracle corrections) and
equal steps, over seeds.

    python bench/opa_dpo.py                   # first: the base policies and the OPA data of each seed
    python bench/rlhf_v.py                    # seeds 0 1 2 → bench/results/rlhf_v.{json,md}
    python bench/rlhf_v.py --root runs/bench-rlhf-v-lr1e-4 --out bench/results/lr1e-4 optim.lr=1e-4
                                              # overrides go to every train run

Per seed S (each stage is skipped when its output already exists):
  align build-data configs/toy/preference_data.yaml opa_dataset=runs/bench-opa/seed-S/data/dataset
        policy=<base> output_dir=<root>/seed-S/pref                  (revision ≻ rollout, corrected sentences γ=5)
  align train configs/toy/dpo.yaml  model.name_or_path=<base> ... output_dir=<root>/seed-S/dpo
  align train configs/toy/ddpo.yaml model.name_or_path=<base> ... output_dir=<root>/seed-S/ddpo
with <base> = runs/bench-demo/seed-S/sft_base/final. Metrics are on the ToyWorld test split, POPE included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ("base", "dpo", "ddpo")
METRICS = [
    ("toyworld_chair", "chair_s", "CHAIR_s"),
    ("toyworld_chair", "chair_i", "CHAIR_i"),
    ("toyworld_chair", "recall", "recall"),
    ("toyworld_pope", "f1_mean", "POPE F1"),
]


def align(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "align.cli", *args], check=True)


def evaluated(checkpoint: Path) -> dict:
    results = checkpoint / "eval_results.json"
    if not results.is_file() or "toyworld_pope" not in json.loads(results.read_text()):
        align("eval", str(checkpoint))
    return json.loads(results.read_text())


def run_seed(seed: int, root: Path, overrides: list[str]) -> dict:
    base = Path("runs/bench-demo") / f"seed-{seed}" / "sft_base" / "final"
    opa_data = Path("runs/bench-opa") / f"seed-{seed}" / "data" / "dataset"
    if not (base / "config.json").is_file() or not (opa_data / "dataset_info.json").is_file():
        raise SystemExit(f"seed {seed}: run `python bench/opa_dpo.py --seeds {seed}` first ({base}, {opa_data})")
    work = root / f"seed-{seed}"
    if not (work / "pref" / "summary.json").is_file():
        align(
            "build-data",
            "configs/toy/preference_data.yaml",
            f"opa_dataset={opa_data}",
            f"policy={base}",
            f"output_dir={work / 'pref'}",
        )
    for name in ("dpo", "ddpo"):
        if not (work / name / "final" / "config.json").is_file():
            align(
                "train",
                f"configs/toy/{name}.yaml",
                f"model.name_or_path={base}",
                f"seed={seed}",
                f"data.world.seed={seed}",
                f"dataset={work / 'pref' / 'dataset'}",
                f"output_dir={work / name}",
                "eval_at_end=false",
                *overrides,
            )
    checkpoints = {"base": base, "dpo": work / "dpo" / "final", "ddpo": work / "ddpo" / "final"}
    return {"seed": seed, **{m: evaluated(c) for m, c in checkpoints.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default="runs/bench-rlhf-v")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("overrides", nargs="*", help="passed to both `align train` runs")
    args = ap.parse_args()
    runs = [run_seed(s, Path(args.root), args.overrides) for s in args.seeds]

    rows = ["| model | " + " | ".join(label for *_, label in METRICS) + " | CHAIR_i vs base |", "|---" * 6 + "|"]
    for model in MODELS:
        cells = []
        for bench, key, _ in METRICS:
            vals = [100 * r[model][bench][key] for r in runs]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {std:.1f}")
        change = [
            100 * (r[model]["toyworld_chair"]["chair_i"] / r["base"]["toyworld_chair"]["chair_i"] - 1) for r in runs
        ]
        cells.append(f"{statistics.mean(change):+.0f}% ({', '.join(f'{c:+.0f}%' for c in change)})")
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    table = "\n".join(rows) + f"\n\nseeds {args.seeds}; overrides {args.overrides}\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rlhf_v.json").write_text(json.dumps({"runs": runs, "overrides": args.overrides}, indent=2))
    (out / "rlhf_v.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
