"""POPE (Li et al. 2023): yes/no questions about object presence on COCO val2014 images, in three splits.

Data: the POPE question files `coco_pope_{adversarial,popular,random}.json` (JSONL lines
`{question_id, image, text, label}`), given as their directory or as one file; the split is the last
`_`-separated part of the file name. The splits differ in how the absent objects were sampled.

Ids: question_id restarts at 1 in every split, so an item's id is `split/question_id`. Outputs keyed by the bare
question_id (LLaVA's answer files) are matched when one split is scored (`split=...`, `--split`). To score several
splits from one outputs file, key its lines `split/question_id` or give each line a `category` field naming
its split (see `read_outputs`).

Scoring is the official one (`metrics.parse_yes_no`): keep the text before the first '.', drop commas, answer
"no" if a word is 'No', 'no' or 'not', else "yes". Metrics are per split with yes as the positive class. The
yes-ratio counts *predicted* yes, so a model biased towards "yes" shows it (lmms-eval counts the labels, which
is always about 0.5). LLaVA-1.5 reports the mean F1 over the three splits: `f1_mean`.
"""

from __future__ import annotations

from pathlib import Path

from align.eval.benchmarks.base import Benchmark, read_json_lines
from align.eval.metrics import parse_yes_no, pope

SPLITS = ("adversarial", "popular", "random")
# LLaVA-1.5's short-answer instruction, the prompt its POPE numbers were measured with
PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
FILE_GLOB = "coco_pope_*.json"


def split_of(path: Path) -> str:
    """`coco_pope_adversarial.json` → "adversarial"."""
    return path.stem.rsplit("_", 1)[-1]


def question_files(data: Path, split: str | None) -> list[tuple[str, Path]]:
    """(split, file) pairs to load: the one file given, or the matching files of a directory."""
    data = Path(data)
    if data.is_file():
        if split is not None and split != split_of(data):
            raise ValueError(f"{data} holds the {split_of(data)!r} split, not {split!r}")
        return [(split_of(data), data)]
    if not data.is_dir():
        raise FileNotFoundError(f"{str(data)!r} does not exist: give the POPE question files' directory or one file")
    found = {split_of(p): p for p in sorted(data.glob(FILE_GLOB))}
    if not found:
        raise FileNotFoundError(f"{data} holds no {FILE_GLOB} question files (POPE repository, output/coco/)")
    if split is None:
        return sorted(found.items())
    if split not in found:
        raise FileNotFoundError(f"{data} has no {split!r} split; it has {', '.join(sorted(found))}")
    return [(split, found[split])]


def load(data: Path, split: str | None = None) -> list[dict]:
    """Every question of the chosen split(s), with the LLaVA-1.5 prompt."""
    items = []
    for name, path in question_files(data, split):
        for lineno, q in read_json_lines(path):
            if not isinstance(q, dict) or not {"question_id", "text", "label"} <= q.keys():
                raise ValueError(f"{path}:{lineno}: a POPE question needs question_id, text and label")
            if q["label"] not in ("yes", "no"):
                raise ValueError(f"{path}:{lineno}: label must be 'yes' or 'no', not {q['label']!r}")
            items.append(
                {
                    "id": f"{name}/{q['question_id']}",
                    "bare_id": str(q["question_id"]),
                    "image": q.get("image"),
                    "prompt": q["text"] + PROMPT_SUFFIX,
                    "question": q["text"],
                    "label": q["label"],
                    "split": name,
                }
            )
    return items


def score(item: dict, output: str) -> dict:
    pred = parse_yes_no(output)
    return {"split": item["split"], "label": item["label"], "pred": pred, "correct": pred == item["label"]}


def aggregate(records: list[dict]) -> dict:
    """Per split: accuracy, precision, recall, F1, yes-ratio, n; then the means over the splits scored."""
    out: dict = {}
    for split in sorted({r["split"] for r in records}):
        rows = [r for r in records if r["split"] == split]
        # the parsed "yes"/"no" pass through parse_yes_no unchanged, so metrics.pope can take them as answers
        m = pope([r["pred"] for r in rows], [r["label"] for r in rows])
        out[split] = {**m, "n": len(rows)}
    splits = [v for v in out.values() if isinstance(v, dict)]
    if splits:
        out["f1_mean"] = sum(m["f1"] for m in splits) / len(splits)
        out["accuracy_mean"] = sum(m["accuracy"] for m in splits) / len(splits)
    return out


BENCHMARK = Benchmark(
    name="pope",
    description="POPE object-presence yes/no questions (COCO), official answer parsing, mean F1 over splits",
    load=load,
    generation={"max_new_tokens": 16, "do_sample": False},
    score=score,
    aggregate=aggregate,
    splits=SPLITS,
    headline=(("", "f1_mean", "F1"), ("adversarial", "f1", "F1 adv")),
)
