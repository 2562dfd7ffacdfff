"""Plain DPO vs RLHF-V's DDPO vs iterative RLAIF-V on ToyWorld, at equal prompts and equal steps, over seeds.

    python bench/opa_dpo.py                   # first: the base policies and the OPA data of each seed
    python bench/rlhf_v.py                    # seeds 0 1 2 → bench/results/rlhf_v.{json,md}
    python bench/rlhf_v.py --lr 3e-5 --steps 200 --root runs/bench-rlhf-v-mid --out bench/results/mid
    python bench/rlhf_v.py --no-rlaif-v ...   # SFT-on-chosen, DPO and DDPO only (RLAIF-V samples 4 captions an image)
    python bench/rlhf_v.py --no-rlaif-v --chosen reference ...   # the reference caption ≻ rollout instead

Per seed S, with <base> = runs/bench-demo/seed-S/sft_base/final (each stage is skipped when its output exists):
  align build-data configs/toy/preference_data.yaml opa_dataset=runs/bench-opa/seed-S/data/dataset ...
        → revision ≻ rollout pairs on the 3000 training images, corrected sentences γ=5 (DPO ignores the spans)
  align train configs/toy/dpo.yaml loss=sft ...   SFT on the chosen answers of the same pairs (the baseline)
  align train configs/toy/dpo.yaml  ...   plain DPO, --steps steps at --lr
  align train configs/toy/ddpo.yaml ...   DDPO, the same
  align train configs/toy/rlaif_v.yaml labeler=oracle ...  RLAIF-V: --rounds rounds of (sample 4 captions per
        training image with the current policy, check their claims, 2 pairs per image, DPO for steps/rounds steps)
  align train configs/toy/rlaif_v.yaml labeler=policy ...  the same with the policy as its own labeler
All use the same LoRA, β and batch. Metrics are on the ToyWorld test split, POPE included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from machine import machine_info  # noqa: E402  (this script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from align.eval.seeds import mean_std, verdict  # noqa: E402

MODELS = ("base", "sft_chosen", "dpo", "ddpo", "rlaif_v", "rlaif_v_self")
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


def run_seed(seed: int, root: Path, args) -> dict:
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
            *([f"chosen={args.chosen}", "spans=diff"] if args.chosen == "reference" else []),
        )
    common = [f"run.seed={seed}", "run.eval_at_end=false", f"optim.lr={args.lr}", f"optim.max_steps={args.steps}"]
    # SFT on the chosen answers: the dpo config with loss: sft, so the same pairs, LoRA, batches, lr and steps
    for name, config, extra in (("sft_chosen", "dpo", ["loss=sft"]), ("dpo", "dpo", []), ("ddpo", "ddpo", [])):
        if not (work / name / "final" / "config.json").is_file():
            align(
                "train",
                f"configs/toy/{config}.yaml",
                f"model.name_or_path={base}",
                f"data.world.seed={seed}",
                f"dataset={work / 'pref' / 'dataset'}",
                f"run.output_dir={work / name}",
                *common,
                *extra,
            )
    finals = {"base": base, **{name: work / name / "final" for name in ("sft_chosen", "dpo", "ddpo")}}
    for name, labeler in (("rlaif_v", "oracle"), ("rlaif_v_self", "policy")) if args.rlaif_v else ():
        run = work / name
        if not (run / "rounds.json").is_file():
            align(
                "train",
                "configs/toy/rlaif_v.yaml",
                f"policy={base}",
                f"seed={seed}",
                f"rounds={args.rounds}",
                f"output_dir={run}",
                f"data.world.seed={seed}",
                f"data.labeler={labeler}",
                f"train.data.world.seed={seed}",
                f"train.optim.lr={args.lr}",
                f"train.optim.max_steps={args.steps // args.rounds}",
                "train.run.eval_at_end=false",
            )
        rounds = json.loads((run / "rounds.json").read_text())
        finals[name] = Path(rounds["final"])
        data = [r["data"] for r in rounds["rounds"]]
        pairs = [d["pairs"]["kept"] for d in data]
        agreement = [d["labeler_agreement_with_truth"] for d in data]
        print(f"seed {seed} {name}: pairs per round {pairs}, labeler agreement with truth {agreement}")
    return {"seed": seed, **{m: evaluated(c) for m, c in finals.items()}}


def table(runs: list[dict]) -> str:
    """mean ± std per model, then CHAIR_i against the base and against SFT on the chosen answers: the mean change in
    points, per seed, and whether its 95% interval over the seeds excludes zero (align/eval/seeds.py)."""
    head = " | ".join(label for *_, label in METRICS)
    rows = [f"| model | {head} | CHAIR_i vs base (pts, per seed) | vs sft_chosen (pts) |", "|---" * 8 + "|"]
    for model in (m for m in MODELS if m in runs[0]):
        cells = []
        for bench, key, _ in METRICS:
            mean, std = mean_std([100 * r[model][bench][key] for r in runs])
            cells.append(f"{mean:.1f} ± {std:.1f}")
        for other in ("base", "sft_chosen"):
            d = [100 * (chair_i(r, model) - chair_i(r, other)) for r in runs]
            seeds = f" ({', '.join(f'{x:+.1f}' for x in d)})" if other == "base" else ""
            cells.append("" if model == other else f"{statistics.mean(d):+.1f}{seeds}: {verdict(d)}")
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def chair_i(run: dict, model: str) -> float:
    return run[model]["toyworld_chair"]["chair_i"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=1e-5, help="learning rate of every run (configs: 1e-5)")
    ap.add_argument("--steps", type=int, default=100, help="optimiser steps of every method (configs: 100)")
    ap.add_argument("--rounds", type=int, default=2, help="RLAIF-V rounds; each trains steps/rounds steps")
    ap.add_argument("--no-rlaif-v", dest="rlaif_v", action="store_false", help="skip both RLAIF-V runs")
    ap.add_argument(
        "--chosen",
        choices=("revision", "reference"),
        default="revision",
        help="chosen answer of the pairs: the oracle's revision of the rollout, or the reference caption (token-diff "
        "spans); SFT-on-chosen trains on the same",
    )
    ap.add_argument("--root", default="runs/bench-rlhf-v")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    if args.steps % args.rounds:
        raise SystemExit("--steps must be a multiple of --rounds (equal steps for every method)")
    runs = [run_seed(s, Path(args.root), args) for s in args.seeds]
    settings = {
        "seeds": args.seeds,
        "lr": args.lr,
        "steps": args.steps,
        "rounds": args.rounds if args.rlaif_v else None,
        "chosen": args.chosen,
    }
    text = table(runs) + f"\n\n{settings}\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rlhf_v.json").write_text(
        json.dumps({"runs": runs, "settings": settings, "machine": machine_info()}, indent=2)
    )
    (out / "rlhf_v.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
