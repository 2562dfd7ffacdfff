"""Reward-model pairs from a policy's own samples on ToyWorld (LLaVA-RLHF's preference data, issue 20).

LLaVA-RLHF's annotators saw two responses of the SFT model to one prompt and picked the less hallucinated, with
helpfulness breaking ties. Here the oracle does it from the ground truth: per image the policy samples
`samples` captions; fewer hallucinated object mentions wins, and between equals the higher recall. The best and
the worst caption of an image make its pair; an image whose captions all rank alike makes none (counted). The
image's ground truth, written as short sentences, goes into each record's `meta.facts`: the facts a
fact-augmented reward model reads (rewards/model.py `reward_prompt`).
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

from data_builders import toyworld as tw
from data_builders.configs import RewardPairsConfig
from data_builders.io import finish_build
from data_builders.rollout import RolloutEngine, roll_out, rollout_prompts
from data_builders.schema import PREFERENCE_FEATURES
from data_builders.toyworld_text import caption_mentions

COUNTS = {1: "a", 2: "two", 3: "three", 4: "four"}


def caption_quality(caption: str, truth: dict) -> tuple[int, float]:
    """(hallucinated object mentions, recall of the present object kinds) of a caption against {scene, objects}."""
    present = {o["name"] for o in truth["objects"]}
    mentioned = [cls for cls, _ in caption_mentions(caption)]
    hallucinated = sum(cls not in present for cls in mentioned)
    recall = len(present & set(mentioned)) / len(present) if present else 1.0
    return hallucinated, recall


def toyworld_facts(truth: dict) -> list[str]:
    """The ground truth as sentences: the scene, each clear object kind with its colour and places, and the faint
    one by name only (the captions name it that way)."""
    facts = [f"the scene is a {truth['scene']}"]
    for o in truth["objects"]:
        if o.get("faint"):
            facts.append(f"there is a small, faint {o['name']}")
            continue
        n = len(o["cells"])
        name = o["name"] if n == 1 else tw.plural(o["name"])
        places = " and the ".join(tw.POSITIONS[c] for c in o["cells"])
        facts.append(f"{COUNTS.get(n, str(n))} {o['color']} {name} at the {places}")
    return facts


def best_and_worst(captions: list[tuple[str, str]], truth: dict) -> tuple[dict, dict] | None:
    """(chosen, rejected) among one image's (id, caption) samples, each {id, text, hallucinated, recall}; None when
    the best and the worst rank alike (no preference to learn)."""
    ranked = []
    for sample_id, text in captions:
        hallucinated, recall = caption_quality(text, truth)
        ranked.append({"id": sample_id, "text": text, "hallucinated": hallucinated, "recall": round(recall, 4)})
    ranked.sort(key=lambda r: (r["hallucinated"], -r["recall"], r["id"]))
    best, worst = ranked[0], ranked[-1]
    if (best["hallucinated"], best["recall"]) == (worst["hallucinated"], worst["recall"]):
        return None
    return best, worst


def make_records(prompts: list[dict], responses: dict[str, str], samples: int, source: str) -> tuple[list, dict]:
    """One record per image whose samples rank apart, and the counts of those that did not."""
    records, counts = [], collections.Counter()
    for p in prompts:
        captions = [(f"{p['id']}#{k}", responses.get(f"{p['id']}#{k}")) for k in range(samples)]
        captions = [(i, text) for i, text in captions if text and text.strip()]
        if len(captions) < 2:
            counts["too_few_samples"] += 1
            continue
        truth = json.loads(p["objects"])
        pair = best_and_worst(captions, truth)
        if pair is None:
            counts["tied"] += 1
            continue
        chosen, rejected = pair
        meta = {"builder": "reward_pairs", "facts": toyworld_facts(truth), "chosen_rank": _rank(chosen),
                "rejected_rank": _rank(rejected)}  # fmt: skip
        records.append(
            {
                "id": f"{chosen['id']}>{rejected['id']}",
                "image": {"bytes": p["image"], "path": None},
                "prompt": p["prompt"],
                "chosen": chosen["text"],
                "rejected": rejected["text"],
                "chosen_spans": [],
                "rejected_spans": [],
                "source": source,
                "meta": json.dumps(meta),
            }
        )
        counts["paired"] += 1
    return records, dict(counts)


def _rank(sample: dict) -> dict:
    return {"hallucinated": sample["hallucinated"], "recall": sample["recall"]}


def build(cfg: RewardPairsConfig, engine: RolloutEngine) -> dict:
    """Write `output_dir/dataset` (PREFERENCE_FEATURES, facts in meta) and `summary.json`; returns the summary.
    The samples are appended to `samples.jsonl` batch by batch, so a killed build resumes where it stopped."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    prompts, read = rollout_prompts(cfg, engine)
    expanded = [{**p, "id": f"{p['id']}#{k}"} for p in prompts for k in range(cfg.samples)]
    responses = roll_out(engine, expanded, out / "samples.jsonl", cfg.rollout, cfg.seed)
    records, counts = make_records(prompts, responses, cfg.samples, f"{engine.name}+oracle_rank")
    ranks = [json.loads(r["meta"]) for r in records]
    margins = collections.Counter(m["rejected_rank"]["hallucinated"] - m["chosen_rank"]["hallucinated"] for m in ranks)
    summary = {
        "dataset": str(out / "dataset"),
        "policy": cfg.policy,
        "prompts": len(prompts),
        "rows_in": read["rows_in"],
        "skipped": read["skipped"],
        "skipped_examples": read["examples"],
        "responses": len(expanded),
        "rows_out": len(records),
        "dropped": {**read["skipped"], **{k: v for k, v in counts.items() if k != "paired"}},
        "hallucination_margin_histogram": {str(k): margins[k] for k in sorted(margins)},
        "seconds": round(time.time() - t0, 1),
    }
    return finish_build(out, summary, records, PREFERENCE_FEATURES, f"{cfg.output_dir}: no image gave a pair")
