"""Is the evidence in the image? A linear probe on each base policy's frozen image tokens against the policy's own
answers to the same POPE questions (ToyWorld test split), per seed and as mean ± std.

    python bench/demo.py --base-only                  # trains the base policies (runs/bench-demo/seed-S)
    python bench/toyworld_probe.py                    # seeds 0 1 2 → bench/results/toyworld_probe.{json,md}
    python bench/toyworld_probe.py --runs runs/demo   # any demo workdirs (their sft_base/final)

The probe is a logistic regression per class on each projector output token, the same for every token, fitted to
what each token's grid cell holds in the training split; an image holds a class when its best token says so
(align/eval/probe.py). "hard" questions are those about a faint object (positives) or about an
absent object typical of the scene (negatives), where the language prior and the pixels disagree most often. The
policy's answers are read from the checkpoint's eval generations (`align demo` writes them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_info  # noqa: E402  (this script's folder is on sys.path)

from align.core.models import load_policy  # noqa: E402
from align.eval import probe  # noqa: E402
from align.eval.metrics import parse_yes_no  # noqa: E402
from align.eval.runner import run_data_config  # noqa: E402
from align.eval.seeds import mean_std  # noqa: E402
from data_builders import toyworld as tw  # noqa: E402
from data_builders.toyworld_data import build_toyworld, objects_from_json, pope_rows  # noqa: E402

SUBSETS = ("adversarial", "all", "hard")


def policy_answers(checkpoint: Path) -> dict[tuple[str, str, str], str]:
    """(image_id, question, split) → the policy's answer, from the eval generations of `align demo`."""
    path = checkpoint / "eval_generations.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `align eval {checkpoint}` (or the demo) first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["image_id"], r["prompt"], r["split"]): r["answer"] for r in rows if "answer" in r}


def hard(row: dict, objects: list[tw.SceneObject], scene: str, world: tw.WorldConfig) -> bool:
    if row["label"] == "yes":
        return any(o.faint and o.name == row["object"] for o in objects)
    return row["object"] in world.typical(scene)


def measure(workdir: Path) -> dict:
    checkpoint = workdir / "sft_base" / "final"
    data_cfg = run_data_config(checkpoint)
    world = build_toyworld(data_cfg.world, data_cfg.cache_dir)
    model, processor = load_policy(checkpoint, device="cpu")
    features = probe.image_features(model, processor, world["train"])
    side = int(features.shape[1] ** 0.5)
    score = probe.fit_probe(features, probe.cell_labels(world["train"]["objects"], side))
    test = world["test"]
    logits = score(probe.image_features(model, processor, test))
    answers = policy_answers(checkpoint)
    objects = [objects_from_json(x) for x in test["objects"]]
    rows = pope_rows(test)
    groups: dict[str, list[int]] = {s: [] for s in SUBSETS}
    for i, r in enumerate(rows):
        groups["all"].append(i)
        if r["split"] == "adversarial":
            groups["adversarial"].append(i)
        if hard(r, objects[r["image_index"]], test["scene"][r["image_index"]], data_cfg.world):
            groups["hard"].append(i)
    probe_yes = [bool(logits[r["image_index"], tw.CLASSES.index(r["object"])] > 0) for r in rows]
    ids = test["image_id"]
    policy_yes = [parse_yes_no(answers[(ids[r["image_index"]], r["question"], r["split"])]) == "yes" for r in rows]
    truth = probe.presence_labels(test["objects"])
    per_class = {
        tw.CLASSES[c]: probe.yes_no_scores(
            (logits[:, c] > 0).tolist(), ["yes" if t else "no" for t in truth[:, c].tolist()]
        )["balanced_accuracy"]
        for c in range(len(tw.CLASSES))
        if truth[:, c].any()  # a class this world never draws (the small ones of a v1 world) has no score
    }
    worst = min(per_class, key=per_class.get)
    out = {
        "workdir": str(workdir),
        "questions": {s: len(ix) for s, ix in groups.items()},
        "probe_per_class": {
            "mean_balanced_accuracy": statistics.mean(per_class.values()),
            "min": per_class[worst],
            "worst_class": worst,
            "balanced_accuracy": per_class,
        },
    }
    for name, yes in (("probe", probe_yes), ("policy", policy_yes)):
        out[name] = {
            s: probe.yes_no_scores([yes[i] for i in ix], [rows[i]["label"] for i in ix]) for s, ix in groups.items()
        }
    return out


def spread(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.1f} ± {std:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", default="runs/bench-demo", help="folder of the seed-S demo workdirs")
    ap.add_argument("--runs", nargs="+", default=None, help="demo workdirs instead of --root/seed-S")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    workdirs = [Path(w) for w in args.runs] if args.runs else [Path(args.root) / f"seed-{s}" for s in args.seeds]
    results = [measure(w) for w in workdirs]
    lines = [
        "| questions | metric | who | " + " | ".join(w.name for w in workdirs) + " | mean ± std |",
        "|---" * (4 + len(workdirs)) + "|",
    ]
    for subset in SUBSETS:
        for metric in ("balanced_accuracy", "f1"):
            for who in ("probe", "policy"):
                vals = [100 * r[who][subset][metric] for r in results]
                cells = " | ".join(f"{v:.1f}" for v in vals)
                lines.append(f"| {subset} | {metric} | {who} | {cells} | {spread(vals)} |")
    for key in ("mean_balanced_accuracy", "min"):
        vals = [100 * r["probe_per_class"][key] for r in results]
        cells = " | ".join(f"{v:.1f}" for v in vals)
        label = "mean over classes" if key.startswith("mean") else "worst class"
        lines.append(f"| every test image | balanced_accuracy ({label}) | probe | {cells} | {spread(vals)} |")
    worst = " | ".join(r["probe_per_class"]["worst_class"] for r in results)
    lines.append(f"| every test image | the worst class | probe | {worst} | |")
    table = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "toyworld_probe.json").write_text(json.dumps({"runs": results, "machine": machine_info()}, indent=2))
    (out / "toyworld_probe.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
