"""AMBER (Wang et al. 2023), discriminative part: yes/no questions on object existence, attributes and relations.

Only the discriminative task is implemented. The generative task (image descriptions scored by CHAIR, Cover,
Hal and Cog) needs noun tagging, WordNet lemmas and spaCy word vectors; it is a later step, and asking for
`split="generative"` says so. For the same reason the paper's AMBER score, ½·(100 − CHAIR + F1), is not
computed: it combines the generative CHAIR with the F1 here.

Data: AMBER's `data/` directory (or the repository root holding it): `annotations.json`, a list of
`{id, type, truth}` records, and `query/query_all.json` (or `query/query_discriminative.json`) with
`{id, image, query}`. Ids above 1004 are the yes/no questions. The dimension comes from the annotation type:
existence ("discriminative-hallucination"), attribute (state, number or action, kept as `subtype`) and
relation ("discriminative-relation" and "relation").

Scoring follows the reference evaluator: an answer counts only if it *equals* "Yes" or "No", with no stripping
or case folding, so "yes", "Yes." and "No, there is not" count as neither and are wrong. "No" is the positive
class: precision = correct "No" / answered "No", recall = correct "No" / questions whose truth is "no",
F1 = 2PR/(P+R+1e-4). The reference's printout differs by less than 0.1 point: its denominators start at
0.001, it rounds P and R to 0.1 before the F1, and its existence F1 uses 1e-3. Here rates are exact.

The official numbers assume bare "Yes"/"No" answers; the AMBER authors get them from open models by comparing
the logits of "Yes" and "No" (AMBER issue #2). For free-form generation, put an answer-format instruction in
SUFFIX. Each record also keeps a `lenient` answer parsed the POPE way (`metrics.parse_yes_no`), with lenient
accuracy and F1 beside the official ones, to show how much of a score is answer format.
"""

from __future__ import annotations

import json
from pathlib import Path

from align.eval.benchmarks.base import Benchmark
from align.eval.metrics import parse_yes_no

SUFFIX = ""  # appended to each query; empty keeps AMBER's own prompts
N_GENERATIVE = 1004  # ids 1..1004 are the generative descriptions
TYPES = {
    "discriminative-hallucination": ("existence", None),
    "discriminative-attribute-state": ("attribute", "state"),
    "discriminative-attribute-number": ("attribute", "number"),
    "discriminative-attribute-action": ("attribute", "action"),
    "discriminative-relation": ("relation", None),
    "relation": ("relation", None),
}
SPLITS = ("discriminative", "existence", "attribute", "relation")
EXACT = {"Yes": "yes", "No": "no"}
F1_EPS = 1e-4  # the reference's smoothing term


def _data_dir(data: Path) -> Path:
    data = Path(data)
    if not (data / "annotations.json").is_file() and (data / "data" / "annotations.json").is_file():
        return data / "data"  # the repository root was given
    if not (data / "annotations.json").is_file():
        raise FileNotFoundError(f"{data}/annotations.json not found: give AMBER's data/ directory")
    return data


def _queries(data: Path) -> list[dict]:
    for name in ("query_all.json", "query_discriminative.json"):
        if (data / "query" / name).is_file():
            return json.loads((data / "query" / name).read_text())
    raise FileNotFoundError(f"{data}/query/ holds neither query_all.json nor query_discriminative.json")


def load(data: Path, split: str | None = None) -> list[dict]:
    """The yes/no questions of one dimension, or of all (split None or "discriminative")."""
    if split == "generative":
        raise ValueError(
            "AMBER's generative task is not implemented yet (it needs nltk and spaCy word vectors); "
            f"the discriminative splits are {', '.join(SPLITS)}"
        )
    if split not in (None, *SPLITS):
        raise ValueError(f"unknown AMBER split {split!r}: use one of {', '.join(SPLITS)}")
    data = _data_dir(data)
    truth = {a["id"]: a for a in json.loads((data / "annotations.json").read_text())}
    items = []
    for q in _queries(data):
        if q["id"] not in truth:
            raise ValueError(f"{data}: query id {q['id']} has no annotation")
        a = truth[q["id"]]
        if a["type"] == "generative":
            continue
        if a["type"] not in TYPES:
            raise ValueError(f"{data}/annotations.json: id {a['id']} has unknown type {a['type']!r}")
        dimension, subtype = TYPES[a["type"]]
        if split in (None, "discriminative", dimension):
            items.append(
                {
                    "id": str(q["id"]),
                    "image": q.get("image"),
                    "prompt": q["query"] + SUFFIX,
                    "truth": a["truth"],
                    "dimension": dimension,
                    "subtype": subtype,
                }
            )
    return items


def score(item: dict, output: str) -> dict:
    pred = EXACT.get(output)  # None: neither "Yes" nor "No"
    return {
        "dimension": item["dimension"],
        "subtype": item["subtype"],
        "truth": item["truth"],
        "pred": pred,
        "lenient": parse_yes_no(output),
        "correct": pred == item["truth"],
    }


def no_positive(answers: list[str | None], truths: list[str]) -> dict[str, float]:
    """Accuracy and precision/recall/F1 with "no" as the positive class, AMBER's definition."""
    tp = sum(a == "no" and t == "no" for a, t in zip(answers, truths))
    answered_no = sum(a == "no" for a in answers)
    truth_no = sum(t == "no" for t in truths)
    precision = tp / answered_no if answered_no else 0.0
    recall = tp / truth_no if truth_no else 0.0
    return {
        "accuracy": sum(a == t for a, t in zip(answers, truths)) / max(len(truths), 1),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall + F1_EPS),
    }


def _group(rows: list[dict]) -> dict:
    truths = [r["truth"] for r in rows]
    lenient = no_positive([r["lenient"] for r in rows], truths)
    return {
        **no_positive([r["pred"] for r in rows], truths),
        "n": len(rows),
        "neither": sum(r["pred"] is None for r in rows),
        "lenient_accuracy": lenient["accuracy"],
        "lenient_f1": lenient["f1"],
    }


def aggregate(records: list[dict]) -> dict:
    """Metrics overall, per dimension and per attribute sub-type (only the groups that have records)."""
    groups = {"overall": records}
    for dim in ("existence", "attribute", "relation"):
        groups[dim] = [r for r in records if r["dimension"] == dim]
        if dim == "attribute":
            for sub in ("state", "number", "action"):
                groups[f"attribute/{sub}"] = [r for r in groups[dim] if r["subtype"] == sub]
    return {name: _group(rows) for name, rows in groups.items() if rows}


BENCHMARK = Benchmark(
    name="amber",
    description="AMBER discriminative yes/no questions (existence, attribute, relation), No-positive F1",
    load=load,
    generation={"max_new_tokens": 16, "do_sample": False},
    score=score,
    aggregate=aggregate,
    splits=SPLITS,
)
