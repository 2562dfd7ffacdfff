"""Reward-model pairs (data_builders/reward_pairs.py): the oracle's ranking (fewer hallucinated mentions wins,
ties by recall), the ground truth as facts, a build from a policy's samples that resumes after a kill, and the
errors that keep the work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from data_builders import toyworld as tw
from data_builders.configs import RewardPairsConfig, RolloutSettings
from data_builders.reward_pairs import best_and_worst, build, caption_quality, toyworld_facts
from data_builders.toyworld_data import toyworld_prompts
from tests.conftest import SMALL_WORLD

TRUTH = {
    "scene": "kitchen",
    "objects": [
        {"name": "cup", "color": "red", "cells": [0], "faint": False},
        {"name": "bowl", "color": "blue", "cells": [4, 8], "faint": False},
        {"name": "spoon", "color": "white", "cells": [5], "faint": True},
    ],
}


def test_caption_quality_counts_hallucinated_mentions_and_recall():
    assert caption_quality("there is a red cup at the top left. there is also a spoon.", TRUTH) == (0, 2 / 3)
    assert caption_quality("there is a cup. there is a dog at the center. there is also a jar.", TRUTH) == (2, 1 / 3)
    assert caption_quality("a kitchen is shown.", TRUTH) == (0, 0.0)


def test_best_and_worst_rank_by_hallucinations_then_recall():
    captions = [
        ("a#0", "there is a red cup at the top left."),  # (0, 1/3)
        ("a#1", "there is a cup and a bowl. there is also a jar."),  # (1, 2/3)
        ("a#2", "there is a cup and two bowls. there is also a spoon."),  # (0, 1): the best
        ("a#3", "there is a dog. there is also a jar."),  # (2, 0): the worst
    ]
    chosen, rejected = best_and_worst(captions, TRUTH)
    assert (chosen["id"], rejected["id"]) == ("a#2", "a#3")
    assert (chosen["hallucinated"], chosen["recall"], rejected["hallucinated"]) == (0, 1.0, 2)
    chosen, rejected = best_and_worst(captions[:1] + [("a#4", "a kitchen.")], TRUTH)  # equal errors: recall decides
    assert (chosen["id"], rejected["id"]) == ("a#0", "a#4")
    assert best_and_worst([("a#0", "a cup."), ("a#1", "one cup.")], TRUTH) is None  # ranked alike: no pair


def test_facts_state_the_ground_truth():
    assert toyworld_facts(TRUTH) == [
        "the scene is a kitchen",
        "a red cup at the top left",
        "two blue bowls at the center and the bottom right",
        "there is a small, faint spoon",
    ]


class TruthEngine:
    """A rollout engine at the protocol boundary: sample k of an image is script(truth)[k], where the three captions
    are clean (every object, nothing else), with an absent object added, and naming nothing. roll_out seeds the
    batch starting at sample j (of images × 3, in order) with seed + j, so with seed 0 that is j."""

    name = "truth-scripted"

    def __init__(self, prompts: list[dict]):
        self.truth = {p["image"]: json.loads(p["objects"]) for p in prompts}
        self.calls = 0

    def generate(self, images, prompts, seed):
        self.calls += 1
        return [self.script(self.truth[image])[(seed + i) % 3] for i, image in enumerate(images)]

    @staticmethod
    def script(truth: dict) -> list[str]:
        clear = [o for o in truth["objects"] if not o["faint"]]
        clean = " ".join(f"there is a {o['color']} {o['name']} at the {tw.POSITIONS[o['cells'][0]]}." for o in clear)
        present = {o["name"] for o in truth["objects"]}
        absent = next(name for name in tw.CLASSES if name not in present)
        return [clean, f"{clean} there is also a {absent}.", f"a {truth['scene']} is shown."]


def _cfg(tmp_path, cache_dir, **kw) -> RewardPairsConfig:
    return RewardPairsConfig(output_dir=str(tmp_path / "pairs"), world=SMALL_WORLD, cache_dir=str(cache_dir), limit=6,
                             samples=3, rollout=RolloutSettings(batch_size=4), **kw)  # fmt: skip


def test_build_pairs_the_clean_caption_over_the_hallucinated_one_and_resumes(tmp_path, cache_dir):
    cfg = _cfg(tmp_path, cache_dir)
    prompts = toyworld_prompts(cfg)
    summary = build(cfg, TruthEngine(prompts))
    assert summary["prompts"] == 6 and summary["responses"] == 18 and summary["rows_out"] == 6
    rows = load_from_disk(summary["dataset"])
    truths = {p["id"]: json.loads(p["objects"]) for p in prompts}
    for row in rows:
        image_id = row["id"].split("#")[0]
        meta = json.loads(row["meta"])
        assert row["chosen"] == TruthEngine.script(truths[image_id])[0]
        assert row["rejected"] == TruthEngine.script(truths[image_id])[1]
        assert meta["chosen_rank"]["hallucinated"] == 0 and meta["rejected_rank"]["hallucinated"] == 1
        assert meta["facts"] == toyworld_facts(truths[image_id])
    assert summary["hallucination_margin_histogram"] == {"1": 6}

    # a kill mid-rollout: the first batch of 4 samples kept, the second torn; the rerun samples only the rest
    path = tmp_path / "pairs" / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])
    engine = TruthEngine(prompts)
    again = build(cfg, engine)
    assert engine.calls == 4  # batches 2-5 of 18 samples in batches of 4
    assert [(r["id"], r["chosen"], r["rejected"]) for r in load_from_disk(again["dataset"])] == [
        (r["id"], r["chosen"], r["rejected"]) for r in rows
    ]


def test_no_pair_is_an_error_that_keeps_the_samples(tmp_path, cache_dir):
    cfg = _cfg(tmp_path, cache_dir)

    class Same(TruthEngine):
        def generate(self, images, prompts, seed):
            return ["a scene is shown."] * len(images)

    with pytest.raises(ValueError, match="no image gave a pair"):
        build(cfg, Same(toyworld_prompts(cfg)))
    summary = json.loads((tmp_path / "pairs" / "summary.json").read_text())
    assert summary["dropped"] == {"tied": 6} and summary["rows_out"] == 0
    assert len((tmp_path / "pairs" / "samples.jsonl").read_text().splitlines()) == 18


def test_config_rejects_what_cannot_work():
    with pytest.raises(ValueError, match="samples"):
        RewardPairsConfig(samples=1)
    with pytest.raises(ValueError, match="limit"):
        RewardPairsConfig(limit=0)


def test_cli_builds_pairs_from_a_real_policy(micro_opa_data, tmp_path, cache_dir, capsys):
    from align.cli import main

    policy, _ = micro_opa_data
    config = str(Path(__file__).resolve().parents[2] / "configs/toy/reward_pairs.yaml")
    world = ["world.seed=7", "world.n_train=64", "world.n_val=4", "world.n_test=12"]  # SMALL_WORLD
    overrides = [f"policy={policy}", f"output_dir={tmp_path / 'cli'}", f"cache_dir={cache_dir}", "limit=8", *world,
                 "rollout.max_new_tokens=16"]  # fmt: skip
    assert main(["build-data", config, *overrides]) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["responses"] == 32 and summary["rows_out"] + sum(summary["dropped"].values()) == 8
    for row in load_from_disk(summary["dataset"]):
        meta = json.loads(row["meta"])
        assert (meta["chosen_rank"]["hallucinated"], -meta["chosen_rank"]["recall"]) < (
            meta["rejected_rank"]["hallucinated"], -meta["rejected_rank"]["recall"])  # fmt: skip
