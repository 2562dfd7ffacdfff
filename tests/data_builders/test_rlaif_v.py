"""RLAIF-V feedback data: claims of a ToyWorld caption, the oracle's answers, scores, candidate pairs, the length
search, and the build (resume after a kill, failed checks counted and retried, config errors)."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from data_builders.claims import CheckRequest, Claim, OracleLabeler, SentenceDivider, ToyWorldDivider
from data_builders.configs import RLAIFVDataConfig, RolloutSettings
from data_builders.rlaif_v import build, candidate_pairs, length_balance, response_score
from tests.conftest import SMALL_WORLD

TRUTH = json.dumps(
    {
        "scene": "kitchen",
        "objects": [
            {"name": "cup", "color": "red", "cells": [0]},
            {"name": "fork", "color": "blue", "cells": [4, 7]},
        ],
    }
)


def _kinds(claims: list[Claim]) -> list[tuple]:
    return [(c.kind, c.facts) for c in claims]


def test_toyworld_divider_claims_of_a_caption():
    caption = (
        "this is a kitchen. there is a red cup at the top left. there are two blue forks at the center and the bottom."  # noqa: E501
    )
    claims = ToyWorldDivider().divide("describe.", caption)
    assert _kinds(claims) == [
        ("scene", {"scene": "kitchen"}),
        ("existence", {"cls": "cup"}),
        ("color", {"cls": "cup", "color": "red"}),
        ("position", {"cls": "cup", "cell": 0}),
        ("existence", {"cls": "fork"}),
        ("color", {"cls": "fork", "color": "blue"}),
        ("position", {"cls": "fork", "cell": 4}),
        ("position", {"cls": "fork", "cell": 7}),
        ("count", {"cls": "fork", "count": 2}),
    ]
    assert claims[1].question == "Is there a cup in the image?"
    assert claims[3].question == "Is there a cup at the top left?"


def test_toyworld_divider_two_objects_in_one_sentence_claim_existence_only():
    claims = ToyWorldDivider().divide("describe.", "a red cup and a fork are at the top.")
    assert _kinds(claims) == [("existence", {"cls": "cup"}), ("existence", {"cls": "fork"})]


def test_oracle_labeler_answers_from_ground_truth():
    claims = ToyWorldDivider().divide(
        "describe.",
        "this is a street. there is a green cup at the top left. there are three forks at the center. a knife.",
    )
    answers = OracleLabeler().p_yes([CheckRequest(f"r#{i}", b"", c, TRUTH) for i, c in enumerate(claims)])
    verdicts = {(c.kind, json.dumps(c.facts)): a for c, a in zip(claims, answers)}
    assert verdicts[("scene", '{"scene": "street"}')] == 0.0
    assert verdicts[("existence", '{"cls": "cup"}')] == 1.0
    assert verdicts[("color", '{"cls": "cup", "color": "green"}')] == 0.0
    assert verdicts[("position", '{"cls": "cup", "cell": 0}')] == 1.0
    assert verdicts[("position", '{"cls": "fork", "cell": 4}')] == 1.0
    assert verdicts[("count", '{"cls": "fork", "count": 3}')] == 0.0
    assert verdicts[("existence", '{"cls": "knife"}')] == 0.0
    assert response_score([a > 0.5 for a in answers]) == -4


def test_oracle_labeler_refuses_what_it_cannot_check():
    statement = SentenceDivider().divide("q", "The sky is blue. It rains.")
    assert [c.text for c in statement] == ["The sky is blue.", "It rains."]
    with pytest.raises(ValueError, match="divider: toyworld"):
        OracleLabeler().p_yes([CheckRequest("r#0", b"", statement[0], TRUTH)])
    with pytest.raises(ValueError, match="ground-truth"):
        OracleLabeler().p_yes([CheckRequest("r#0", b"", ToyWorldDivider().divide("q", "a cup.")[0], None)])


def test_candidate_pairs_need_a_score_gap_and_different_texts():
    scores = {"a": 0, "b": -1, "c": -1, "d": -3}
    texts = {"a": "x", "b": "y", "c": "x ", "d": "z"}
    assert candidate_pairs(scores, texts, 1) == [("a", "b"), ("a", "d"), ("b", "d"), ("c", "d")]
    assert candidate_pairs(scores, texts, 2) == [("a", "d"), ("b", "d"), ("c", "d")]
    assert candidate_pairs({"a": -1, "b": -1}, {"a": "x", "b": "y"}, 1) == []


def _pair(chosen_words: int, rejected_words: int) -> dict:
    return {"chosen": "w " * chosen_words, "rejected": "w " * rejected_words}


def test_length_balance_drops_the_short_chosen_pairs_that_skew_lengths():
    # chosen shorter by 50% (dropped at t < 0.5), by 10%, and longer by 10%; t = 0.1 evens the means best
    pairs = [_pair(5, 10), _pair(9, 10), _pair(11, 10)]
    kept, stats = length_balance(pairs)
    assert kept == pairs[1:]
    assert stats["threshold"] == 0.1 and stats["dropped"] == 1
    assert stats["gap_after"] == 0.0 and stats["gap_before"] == pytest.approx(abs(25 / 3 - 10) / 10, abs=1e-4)
    balanced = [_pair(10, 10), _pair(12, 10)]  # nothing to gain by dropping: the smallest threshold keeps all
    assert length_balance(balanced)[0] == balanced


class ScriptedEngine:
    """A rollout engine at the protocol boundary: sample k of an image gets script[k % len(script)]."""

    name = "scripted"

    def __init__(self, script: list[str]):
        self.script, self.calls = script, 0

    def generate(self, images, prompts, seed):
        self.calls += 1
        return [self.script[i % len(self.script)] for i in range(len(prompts))]


class CountingLabeler(OracleLabeler):
    """The oracle, failing the first `fail` checks it sees (None), counting what it was asked."""

    def __init__(self, fail: int = 0):
        self.asked, self.fail = 0, fail

    def p_yes(self, requests):
        answers = super().p_yes(requests)
        out = [None if self.asked + i < self.fail else a for i, a in enumerate(answers)]
        self.asked += len(requests)
        return out


SCRIPT = [
    "there is a cup at the top left.",
    "there is a dog at the top left. there is a cat at the center.",
    "this is a street. there is a cup at the top left.",
    "there is a cup at the top left.",  # same text as sample 0: never paired with it
]


def _cfg(tmp_path, cache_dir, **kw) -> RLAIFVDataConfig:
    return RLAIFVDataConfig(
        output_dir=str(tmp_path / "data"),
        world=SMALL_WORLD,
        cache_dir=str(cache_dir),
        limit=6,
        rollout=RolloutSettings(batch_size=8, temperature=0.7, top_p=1.0),
        chunk=5,
        **kw,
    )


def test_build_scores_pairs_and_resumes_after_a_kill(tmp_path, cache_dir):
    cfg = _cfg(tmp_path, cache_dir)
    summary = build(cfg, ScriptedEngine(SCRIPT), CountingLabeler())
    assert summary["prompts"] == 6 and summary["responses"] == 24 and summary["checked"] == 24
    assert summary["labeler_agreement_with_truth"] == 1.0
    data = load_from_disk(summary["dataset"])
    assert len(data) == summary["pairs"]["kept"] > 0
    for row in data:
        meta = json.loads(row["meta"])
        assert meta["chosen_score"] >= meta["rejected_score"] + 1
        assert row["chosen"] != row["rejected"] and row["chosen_spans"] == [] and row["rejected_spans"] == []
    first = [(r["id"], r["chosen"], r["rejected"]) for r in data]

    # a kill mid-feedback: half the lines kept, one torn; the rerun checks only the rest and rebuilds the same set
    path = tmp_path / "data" / "feedback.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:12]) + "\n" + lines[12][:20])
    labeler, engine = CountingLabeler(), ScriptedEngine(SCRIPT)
    again = build(cfg, engine, labeler)
    assert engine.calls == 0  # every sample was already on disk
    rest = [json.loads(line) for line in lines[12:]]
    chunks = [rest[i : i + cfg.chunk] for i in range(0, len(rest), cfg.chunk)]
    # each (prompt, question) is asked once per chunk: the samples of a prompt share their image
    unique = sum(len({(r["prompt_id"], c["question"]) for r in chunk for c in r["claims"]}) for chunk in chunks)
    assert labeler.asked == unique < sum(len(r["claims"]) for r in rest)
    assert [(r["id"], r["chosen"], r["rejected"]) for r in load_from_disk(again["dataset"])] == first


def test_failed_checks_are_counted_and_retried(tmp_path, cache_dir):
    cfg = _cfg(tmp_path, cache_dir)
    summary = build(cfg, ScriptedEngine(SCRIPT), CountingLabeler(fail=3))
    assert summary["failed"]["labeler_failed"] >= 1
    assert summary["checked"] == 24 - summary["failed"]["labeler_failed"]
    rerun = build(cfg, ScriptedEngine(SCRIPT), CountingLabeler())
    assert rerun["checked"] == 24 and rerun["failed"] == {}


def test_no_pair_is_an_error_that_keeps_the_work(tmp_path, cache_dir):
    cfg = _cfg(tmp_path, cache_dir)
    with pytest.raises(ValueError, match="no preference pair"):
        build(cfg, ScriptedEngine(["there is a cup at the top left."]), OracleLabeler())
    assert json.loads((tmp_path / "data" / "summary.json").read_text())["pairs"]["candidates"] == 0
    assert len((tmp_path / "data" / "feedback.jsonl").read_text().splitlines()) == 24


def test_config_rejects_what_cannot_work():
    with pytest.raises(ValueError, match="samples"):
        RLAIFVDataConfig(samples=1)
    with pytest.raises(ValueError, match="ground truth"):
        RLAIFVDataConfig(prompts="rows.jsonl")
    with pytest.raises(ValueError, match="divider: toyworld"):
        RLAIFVDataConfig(divider="sentences", labeler="oracle")
    RLAIFVDataConfig(prompts="rows.jsonl", divider="openai", labeler="openai")
