"""Policy rollouts for the builders that train on the policy's own samples (OPA-DPO, RLAIF-V): the engine protocol,
the prompts a build rolls out, and the resumable loop. An engine is passed in (align/rollout/engine.py holds the
Hugging Face one), so this package never imports `align`; its sampling settings are
`data_builders.configs.RolloutSettings`.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Protocol

from data_builders.configs import RolloutSettings
from data_builders.importers import MAX_SKIP_EXAMPLES, read_public_prompts
from data_builders.io import append_jsonl, jsonl_rows, rewrite_jsonl
from data_builders.progress import bar
from data_builders.toyworld_data import toyworld_prompts


class RolloutEngine(Protocol):
    """`generate` is all a build needs. An engine that also has `max_prompt_tokens` (an int, or None for no limit)
    and `prompt_tokens(image, prompt)` gets only the prompts it can take (`fitting_prompts`)."""

    name: str

    def generate(self, images: list[bytes], prompts: list[str], seed: int) -> list[str]:
        """One sampled response per (image, prompt); `seed` makes the batch reproducible."""
        ...


def rollout_prompts(cfg, engine: RolloutEngine) -> tuple[list[dict], dict]:
    """The prompts a builder rolls out (ToyWorld's, or the public rows of `cfg.prompts`) less those that cannot be
    used: bad public rows (data_builders/importers.py) and prompts longer than the engine takes. Returns (prompts,
    {rows_in, skipped: {reason: count}, examples: [{row, reason, detail}]}); a skip is counted, never raised."""
    if cfg.prompts is None:
        prompts, report = toyworld_prompts(cfg), {"skipped": {}, "examples": []}
        report["rows_read"] = len(prompts)
    else:
        prompts, report = read_public_prompts(cfg.prompts, cfg.limit)
    prompts, too_long = fitting_prompts(engine, prompts)
    skipped = collections.Counter(report["skipped"]) + collections.Counter(e["reason"] for e in too_long)
    examples = (report["examples"] + too_long)[:MAX_SKIP_EXAMPLES]
    return prompts, {"rows_in": report["rows_read"], "skipped": dict(skipped), "examples": examples}


def fitting_prompts(engine: RolloutEngine, prompts: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the prompts the engine can take, one {row, reason: prompt_too_long, detail} per prompt it cannot): a prompt
    whose tokens, image tokens included, exceed `engine.max_prompt_tokens` would not fit the policy's context
    (and a very long one would exhaust memory in generate). Engines without a limit take every prompt."""
    limit = getattr(engine, "max_prompt_tokens", None)
    if limit is None or not hasattr(engine, "prompt_tokens"):
        return prompts, []
    kept, skipped = [], []
    for p in prompts:
        n = engine.prompt_tokens(p["image"], p["prompt"])
        if n <= limit:
            kept.append(p)
        else:
            detail = f"{n} prompt tokens (image included) > {limit}; raise rollout.max_prompt_tokens if it fits"
            skipped.append({"row": p["id"], "reason": "prompt_too_long", "detail": detail})
    return kept, skipped


def roll_out(engine: RolloutEngine, prompts: list[dict], path: Path, settings: RolloutSettings, seed: int) -> dict:
    """id → response. The prompts are sampled in batches at fixed places of the whole list (batch k is
    prompts[kB:(k+1)B] with seed + kB, B = batch_size), each appended to `path` (JSONL) in one write. A resumed
    build keeps the batches it finds whole and samples the others again, whole: a batch found in part (a kill
    mid-write) is dropped from the file, as is a torn last line, so the file ends as an uninterrupted build's."""
    size = settings.batch_size
    batches = [prompts[start : start + size] for start in range(0, len(prompts), size)]
    done = _whole_batches(path, batches)
    todo = [k for k, batch in enumerate(batches) if any(p["id"] not in done for p in batch)]
    with path.open("a") as f:
        for k in bar(todo, desc="rollout"):
            batch = batches[k]
            replies = engine.generate([p["image"] for p in batch], [p["prompt"] for p in batch], seed + k * size)
            rows = [{"id": p["id"], "response": reply} for p, reply in zip(batch, replies, strict=True)]
            append_jsonl(f, rows)
            done.update((row["id"], row["response"]) for row in rows)
    return done


def _whole_batches(path: Path, batches: list[list[dict]]) -> dict[str, str]:
    """id → response of the rows in `path` that belong to a batch present whole (or to no batch of this build: kept,
    unused). The rows of a batch present in part are removed from the file; a sample of fewer prompts than its
    batch is not what the whole batch would have drawn."""
    rows = jsonl_rows(path, ("response",))  # cuts a torn tail
    found = {row["id"]: row["response"] for row in rows}
    partial = {p["id"] for batch in batches if any(p["id"] not in found for p in batch) for p in batch}
    if any(row["id"] in partial for row in rows):
        rewrite_jsonl(path, [row for row in rows if row["id"] not in partial])
    return {i: response for i, response in found.items() if i not in partial}
