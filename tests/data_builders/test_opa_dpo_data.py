"""OPA-DPO data filters and ToyWorld prompts (the end-to-end build with a real policy: tests/align/rollout/)."""

from __future__ import annotations

import pytest

from data_builders.configs import OPADataConfig
from data_builders.experts import CorrectionResult, ExpertReport, SentenceEdit
from data_builders.opa_dpo import filter_reason
from data_builders.toyworld_data import objects_from_json, toyworld_prompts
from data_builders.toyworld_text import caption_mentions
from tests.conftest import SMALL_WORLD


def result(revision: str = "a cup.", sentences: int = 1) -> CorrectionResult:
    edits = [SentenceEdit("x.", 4, "correct", [], revision, "ok")] * sentences
    return CorrectionResult("r", "h", ExpertReport(edits))


@pytest.mark.parametrize(
    ("rollout", "res", "reason"),
    [
        ("a red cup. a blue fork.", result(), None),
        ("a red cup.", CorrectionResult("r", "h", None, "invalid reply: not JSON"), "expert_failed"),
        ("a red cup.", result(sentences=0), "empty_report"),
        ("a red cup. a blue fork. a red cup.", result(), "repeated_sentence"),
        ("a red cup" + " cup" * 31, result(), "repeated_word"),
        ("a red cup" + " cup" * 29, result(), None),
        ("a red kite.", result(revision=""), "empty_revision"),
    ],
)
def test_filters(rollout, res, reason):
    assert filter_reason(rollout, res, max_word_repeats=30) == reason


def test_prompts_carry_a_clean_reference_even_for_injected_train_captions(small_world, cache_dir):
    cfg = OPADataConfig(world=SMALL_WORLD, cache_dir=str(cache_dir), limit=None)
    prompts = toyworld_prompts(cfg)
    assert len(prompts) == len(small_world["train"])
    injected = 0
    for p, row in zip(prompts, small_world["train"]):
        truth = {o.name for o in objects_from_json(row["objects"])}
        assert {c for c, _ in caption_mentions(p["reference"])} == truth
        injected += row["injected"] != "[]"
    assert injected > 0  # the world does inject, so the clean reference is doing work
    assert toyworld_prompts(cfg) == prompts  # deterministic


def test_offpolicy_caption_hallucinates(small_world, cache_dir):
    """The baseline's rejected answer names at least one object that is not in the image."""
    for p, row in zip(
        toyworld_prompts(OPADataConfig(world=SMALL_WORLD, cache_dir=str(cache_dir))), small_world["train"]
    ):
        truth = {o.name for o in objects_from_json(row["objects"])}
        named = {c for c, _ in caption_mentions(p["offpolicy"])}
        assert named - truth, p["offpolicy"]
