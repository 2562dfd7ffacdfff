"""OPA-DPO on ToyWorld over seeds: base policy vs OPA step vs OPA-DPO vs the off-policy DPO baseline, and the
OPA step trained on the reference answers alone (the ablation without on-policy corrections).

    python bench/opa_dpo.py                   # seeds 0 1 2 → bench/results/opa_dpo.{json,md}
    python bench/opa_dpo.py --root runs/bench-opa-lm --out bench/results/lm-only \
        model.lora_vision=false model.lora_projector=false opa.steps=600     # overrides go to every train run

Per seed S, with the toy configs as committed (each stage is skipped when its output already exists):
  align demo --seed S --workdir runs/bench-demo/seed-S                      (the base policy, as bench/demo.py)
  align build-data configs/toy/opa_dpo_data.yaml policy=<base> world.seed=S seed=S output_dir=<root>/seed-S/data
  align train configs/toy/opa_dpo.yaml model.name_or_path=<base> ... run.output_dir=<root>/seed-S/opa_dpo
  align train configs/toy/opa_dpo.yaml ... baseline=offpolicy run.output_dir=<root>/seed-S/offpolicy
  align train configs/toy/opa_dpo.yaml ... opa.answers=reference run.output_dir=<root>/seed-S/ref_only
The OPA-step model (<root>/seed-S/opa_dpo/opa/final) is scored too. Metrics are on the ToyWorld test split.
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

MODELS = ("base", "opa_step", "opa_dpo", "offpolicy_dpo", "reference_only_step")
METRICS = [("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("recall", "recall"), ("length", "length")]


def align(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "align.cli", *args], check=True)


def scores(checkpoint: Path) -> dict:
    if not (checkpoint / "eval_results.json").is_file():
        align("eval", str(checkpoint), "--no-pope")
    return json.loads((checkpoint / "eval_results.json").read_text())["toyworld_chair"]


def run_seed(seed: int, root: Path, overrides: list[str]) -> dict:
    demo = Path("runs/bench-demo") / f"seed-{seed}"
    if not (demo / "report.json").is_file():
        align("demo", "--base-only", "--seed", str(seed), "--workdir", str(demo))
    base, work = demo / "sft_base" / "final", root / f"seed-{seed}"
    t0 = time.time()
    if not (work / "data" / "summary.json").is_file():
        align(
            "build-data",
            "configs/toy/opa_dpo_data.yaml",
            f"policy={base}",
            f"world.seed={seed}",
            f"seed={seed}",
            f"output_dir={work / 'data'}",
        )
    common = [
        f"model.name_or_path={base}",
        f"run.seed={seed}",
        f"data.world.seed={seed}",
        f"dataset={work / 'data' / 'dataset'}",
        "run.eval_at_end=false",
        *overrides,
    ]
    runs = (
        ("opa_dpo", work / "opa_dpo" / "final", []),
        ("offpolicy", work / "offpolicy" / "final", ["baseline=offpolicy"]),
        ("ref_only", work / "ref_only" / "final", ["opa.answers=reference"]),  # its OPA step is scored
    )
    for name, done, extra in runs:
        if not (done / "config.json").is_file():
            align("train", "configs/toy/opa_dpo.yaml", *common, f"run.output_dir={work / name}", *extra)
    seconds = round(time.time() - t0, 1)
    checkpoints = {
        "base": base,
        "opa_step": work / "opa_dpo" / "opa" / "final",
        "opa_dpo": work / "opa_dpo" / "final",
        "offpolicy_dpo": work / "offpolicy" / "final",
        "reference_only_step": work / "ref_only" / "opa" / "final",
    }
    return {"seed": seed, "seconds": seconds, **{m: scores(c) for m, c in checkpoints.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default="runs/bench-opa")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("overrides", nargs="*", help="passed to every `align train configs/toy/opa_dpo.yaml`")
    args = ap.parse_args()
    runs = [run_seed(s, Path(args.root), args.overrides) for s in args.seeds]

    rows = ["| model | " + " | ".join(label for _, label in METRICS) + " | CHAIR_i vs base |", "|---" * 6 + "|"]
    for model in MODELS:
        cells = []
        for key, _ in METRICS:
            vals = [r[model][key] * (1 if key == "length" else 100) for r in runs]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {std:.1f}")
        change = [100 * (r[model]["chair_i"] / r["base"]["chair_i"] - 1) for r in runs if r["base"]["chair_i"]]
        cells.append(f"{statistics.mean(change):+.0f}% ({', '.join(f'{c:+.0f}%' for c in change)})")
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    table = "\n".join(rows) + f"\n\nseeds {args.seeds}; overrides {args.overrides}; "
    table += f"alignment stages took {[r['seconds'] for r in runs]} s\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "opa_dpo.json").write_text(json.dumps({"runs": runs, "machine": machine_info()}, indent=2))
    (out / "opa_dpo.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
