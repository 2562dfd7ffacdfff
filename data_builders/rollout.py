"""Policy rollouts for the builders that train on the policy's own samples (OPA-DPO, RLAIF-V): the engine protocol
and the resumable loop. An engine is passed in (align/rollout/engine.py holds the Hugging Face one), so this package
never imports `align`; its sampling settings are `data_builders.configs.RolloutSettings`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from data_builders.configs import RolloutSettings
from data_builders.io import read_jsonl


class RolloutEngine(Protocol):
    name: str

    def generate(self, images: list[bytes], prompts: list[str], seed: int) -> list[str]:
        """One sampled response per (image, prompt); `seed` makes the batch reproducible."""
        ...


def roll_out(engine: RolloutEngine, prompts: list[dict], path: Path, settings: RolloutSettings, seed: int) -> dict:
    """id → response. Batches already in `path` (JSONL) are kept; the rest are generated and appended, batch by
    batch, so a killed build restarts after the last finished batch (a torn last line is generated again)."""
    done = {i: row["response"] for i, row in read_jsonl(path, ("response",)).items()}
    position = {p["id"]: i for i, p in enumerate(prompts)}
    todo = [p for p in prompts if p["id"] not in done]
    batches = range(0, len(todo), settings.batch_size)
    with path.open("a") as f:
        for start in tqdm(batches, desc="rollout", leave=False):
            batch = todo[start : start + settings.batch_size]
            # seeded by where the batch starts in the whole prompt list, not in what is left: batches are written
            # whole, so a resumed build draws the same seeds, batches and samples as an uninterrupted one
            batch_seed = seed + position[batch[0]["id"]]
            replies = engine.generate([p["image"] for p in batch], [p["prompt"] for p in batch], batch_seed)
            for p, reply in zip(batch, replies, strict=True):
                done[p["id"]] = reply
                f.write(json.dumps({"id": p["id"], "response": reply}) + "\n")
            f.flush()
    return done
