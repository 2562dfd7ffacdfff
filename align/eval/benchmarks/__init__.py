"""Hallucination benchmarks as data plus plain functions, scored from model outputs that already exist.

A benchmark is a `Benchmark` record (load items, generation settings, per-sample score, aggregate); `BENCHMARKS`
lists them by name. Adding one = a module that builds its `BENCHMARK` + one line in `BENCHMARKS`.

`read_outputs` reads the output files other tools write; `score_outputs` matches them to items and scores.
Every item needs an output, except `optional` ones (CHAIR: the outputs pick the images), which are scored when
an output names them and otherwise ignored. Missing outputs are an error naming how many and which, unless
`allow_missing`, where they are counted and left out (the reference scorers assume complete answer files, so a
silent gap would shift the numbers without anyone noticing). Judge-scored benchmarks (MMHal) need a `judge`
(`align.eval.judge.Judge`); their samples are graded `judge.cfg.concurrency` at a time.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from align.eval.benchmarks import amber, cceval, chair, mmhal, objhal, pope
from align.eval.benchmarks.base import Benchmark, read_json_lines
from align.eval.table import text_table
from data_builders.endpoint import map_requests

__all__ = ["BENCHMARKS", "Benchmark", "Scored", "format_metrics", "get_benchmark", "read_outputs", "score_outputs"]

BENCHMARKS: dict[str, Benchmark] = {
    "pope": pope.BENCHMARK,
    "amber": amber.BENCHMARK,
    "mmhal": mmhal.BENCHMARK,
    "chair": chair.BENCHMARK,
    "objhal": objhal.BENCHMARK,
    "objhal_llm": objhal.LLM_BENCHMARK,
    "cceval": cceval.BENCHMARK,
}

# (id field, text field), tried in this order on each line
OUTPUT_FIELDS = (
    ("question_id", "text"),
    ("question_id", "answer"),
    ("image_id", "caption"),
    ("image_id", "text"),  # CCEval's and Object HalBench's answer files
    ("image_id", "answer"),
    ("id", "response"),
)
ACCEPTED = (
    "expected JSONL (or a JSON array) of {question_id, text} (LLaVA), {question_id, answer}, "
    "{image_id, caption} (OPERA), {image_id, text} (CCEval) or {id, response} (AMBER), "
    "or an MMHal template array with model_answer filled in"
)
JUDGE_FLAGS = (
    "pass --judge-model MODEL (plus --judge-base-url URL for a server other than api.openai.com; the API key is "
    "read from $OPENAI_API_KEY or the variable named by --judge-api-key-env), or judge=Judge(JudgeConfig(...))"
)


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        close = difflib.get_close_matches(name, BENCHMARKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)}){hint}")
    return BENCHMARKS[name]


def _entry(rec: object, fields=OUTPUT_FIELDS) -> tuple[str, str] | None:
    """(id, text) of one output record, or None when it has no known id/text pair (tried in `fields` order).

    A string `category` field (lmms-eval-style POPE outputs name the split there) prefixes the id as
    `category/id`, which is how POPE items of several splits are told apart.
    """
    if not isinstance(rec, dict):
        return None
    for id_key, text_key in fields:
        if id_key in rec and text_key in rec:
            key, text = rec[id_key], rec[text_key]
            if isinstance(key, bool) or not isinstance(key, (int, str)) or not isinstance(text, str):
                return None
            key = str(key)
            if isinstance(rec.get("category"), str) and "/" not in key:
                key = f"{rec['category']}/{key}"
            return key, text
    return None


def _template_answers(array: list) -> dict[str, str] | None:
    """{index: model_answer} of an MMHal answer template filled in by a model (records have no id: the reference
    pairs them with questions by position); empty answers are left out, so they count as missing."""
    if not all(isinstance(r, dict) and "model_answer" in r and "question" in r for r in array):
        return None
    if any(_entry(r) is not None for r in array):
        return None
    return {
        str(i): r["model_answer"]
        for i, r in enumerate(array)
        if isinstance(r["model_answer"], str) and r["model_answer"]
    }


def read_outputs(path: str | Path, prefer: tuple[str, ...] = ()) -> dict[str, str]:
    """{id: output text} from a JSONL file, or a JSON array file (AMBER's inference.py reads an array, MMHal's
    reference writes its answer template back with `model_answer` filled in). `prefer`: id fields tried first
    (a benchmark keyed by image, such as CHAIR, reads `image_id` even where a line also has a `question_id`)."""
    fields = tuple(sorted(OUTPUT_FIELDS, key=lambda f: f[0] not in prefer))  # stable: the order within stays
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"outputs file {str(path)!r} not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); {ACCEPTED}") from None
    if text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); {ACCEPTED}") from None
        if isinstance(array, list) and array and (answers := _template_answers(array)) is not None:
            if not answers:
                raise ValueError(f"{path}: every model_answer is empty (the unfilled template?); {ACCEPTED}")
            return answers
        rows, where = list(enumerate(array, 1)), "item"
    else:
        try:
            rows, where = read_json_lines(path), "line"
        except ValueError as e:
            raise ValueError(f"{e}; {ACCEPTED}") from None
    outputs: dict[str, str] = {}
    first: dict[str, int] = {}
    for n, rec in rows:
        entry = _entry(rec, fields)
        if entry is None:
            raise ValueError(f"{path}: {where} {n}: no id and text fields found; {ACCEPTED}")
        key, out = entry
        if key in outputs:
            raise ValueError(f"{path}: {where} {n}: duplicate id {key!r} (first on {where} {first[key]})")
        outputs[key], first[key] = out, n
    if not outputs:
        raise ValueError(f"{path} holds no outputs; {ACCEPTED}")
    return outputs


@dataclass
class Scored:
    records: list[dict]  # per sample: id, the benchmark's score fields, output
    metrics: dict
    counts: dict[str, int]  # items, scored, missing, unmatched_outputs (outputs naming no loaded item)


def match_outputs(items: list[dict], outputs: dict[str, str]) -> tuple[list[tuple[dict, str]], list[str], set[str]]:
    """(item, output) pairs, ids of items without output, and the output keys used.

    An item matches on its `id`, else on its `bare_id` when that names no other loaded item. An `optional`
    item without an output is left out, not missing.
    """
    bare = Counter(it.get("bare_id") for it in items)
    pairs, missing, used = [], [], set()
    for it in items:
        key = it["id"]
        if key not in outputs and it.get("bare_id") in outputs and bare[it["bare_id"]] == 1:
            key = it["bare_id"]
        if key in outputs:
            pairs.append((it, outputs[key]))
            used.add(key)
        elif not it.get("optional"):
            missing.append(it["id"])
    return pairs, missing, used


def _missing_message(bench: Benchmark, items: list[dict], outputs: dict[str, str], missing: list[str]) -> str:
    """Which items lack an output, why if it can tell (ambiguous bare ids), and what to do about it."""
    if not missing:  # only optional items, and no output names one
        return f"no output names any of the {len(items)} {bench.name} items (ids such as {items[0]['id']})"
    if len(missing) == len(items):
        msg = f"no output matches any of the {len(items)} {bench.name} items (ids such as {', '.join(missing[:3])})"
    else:
        msg = f"{len(missing)} of {len(items)} {bench.name} items have no output (first: {', '.join(missing[:5])})"
    gaps = set(missing)
    ambiguous = [it["bare_id"] for it in items if it.get("bare_id") in outputs and it["id"] in gaps]
    if ambiguous:
        msg += (
            f"; bare ids such as {ambiguous[0]!r} name an item in several splits: score one split at a time "
            "(--split) or key the outputs as 'split/id'"
        )
    if len(missing) < len(items):
        msg += "; pass --allow-missing (allow_missing=True) to score the answered items only"
    return msg


def _score_pairs(bench: Benchmark, pairs: list[tuple[dict, str]], judge) -> list[dict]:
    """Per-sample score fields in item order; judge requests run concurrently (they wait on the network)."""
    if not bench.needs_judge:
        return [bench.score(it, out) for it, out in pairs]
    # a fatal error (bad key) stops the run without sending the queued requests
    return map_requests(lambda pair: bench.score(*pair, judge), pairs, judge.cfg.concurrency, f"{bench.name} judge")


def score_outputs(
    bench: Benchmark, items: list[dict], outputs: dict[str, str], allow_missing: bool = False, judge=None
) -> Scored:
    """Score every item from its output; see the module docstring for the missing-output rule."""
    if bench.needs_judge and judge is None:
        raise ValueError(f"{bench.name} is graded by an LLM judge: {JUDGE_FLAGS}")
    pairs, missing, used = match_outputs(items, outputs)
    if not pairs or (missing and not allow_missing):
        raise ValueError(_missing_message(bench, items, outputs, missing))
    scores = _score_pairs(bench, pairs, judge)
    records = [{"id": it["id"], **s, "output": out} for (it, out), s in zip(pairs, scores)]
    counts = {
        "items": len(pairs) + len(missing),  # optional items count only when scored
        "scored": len(records),
        "missing": len(missing),
        "unmatched_outputs": len(outputs) - len(used),
    }
    return Scored(records, bench.aggregate(records), counts)


def format_metrics(metrics: dict) -> str:
    """Plain-text table, one row per group (split, dimension); rates as percentages, counts and notes as is,
    `*score` metrics on their own scale."""
    groups = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    cols = list(dict.fromkeys(c for g in groups.values() for c in g))

    def cell(v, name: str = "") -> str:
        if v is None or isinstance(v, (int, str)):
            return "-" if v is None else str(v)
        return f"{v:.2f}" if name.endswith(("score", "length")) else f"{100 * v:.1f}"

    rows = [[name] + [cell(g.get(c), c) for c in cols] for name, g in groups.items()]
    notes = [f"{k}: {cell(v, k)}" for k, v in metrics.items() if not isinstance(v, dict)]
    return "\n".join([text_table([""] + cols, rows), *notes])
