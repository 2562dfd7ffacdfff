"""The prompts online RL samples from (GRPO, RLOO, PPO): ToyWorld's training images, or any preference dataset.

Each prompt is {id, image (PIL), prompt, facts, objects}: `facts` the sentences a fact-augmented reward model reads
(ToyWorld: its ground truth; a dataset: each record's meta.facts, e.g. the captions of
configs/llava15_7b/human_pref_data.yaml), `objects` ToyWorld's ground truth as JSON for the oracle reward and the
oracle's hallucination counts (None for a dataset's prompts, which have no ground truth).
"""

from __future__ import annotations

import json
import types

from datasets import Image

from align.core.data import to_pil
from data_builders.captions import record_facts
from data_builders.io import load_preference_dataset
from data_builders.reward_pairs import toyworld_facts
from data_builders.toyworld_data import toyworld_prompts


def rl_prompts(data_cfg, prompts: str | None, limit: int | None, seed: int) -> list[dict]:
    """The prompts of a `prompts` dataset folder (its distinct (prompt, image) records, in order), or of
    ToyWorld's train split (`data_cfg.world`) when it is None; the first `limit` of them."""
    if prompts is None:
        select = types.SimpleNamespace(
            world=data_cfg.world, cache_dir=data_cfg.cache_dir, split="train", limit=limit, seed=seed
        )
        return [
            {
                "id": p["id"],
                "image": to_pil({"bytes": p["image"]}, p["id"]),
                "prompt": p["prompt"],
                "facts": toyworld_facts(json.loads(p["objects"])),
                "objects": p["objects"],
            }  # fmt: skip
            for p in toyworld_prompts(select)
        ]
    rows, seen = [], set()
    for record in load_preference_dataset(prompts).cast_column("image", Image(decode=False)):
        key = (record["prompt"], hash(record["image"]["bytes"]) if record["image"]["bytes"] else record["id"])
        if key in seen:  # a dataset may hold several pairs per prompt: each prompt is sampled from once
            continue
        seen.add(key)
        rows.append({"id": record["id"], "image": to_pil(record["image"], record["id"]), "prompt": record["prompt"],
                     "facts": record_facts(record), "objects": None})  # fmt: skip
        if limit is not None and len(rows) >= limit:
            break
    return rows
