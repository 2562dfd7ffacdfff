"""Fact-RLHF on ToyWorld over seeds: the reward model with and without facts, PPO on each, GRPO on the oracle.

    python bench/fact_rlhf.py                       # seeds 0 1 2 → bench/results/fact_rlhf.{json,md,png}
    python bench/fact_rlhf.py --seeds 1             # one seed (stages already done are skipped; run the
                                                    # whole command afterwards for the tables)

Per seed S, with <base> = runs/bench-demo/seed-S/sft_base/final (`python bench/opa_dpo.py` or `align demo
--base-only --seed S --workdir runs/bench-demo/seed-S` makes it) and every stage skipped when its output exists:
  align build-data configs/toy/reward_pairs.yaml policy=<base> ...   4 captions per training image, oracle-ranked
  align train configs/toy/reward_model.yaml ...                 the fact-augmented RM (the image's ground truth)
  align train configs/toy/reward_model.yaml facts=false ...     the plain RM, same pairs and settings
  align train configs/toy/ppo.yaml reward_model_path=<rm_facts> PPO, the value model from the same RM
  align train configs/toy/ppo.yaml reward_model_path=<rm_plain> the same on the plain RM
  ... kl_coef=0.01 optim.max_steps=300                         both again with a weak KL, 3x longer (hacking)
  align train configs/toy/grpo.yaml ...                         GRPO on the oracle reward
  align train configs/toy/rloo.yaml ...                         RLOO on the oracle reward
PPO samples 32 captions a step for 100 steps, GRPO and RLOO 16 for 200: equal rollouts (3,200 captions). Metrics are on
the ToyWorld test split with POPE; the hacking curve is each PPO run's rollout RM score against the oracle's
CHAIR_i of the same captions, step by step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from machine import machine_info  # noqa: E402  (this script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from align.eval.seeds import mean_std  # noqa: E402

# PPO arms: (reward model, overrides). The weak-KL arms train 3x longer with a tenth of LLaVA-RLHF's KL
# coefficient: there the policy can drift far enough from its start to find what the reward model gets wrong.
PPO_ARMS = {
    "ppo_facts": ("rm_facts", []),
    "ppo_plain": ("rm_plain", []),
    "ppo_facts_weak_kl": ("rm_facts", ["kl_coef=0.01", "optim.max_steps=300"]),
    "ppo_plain_weak_kl": ("rm_plain", ["kl_coef=0.01", "optim.max_steps=300"]),
}
MODELS = ("base", *PPO_ARMS, "grpo_oracle", "rloo_oracle")
METRICS = [
    ("toyworld_chair", "chair_s", "CHAIR_s"),
    ("toyworld_chair", "chair_i", "CHAIR_i"),
    ("toyworld_chair", "recall", "recall"),
    ("toyworld_pope", "f1_mean", "POPE F1"),
    ("toyworld_pope_adversarial", "f1", "F1 adv"),
]


def align(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "align.cli", *args], check=True)


def evaluated(checkpoint: Path) -> dict:
    results = checkpoint / "eval_results.json"
    if not results.is_file() or "toyworld_pope" not in json.loads(results.read_text()):
        align("eval", str(checkpoint))
    return json.loads(results.read_text())


def train(config: str, out: Path, *overrides: str) -> dict:
    if not (out / "train_summary.json").is_file():
        align("train", config, f"run.output_dir={out}", "run.eval_at_end=false", *overrides)
    return json.loads((out / "train_summary.json").read_text())


def run_seed(seed: int, root: Path) -> dict:
    base = Path("runs/bench-demo") / f"seed-{seed}" / "sft_base" / "final"
    if not (base / "config.json").is_file():
        raise SystemExit(f"seed {seed}: no base policy at {base}; run `python bench/opa_dpo.py --seeds {seed}` first")
    work = root / f"seed-{seed}"
    if not (work / "pairs" / "summary.json").is_file():
        align("build-data", "configs/toy/reward_pairs.yaml", f"policy={base}", f"world.seed={seed}", f"seed={seed}",
              f"output_dir={work / 'pairs'}")  # fmt: skip
    common = [f"model.name_or_path={base}", f"run.seed={seed}", f"data.world.seed={seed}"]
    rm = {}
    for name, facts in (("rm_facts", "true"), ("rm_plain", "false")):
        rm[name] = train("configs/toy/reward_model.yaml", work / name, *common, f"facts={facts}",
                         f"dataset={work / 'pairs' / 'dataset'}")  # fmt: skip
    runs = {}
    for name, (rm_name, overrides) in PPO_ARMS.items():
        reward_model = f"reward_model_path={work / rm_name / 'final'}"
        runs[name] = train("configs/toy/ppo.yaml", work / name, *common, reward_model, *overrides)
    runs["grpo_oracle"] = train("configs/toy/grpo.yaml", work / "grpo_oracle", *common)
    runs["rloo_oracle"] = train("configs/toy/rloo.yaml", work / "rloo_oracle", *common)
    checkpoints = {"base": base, **{name: work / name / "final" for name in runs}}
    return {
        "seed": seed,
        "rm_accuracy": {name: s["held_out"]["pair_accuracy"] * 100 for name, s in rm.items()},
        "metrics": {name: flat(evaluated(path)) for name, path in checkpoints.items()},
        "curves": {name: curve(runs[name]["log_history"]) for name in PPO_ARMS},
        "seconds": {name: s["seconds"] for name, s in {**rm, **runs}.items()},
    }


def flat(results: dict) -> dict:
    return {label: results[bench][key] * 100 for bench, key, label in METRICS}


def curve(history: list[dict]) -> dict:
    steps = [e for e in history if "reward/score" in e]
    return {k: [round(e[k], 3) for e in steps] for k in ("reward/score", "oracle/chair_i", "oracle/recall", "kl")}


def smooth(values: list[float], window: int = 9) -> list[float]:
    half = window // 2
    return [statistics.fmean(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


def hacking_plot(per_seed: list[dict], out: Path) -> None:
    """Per PPO arm: the RM score (left axis) against the oracle's CHAIR_i and recall of the same rollouts (right
    axis) over the steps, mean over seeds."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    titles = {"ppo_facts": "fact-augmented RM, KL 0.1", "ppo_plain": "plain RM, KL 0.1",
              "ppo_facts_weak_kl": "fact-augmented RM, KL 0.01", "ppo_plain_weak_kl": "plain RM, KL 0.01"}  # fmt: skip
    for ax, name in zip(axes.flat, PPO_ARMS, strict=True):
        keys = ("reward/score", "oracle/chair_i", "oracle/recall")
        series = {k: [statistics.fmean(v) for v in zip(*(s["curves"][name][k] for s in per_seed))] for k in keys}
        steps = range(1, len(series["reward/score"]) + 1)
        ax.plot(steps, smooth(series["reward/score"]), color="tab:blue")
        ax.set(title=f"PPO, {titles[name]}", xlabel="PPO step")
        ax.set_ylabel("RM score of the rollouts", color="tab:blue")
        right = ax.twinx()
        right.plot(steps, smooth(series["oracle/chair_i"]), color="tab:red", label="oracle CHAIR_i")
        right.plot(steps, smooth(series["oracle/recall"]), color="tab:green", linestyle="--", label="oracle recall")
        right.set_ylabel("% of the same rollouts (oracle)")
        right.set_ylim(0, 80)
        right.legend(loc="best", fontsize=8)
    fig.suptitle(f"Reward hacking: RM score vs the oracle (T = 1 rollouts; mean of {len(per_seed)} seeds, "
                 "moving average of 9 steps)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def curve_summary(per_seed: list[dict], name: str) -> dict:
    """Per seed, then mean ± std: the rollouts' RM score, oracle CHAIR_i and recall over the first and the last 10
    steps, CHAIR_i's lowest (9-step moving average) on the way, and the correlation of score and CHAIR_i."""
    rows = []
    for s in per_seed:
        c = s["curves"][name]
        score, chair, recall = c["reward/score"], c["oracle/chair_i"], c["oracle/recall"]
        first, last = (lambda v: statistics.fmean(v[:10])), (lambda v: statistics.fmean(v[-10:]))
        rows.append({"score_first": first(score), "score_last": last(score), "chair_first": first(chair),
                     "chair_lowest": min(smooth(chair)), "chair_last": last(chair), "recall_first": first(recall),
                     "recall_last": last(recall), "corr": statistics.correlation(score, chair)})  # fmt: skip
    return {k: mean_std([r[k] for r in rows]) for k in rows[0]}


def report(per_seed: list[dict], out: Path) -> str:
    fmt = lambda ms: f"{ms[0]:.1f} ± {ms[1]:.1f}"  # noqa: E731
    seeds = ", ".join(str(s["seed"]) for s in per_seed)
    lines = [f"Fact-RLHF on ToyWorld, seeds {seeds} (test split; mean ± std over seeds)", "",
             "| reward model | held-out pair accuracy | per seed |", "|---|---|---|"]  # fmt: skip
    for name in ("rm_facts", "rm_plain"):
        values = [s["rm_accuracy"][name] for s in per_seed]
        lines.append(f"| {name} | {fmt(mean_std(values))} | {', '.join(f'{v:.1f}' for v in values)} |")
    header = "| model | " + " | ".join(label for _, _, label in METRICS) + " |"
    lines += ["", header, "|---" * (len(METRICS) + 1) + "|"]
    for model in MODELS:
        cells = [fmt(mean_std([s["metrics"][model][label] for s in per_seed])) for _, _, label in METRICS]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Rollouts (T = 1) over PPO: first 10 steps → last 10 steps (CHAIR_i: → its lowest → the last)", ""]
    lines += ["| PPO run | RM score | oracle CHAIR_i | oracle recall | corr(score, CHAIR_i) |", "|---" * 5 + "|"]
    for name in PPO_ARMS:
        c = curve_summary(per_seed, name)
        score = f"{c['score_first'][0]:.2f} → {c['score_last'][0]:.2f}"
        chair = f"{c['chair_first'][0]:.1f} → {c['chair_lowest'][0]:.1f} → {c['chair_last'][0]:.1f}"
        recall = f"{c['recall_first'][0]:.1f} → {c['recall_last'][0]:.1f}"
        lines.append(f"| {name} | {score} | {chair} | {recall} | {c['corr'][0]:.2f} ± {c['corr'][1]:.2f} |")
    lines += ["", f"Hacking curve: {out.with_suffix('.png').name}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/bench-fact-rlhf")
    parser.add_argument("--out", default="bench/results/fact_rlhf")
    args = parser.parse_args()
    per_seed = [run_seed(seed, Path(args.root)) for seed in args.seeds]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    hacking_plot(per_seed, out.with_suffix(".png"))
    table = report(per_seed, out)
    out.with_suffix(".md").write_text(table)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine_info(), "seeds": per_seed}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
