"""`align eval <reward model>`: a saved reward model's pair accuracy on a preference dataset, and its scores of a
file of (image, prompt, response[, facts]) rows.

    align eval runs/reward_model/final --pairs runs/reward_pairs/dataset        # accuracy and margin
    align eval runs/reward_model/final --pairs runs/reward_pairs/dataset --other-facts   # does it read its facts?
    align eval runs/reward_model/final --score rows.jsonl                        # rows.jsonl.rewards.jsonl

A row of the --score file: {"image": path (relative to the file's folder), "prompt": str, "response": str,
"facts": [str, ...] (for a reward model trained with facts), "id": optional}. A bad row (not JSON, a missing
field, an image that does not open) is written back with its error instead of a score, and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from PIL import Image

from data_builders.captions import record_facts
from data_builders.io import load_preference_dataset
from data_builders.progress import bar
from rewards.model import load_reward_model, score

RESULTS_FILE = "reward_eval.json"


def is_reward_model(path: str | Path) -> bool:
    return (Path(path) / "reward_config.json").is_file()


def pair_accuracy(
    rm_path: str | Path, pairs: str | Path, limit: int | None = None, batch_size: int = 16, other_facts: bool = False
) -> dict:
    """Share of pairs whose chosen answer scores above the rejected one (ties count half), the mean margin, and
    the pairs left out (a fact-reading model skips pairs without facts). Written to <rm>/reward_eval.json.

    `other_facts`: each pair is read with the next pair's facts (another image's): how far the accuracy falls
    says how much the model reads its facts."""
    model, processor, config = load_reward_model(rm_path)
    dataset = load_preference_dataset(pairs)
    rows, skipped = [], Counter()
    for record in dataset.select(range(min(limit or len(dataset), len(dataset)))):
        facts = record_facts(record) if config["facts"] else None
        if config["facts"] and not facts:
            skipped["no_facts"] += 1
            continue
        rows.append((record["image"].convert("RGB"), record["prompt"], record["chosen"], record["rejected"], facts))
    if not rows:
        raise ValueError(f"{pairs}: no pair to score (skipped: {dict(skipped)})")
    if other_facts and config["facts"]:
        rows = [(*row[:4], rows[(i + 1) % len(rows)][4]) for i, row in enumerate(rows)]
    margins = []
    for start in bar(range(0, len(rows), batch_size), desc="score pairs"):
        chunk = rows[start : start + batch_size]
        images, prompts, chosen, rejected, facts = (list(c) for c in zip(*chunk, strict=True))
        good = score(model, processor, images, prompts, chosen, facts if config["facts"] else None, batch_size)
        bad = score(model, processor, images, prompts, rejected, facts if config["facts"] else None, batch_size)
        margins += [g - b for g, b in zip(good, bad, strict=True)]
    accuracy = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(margins)
    result = {"pairs": str(pairs), "scored": len(margins), "skipped": dict(skipped), "facts": config["facts"],
              "other_facts": other_facts, "pair_accuracy": accuracy,
              "mean_margin": sum(margins) / len(margins)}  # fmt: skip
    name = RESULTS_FILE.replace(".json", "_other_facts.json") if other_facts else RESULTS_FILE
    (Path(rm_path) / name).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _row(line: str, folder: Path, reads_facts: bool) -> dict:
    row = json.loads(line)
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("image", "prompt", "response") if not isinstance(row.get(k), str)]
    if reads_facts and not isinstance(row.get("facts"), list):
        missing.append("facts")
    if missing:
        raise ValueError(f"missing or not text: {', '.join(missing)}")
    with Image.open(folder / row["image"]) as image:
        row["_image"] = image.convert("RGB")
    return row


def score_file(rm_path: str | Path, rows_file: str | Path, batch_size: int = 16) -> tuple[Path, dict]:
    """Score every row of a JSONL file; writes `<file>.rewards.jsonl` (each row with `reward`, or `error`)."""
    model, processor, config = load_reward_model(rm_path)
    rows_file = Path(rows_file)
    out = rows_file.with_name(rows_file.name + ".rewards.jsonl")
    rows, errors = [], []
    for n, line in enumerate(rows_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(_row(line, rows_file.parent, config["facts"]))
        except (ValueError, OSError) as err:  # json errors are ValueErrors; a missing or broken image an OSError
            errors.append({"line": n, "error": f"{type(err).__name__}: {err}"})
    rewards = []
    for start in bar(range(0, len(rows), batch_size), desc="score rows"):
        chunk = rows[start : start + batch_size]
        facts = [r["facts"] for r in chunk] if config["facts"] else None
        rewards += score(model, processor, [r["_image"] for r in chunk], [r["prompt"] for r in chunk],
                         [r["response"] for r in chunk], facts, batch_size)  # fmt: skip
    with out.open("w") as f:
        for row, reward in zip(rows, rewards, strict=True):
            f.write(json.dumps({**{k: v for k, v in row.items() if k != "_image"}, "reward": reward}) + "\n")
        for error in errors:
            f.write(json.dumps(error) + "\n")
    return out, {"scored": len(rewards), "errors": len(errors), "mean_reward": sum(rewards) / max(len(rewards), 1)}
