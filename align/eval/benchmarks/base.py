"""The `Benchmark` record: a benchmark is data plus plain functions, in the style of lm-eval / lmms-eval tasks.

It lives in its own module (re-exported by the package) so that each benchmark module can build its
`Benchmark` while the package `__init__` imports those modules to fill `BENCHMARKS`, without an import cycle.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how to load its items, how to generate for them, how to score and aggregate.

    `load(data, split)` returns items, each with at least `id` (str, unique), `image` (file name or None) and
    `prompt`, plus what `score` needs. An item may also carry `bare_id`: the id as the benchmark's own output
    files name it, accepted when it names a single loaded item (POPE's question_id repeats across splits).
    `score(item, output)` returns a per-sample record; `aggregate(records)` turns records into metrics:
    `{group: {metric: value}}` plus top-level scalars. Rates are fractions in [0, 1]; counts are ints; metrics
    named `*score` or `*length` are on their own scale; strings are notes (which judge graded).
    An item marked `optional: True` needs no output (see `score_outputs`).

    A judge-scored benchmark (`needs_judge`) is scored by `score(item, output, judge)` with an
    `align.eval.judge.Judge`; `judge_prompt(template_text)`, when set, returns the benchmark graded with a user's
    judging prompt instead of the built-in one.

    An item may carry `max_new_tokens` when its task needs another answer length than `generation` gives (AMBER's
    descriptions beside its yes/no questions).

    `headline`: the numbers a checkpoint table shows (`align eval`), as (group, metric, column label); group ""
    is a top-level number, "overall" the overall group.
    """

    name: str
    description: str
    load: Callable[[Path, str | None], list[dict]]
    generation: Mapping[str, Any]
    score: Callable[..., dict]  # (item, output) -> record; (item, output, judge) when needs_judge
    aggregate: Callable[[list[dict]], dict]
    splits: tuple[str, ...] = ()
    needs_judge: bool = False
    judge_prompt: Callable[[str], Benchmark] | None = None
    headline: tuple[tuple[str, str, str], ...] = ()
    output_ids: tuple[str, ...] = ()  # id fields `read_outputs` tries first in answer files (see there)


def read_json_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; a bad line is an error naming file and line."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def one_or_mixed(values: Iterable[str | None]) -> str:
    """The one value (a judge model, a prompt version), or every one with its count and a warning: numbers made
    by different judges or prompts do not compare. None values are left out; "none" when nothing is left."""
    counts = Counter(v for v in values if v is not None)
    if len(counts) <= 1:
        return next(iter(counts), "none")
    return "MIXED, not comparable: " + ", ".join(f"{v} ({n})" for v, n in sorted(counts.items()))


def custom_prompt_version(template: str) -> str:
    """`custom-<hash of the text>`: a user's judge prompt gets its own version, so caches and records tell it apart."""
    return "custom-" + hashlib.sha256(template.encode()).hexdigest()[:12]
