"""HallE-Switch on ToyWorld over seeds: CHAIR against the switch value ε for the controller (W alone, and W with a
LoRA), the control tokens and the indication variant.

    python bench/halle.py                  # seeds 0 1 2 → bench/results/halle.{json,md,png}
    python bench/halle.py --seeds 1        # one seed (runs already finished are kept)

Per seed S, with <base> = runs/bench-demo/seed-S/sft_base/final (`python bench/opa_dpo.py --seeds S` or `align demo
--base-only --seed S --workdir runs/bench-demo/seed-S` makes it), each arm is one command whose run directory ends
with switch_sweep.json (the final model scored at each ε on the 300 test images, greedy captions):
  align train configs/toy/halle_switch.yaml model.name_or_path=<base> run.seed=S data.world.seed=S [arm overrides]
The controller at ε = 0 is the base model exactly (align/core/switch.py), so its ε = 0 row is the base's figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from machine import machine_info  # this script's folder is on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from align.eval.plots import plot_switch_sweep  # noqa: E402
from align.eval.seeds import mean_std  # noqa: E402

ARMS = {
    "controller": [],
    "controller_lora": ["lora=true"],
    "control_tokens": ["variant=control_tokens", "lora=true", "sweep=[-1.0,0.0,1.0]"],
    "indication": ["variant=indication", "lora=true"],
}
METRICS = [("chair_i", "CHAIR_i"), ("chair_s", "CHAIR_s"), ("recall", "recall"), ("length", "length")]


def run_arm(seed: int, arm: str, work: Path) -> dict:
    base = Path("runs/bench-demo") / f"seed-{seed}" / "sft_base" / "final"
    if not (base / "config.json").is_file():
        raise SystemExit(f"seed {seed}: no base policy at {base}; run `python bench/opa_dpo.py --seeds {seed}` first")
    out = work / f"seed-{seed}" / arm
    if not (out / "train_summary.json").is_file():
        overrides = [f"model.name_or_path={base}", f"run.seed={seed}", f"data.world.seed={seed}"]
        subprocess.run([sys.executable, "-m", "align.cli", "train", "configs/toy/halle_switch.yaml",
                        f"run.output_dir={out}", *overrides, *ARMS[arm]], check=True)  # fmt: skip
    summary = json.loads((out / "train_summary.json").read_text())
    rows = json.loads((out / "switch_sweep.json").read_text())["rows"]
    chair = [r["results"]["toyworld_chair"] for r in rows]
    return {"seconds": summary["seconds"], "rows": [{"switch": r["switch"], **c} for r, c in zip(rows, chair)]}


def pct(values: list[float]) -> str:
    m, s = mean_std([100 * v for v in values])
    return f"{m:.1f} ± {s:.1f}"


def sweep_table(per_seed: list[dict], arm: str) -> list[str]:
    lines = [f"**{arm}**", "", "| ε | " + " | ".join(label for _, label in METRICS) + " | CHAIR_i per seed |"]
    lines.append("|---" * (len(METRICS) + 2) + "|")
    for i, row in enumerate(per_seed[0]["arms"][arm]["rows"]):
        at = [s["arms"][arm]["rows"][i] for s in per_seed]
        cells = [pct([r[k] for r in at]) if k != "length" else "{:.1f} ± {:.1f}".format(*mean_std([r[k] for r in at]))
                 for k, _ in METRICS]  # fmt: skip
        seeds = ", ".join(f"{100 * r['chair_i']:.1f}" for r in at)
        lines.append(f"| {row['switch']} | " + " | ".join(cells) + f" | {seeds} |")
    return lines + [""]


def targets(per_seed: list[dict]) -> list[str]:
    """The issue's targets, per seed, for the controller (W alone): CHAIR_i monotone in ε; at ε = -1 ≥ 40% below
    the base at recall within 5 points; at ε = +1 recall at least the base's."""
    lines = ["| seed | CHAIR_i monotone in ε | ε=-1: CHAIR_i change | ε=-1: recall change | ε=+1: recall change |",
             "|---|---|---|---|---|"]  # fmt: skip
    for s in per_seed:
        rows = {r["switch"]: r for r in s["arms"]["controller"]["rows"]}
        chair = [rows[e]["chair_i"] for e in sorted(rows)]
        base = rows[0.0]
        monotone = all(a <= b for a, b in zip(chair, chair[1:]))
        drop = 100 * (rows[-1.0]["chair_i"] / base["chair_i"] - 1)
        lines.append(f"| {s['seed']} | {'yes' if monotone else 'no'} | {drop:+.0f}% | "
                     f"{100 * (rows[-1.0]['recall'] - base['recall']):+.1f} | "
                     f"{100 * (rows[1.0]['recall'] - base['recall']):+.1f} |")  # fmt: skip
    return lines + [""]


def indication_table(per_seed: list[dict]) -> list[str]:
    at = [s["arms"]["indication"]["rows"][0] for s in per_seed]
    base = [next(r for r in s["arms"]["controller"]["rows"] if r["switch"] == 0.0) for s in per_seed]
    lines = ["| model | CHAIR_i (marks read as mentions) | CHAIR_i without the [marked] | CHAIR_s without | recall "
             "| [marked] per caption | marked that are absent |", "|---" * 7 + "|"]  # fmt: skip
    for name, rows in (("base", base), ("indication", at)):
        lines.append(f"| {name} | {pct([r['chair_i'] for r in rows])} | {pct([r['chair_i_marked'] for r in rows])} "
                     f"| {pct([r['chair_s_marked'] for r in rows])} | {pct([r['recall'] for r in rows])} | "
                     f"{statistics.fmean(r['bracketed'] for r in rows):.2f} | "
                     f"{pct([r['bracketed_absent_share'] for r in rows])} |")  # fmt: skip
    return lines + [""]


def report(per_seed: list[dict]) -> str:
    seeds = ", ".join(str(s["seed"]) for s in per_seed)
    lines = [
        f"HallE-Switch on ToyWorld, seeds {seeds} (test split, 300 images; mean ± std over seeds, rates in %)",
        "",
    ]
    lines += ["Targets, controller (W alone):", ""] + targets(per_seed)
    for arm in ("controller", "controller_lora", "control_tokens"):
        lines += sweep_table(per_seed, arm)
    lines += ["**indication** (parametric objects written [object] in training)", ""] + indication_table(per_seed)
    secs = {arm: mean_std([s["arms"][arm]["seconds"] for s in per_seed]) for arm in ARMS}
    lines += ["Seconds per run (training + sweep): " + ", ".join(f"{a} {m:.0f}" for a, (m, _) in secs.items())]
    return "\n".join(lines) + "\n"


def plot(per_seed: list[dict], out: Path) -> None:
    means, stds = {}, {}
    for arm in ("controller", "controller_lora", "control_tokens"):
        rows = per_seed[0]["arms"][arm]["rows"]
        means[arm], stds[arm] = [], []
        for i, row in enumerate(rows):
            at = [s["arms"][arm]["rows"][i] for s in per_seed]
            ms = {k: mean_std([r[k] for r in at]) for k in ("chair_i", "recall", "length")}
            means[arm].append({"switch": row["switch"], **{k: m for k, (m, _) in ms.items()}})
            stds[arm].append({"switch": row["switch"], **{k: s for k, (_, s) in ms.items()}})
    plot_switch_sweep(means, out, bands=stds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--root", default="runs/bench-halle")
    parser.add_argument("--out", default="bench/results/halle")
    args = parser.parse_args()
    per_seed = [{"seed": s, "arms": {a: run_arm(s, a, Path(args.root)) for a in args.arms}} for s in args.seeds]
    if set(args.arms) != set(ARMS):
        return  # a partial run only trains; the tables need every arm
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(per_seed, out.with_suffix(".png"))
    table = report(per_seed)
    out.with_suffix(".md").write_text(table)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine_info(), "seeds": per_seed}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
