"""AMBER (Wang et al. 2023): image descriptions scored by CHAIR, Cover, Hal and Cog (generative), yes/no
questions on object existence, attributes and relations (discriminative), and the AMBER score.

Data: AMBER's `data/` directory (or the repository root holding it): `annotations.json`, a list of
`{id, type, truth}` records (generative ones also carry `hallu`), `relation.json` and `safe_words.txt` (the
generative task's vocabulary), and `query/query_all.json` (or the per-task `query_generative.json` and
`query_discriminative.json`) with `{id, image, query}`. Ids 1..1004 are descriptions ("Describe this image."),
the ids above are yes/no questions.

Splits: none or "discriminative" = every yes/no question; "existence", "attribute", "relation" = one dimension;
"generative" = the descriptions; "all" = both tasks, the only split that gives the AMBER score.
The discriminative dimension comes from the annotation type: existence ("discriminative-hallucination"),
attribute (state, number or action, kept as `subtype`) and relation ("discriminative-relation" and "relation").

Generative scoring and its documented deviations (the spaCy similarity step above all): `amber_generative`. Its
metrics form the `generative` group. The AMBER score is the paper's ½·(100 − CHAIR + F1), CHAIR and the overall
No-positive F1 as percentages; the reference evaluator does not compute it (AMBER issue #3).

Discriminative scoring follows the reference evaluator: an answer counts only if it *equals* "Yes" or "No", with
no stripping or case folding, so "yes", "Yes." and "No, there is not" count as neither and are wrong. "No" is
the positive class: precision = correct "No" / answered "No", recall = correct "No" / questions whose truth is
"no", F1 = 2PR/(P+R+1e-4). The reference's printout differs by less than 0.1 point: its denominators start at
0.001, it rounds P and R to 0.1 before the F1, and its existence F1 uses 1e-3. Here rates are exact.

The official numbers assume bare "Yes"/"No" answers; the AMBER authors get them from open models by comparing
the logits of "Yes" and "No" (AMBER issue #2). For free-form generation, put an answer-format instruction in
SUFFIX (yes/no questions only). Each record also keeps a `lenient` answer parsed the POPE way
(`metrics.parse_yes_no`), with lenient accuracy and F1 beside the official ones, to show how much of a score is
answer format.

Generation: one setting serves both tasks, 512 new tokens greedy (descriptions need the length; OPA-DPO's
AMBER script allows 1024). A yes/no answer usually ends long before; greedy decoding makes a longer limit only
extend an answer, and an answer past the former 16-token limit is neither "Yes" nor "No" either way, so no
official discriminative number moves (the lenient parse now reads a long first sentence to its end).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from align.eval.benchmarks import amber_generative
from align.eval.benchmarks.amber_generative import Similarity
from align.eval.benchmarks.base import Benchmark
from align.eval.metrics import parse_yes_no

SUFFIX = ""  # appended to each yes/no query; empty keeps AMBER's own prompts
TYPES = {
    "discriminative-hallucination": ("existence", None),
    "discriminative-attribute-state": ("attribute", "state"),
    "discriminative-attribute-number": ("attribute", "number"),
    "discriminative-attribute-action": ("attribute", "action"),
    "discriminative-relation": ("relation", None),
    "relation": ("relation", None),
}
DISCRIMINATIVE_SPLITS = ("discriminative", "existence", "attribute", "relation")
SPLITS = (*DISCRIMINATIVE_SPLITS, "generative", "all")
QUERY_FILES = {"generative": "query_generative.json", "discriminative": "query_discriminative.json"}
EXACT = {"Yes": "yes", "No": "no"}
F1_EPS = 1e-4  # the reference's smoothing term


def _data_dir(data: Path) -> Path:
    data = Path(data)
    if not (data / "annotations.json").is_file() and (data / "data" / "annotations.json").is_file():
        return data / "data"  # the repository root was given
    if not (data / "annotations.json").is_file():
        raise FileNotFoundError(f"{data}/annotations.json not found: give AMBER's data/ directory")
    return data


def _queries(data: Path, tasks: tuple[str, ...]) -> list[dict]:
    """The queries of the tasks asked for: query_all.json, else each task's own file."""
    if (data / "query" / "query_all.json").is_file():
        return json.loads((data / "query" / "query_all.json").read_text())
    missing = [QUERY_FILES[t] for t in tasks if not (data / "query" / QUERY_FILES[t]).is_file()]
    if missing:
        raise FileNotFoundError(f"{data}/query/ holds neither query_all.json nor {' and '.join(missing)}")
    return [q for t in tasks for q in json.loads((data / "query" / QUERY_FILES[t]).read_text())]


def _generative_item(data: Path, query: dict, ann: dict, vocab: amber_generative.Vocabulary) -> dict:
    if not all(isinstance(ann.get(k), list) for k in ("truth", "hallu")):
        raise ValueError(f"{data}/annotations.json: generative id {ann['id']} needs truth and hallu object lists")
    unknown = amber_generative.unknown_objects(ann, vocab)
    if unknown:
        raise ValueError(
            f"{data}/annotations.json: generative id {ann['id']} has objects that {data}/relation.json does not "
            f"list: {', '.join(map(repr, unknown))}; AMBER's evaluator needs an entry (maybe []) for each object"
        )
    return {
        "id": str(query["id"]),
        "image": query.get("image"),
        "prompt": query["query"],
        "max_new_tokens": 512,  # a description, where the yes/no questions need a word (see `generation`)
        "truth": ann["truth"],
        "hallu": ann["hallu"],
        "dimension": "generative",
        "vocabulary": str(data),  # where score() reads relation.json and safe_words.txt
    }


def _discriminative_item(data: Path, query: dict, ann: dict) -> dict:
    if ann["type"] not in TYPES:
        raise ValueError(f"{data}/annotations.json: id {ann['id']} has unknown type {ann['type']!r}")
    dimension, subtype = TYPES[ann["type"]]
    return {
        "id": str(query["id"]),
        "image": query.get("image"),
        "prompt": query["query"] + SUFFIX,
        "truth": ann["truth"],
        "dimension": dimension,
        "subtype": subtype,
    }


def load(data: Path, split: str | None = None) -> list[dict]:
    """The items of one split (see the module docstring; None = every yes/no question), in query-file order."""
    if split not in (None, *SPLITS):
        raise ValueError(f"unknown AMBER split {split!r}: use one of {', '.join(SPLITS)}")
    data = _data_dir(data)
    tasks = {"generative": ("generative",), "all": ("generative", "discriminative")}.get(split, ("discriminative",))
    truth = {a["id"]: a for a in json.loads((data / "annotations.json").read_text())}
    vocab = amber_generative.load_vocabulary(data) if "generative" in tasks else None
    items = []
    for q in _queries(data, tasks):
        if q["id"] not in truth:
            raise ValueError(f"{data}: query id {q['id']} has no annotation")
        ann = truth[q["id"]]
        if ann["type"] == "generative":
            if vocab is not None:
                items.append(_generative_item(data, q, ann, vocab))
        elif "discriminative" in tasks:
            item = _discriminative_item(data, q, ann)
            if split in (None, "discriminative", "all", item["dimension"]):
                items.append(item)
    return items


def score(item: dict, output: str, similarity: Similarity | None = None) -> dict:
    """A description's nouns (`amber_generative.score`; `similarity` None drops that step), or a yes/no answer."""
    if item["dimension"] == "generative":
        return amber_generative.score(item, output, similarity)
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


def _discriminative_groups(records: list[dict]) -> dict:
    """Metrics overall, per dimension and per attribute sub-type (only the groups that have records)."""
    groups = {"overall": records}
    for dim in ("existence", "attribute", "relation"):
        groups[dim] = [r for r in records if r["dimension"] == dim]
        if dim == "attribute":
            for sub in ("state", "number", "action"):
                groups[f"attribute/{sub}"] = [r for r in groups[dim] if r["subtype"] == sub]
    return {name: _group(rows) for name, rows in groups.items() if rows}


def amber_score(chair: float, f1: float) -> float:
    """The paper's ½·(100 − CHAIR + F1) with CHAIR and F1 in percent, from the fractions here."""
    return 50 * (1 - chair + f1)


def aggregate(records: list[dict], similarity_name: str = "none") -> dict:
    """The `generative` group, the yes/no groups (`overall` = every yes/no question, then dimensions and
    attribute sub-types), and `amber_score` when both tasks have records. `similarity_name` is a note: which
    similarity step scored the descriptions."""
    generative = [r for r in records if r["dimension"] == "generative"]
    metrics = {"generative": amber_generative.aggregate(generative, similarity_name)} if generative else {}
    metrics |= _discriminative_groups([r for r in records if r["dimension"] != "generative"])
    if generative and "overall" in metrics:
        metrics["amber_score"] = amber_score(metrics["generative"]["chair"], metrics["overall"]["f1"])
    return metrics


def make_benchmark(similarity: Similarity | None = None, similarity_name: str | None = None) -> Benchmark:
    """AMBER with the given similarity step for descriptions (None: dropped), named in the generative metrics
    by `similarity_name` (default: the function's name, or "none")."""
    if similarity_name is None:
        similarity_name = getattr(similarity, "__name__", "custom") if similarity is not None else "none"
    return Benchmark(
        name="amber",
        description="AMBER: descriptions (CHAIR, Cover, Hal, Cog), yes/no questions (No-positive F1), AMBER score",
        load=load,
        generation={"max_new_tokens": 16, "do_sample": False},  # descriptions set their own length
        score=functools.partial(score, similarity=similarity),
        aggregate=functools.partial(aggregate, similarity_name=similarity_name),
        splits=SPLITS,
        headline=(("", "amber_score", "score"), ("generative", "chair", "CHAIR"), ("overall", "f1", "F1")),
    )


BENCHMARK = make_benchmark(*amber_generative.default_similarity())  # spaCy's when installed (deviation 1)
