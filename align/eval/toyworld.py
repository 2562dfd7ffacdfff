"""ToyWorld hallucination eval: CHAIR on detailed captions and POPE (random/popular/adversarial) on the test split.

Results follow the project's eval schema: `{benchmark: {metric: value}, "meta": {...}}`, rates in [0, 1].
"""

from __future__ import annotations

import dataclasses
import time

from datasets import Image

from align.config.sections import EvalConfig
from align.core.generation import generate
from align.eval import metrics
from data_builders import toyworld as tw
from data_builders.toyworld_data import build_toyworld, config_hash, objects_from_json, pope_rows

POPE_SPLITS = ("random", "popular", "adversarial")
CAPTION_PROMPT = tw.CAPTION_PROMPTS[0]


def evaluate_toyworld(model, processor, world: tw.WorldConfig, eval_cfg: EvalConfig, cache_dir=None):
    """Generate on the ToyWorld test split and score it. Returns (results, generations)."""
    t0 = time.time()
    test = build_toyworld(world, cache_dir)["test"]
    if eval_cfg.limit is not None:
        test = test.select(range(min(eval_cfg.limit, len(test))))
    images = test.cast_column("image", Image(decode=False))["image"]
    objects = [objects_from_json(x) for x in test["objects"]]
    captions = generate(model, processor, images, [CAPTION_PROMPT] * len(images), eval_cfg.generation, desc="captions")
    results = {
        "toyworld_chair": metrics.chair(
            captions,
            [{o.name for o in objs} for objs in objects],
            occupied=[{c for o in objs for c in o.cells} for objs in objects],
            typical=[set(world.typical(scene)) for scene in test["scene"]],
        )
    }
    generations = [
        {"image_id": iid, "prompt": CAPTION_PROMPT, "caption": cap, "objects": [o.name for o in objs]}
        for iid, cap, objs in zip(test["image_id"], captions, objects)
    ]
    if eval_cfg.pope:
        rows = pope_rows(test)
        answers = generate(
            model,
            processor,
            [images[r["image_index"]] for r in rows],
            [r["question"] + tw.SHORT_ANSWER_SUFFIX for r in rows],
            eval_cfg.generation,
            desc="pope",
            max_new_tokens=3,
        )
        for split in POPE_SPLITS:
            idx = [i for i, r in enumerate(rows) if r["split"] == split]
            results[f"toyworld_pope_{split}"] = metrics.pope(
                [answers[i] for i in idx], [rows[i]["label"] for i in idx]
            )
        results["toyworld_pope"] = {
            f"{m}_mean": sum(results[f"toyworld_pope_{s}"][m] for s in POPE_SPLITS) / len(POPE_SPLITS)
            for m in ("accuracy", "f1", "yes_ratio")
        }
        generations += [
            {
                "image_id": test["image_id"][r["image_index"]],
                "prompt": r["question"],
                "answer": a,
                "label": r["label"],
                "split": r["split"],
            }
            for r, a in zip(rows, answers)
        ]
    results["meta"] = {
        "world": dataclasses.asdict(world),
        "world_hash": config_hash(world),
        "images": len(images),
        "caption_prompt": CAPTION_PROMPT,
        "generation": dataclasses.asdict(eval_cfg.generation),
        "seconds": round(time.time() - t0, 2),
    }
    return results, generations
