"""Reward functions (rewards/functions.py) on fixtures, in both of TRL's completion forms."""

from __future__ import annotations

import json

import pytest

from rewards.functions import (
    LengthPenalty,
    ToyWorldOracleReward,
    TruncationPenalty,
    choice_reward,
    completion_text,
    yes_no_reward,
)

TRUTH = json.dumps({"scene": "kitchen", "objects": [
    {"name": "cup", "color": "red", "cells": [0], "faint": False},
    {"name": "bowl", "color": "blue", "cells": [4], "faint": False},
]})  # fmt: skip


def test_completion_text_reads_both_forms():
    assert completion_text("a cup.") == "a cup."
    assert completion_text([{"role": "assistant", "content": "a cup."}]) == "a cup."
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a cup."}]}]) == "a cup."
    with pytest.raises(TypeError, match="string or a list of messages"):
        completion_text(3)


def test_oracle_reward_is_recall_minus_hallucinations():
    completions = [
        "there is a red cup at the top left. there is a blue bowl at the center.",  # recall 1, nothing made up
        [{"role": "assistant", "content": "there is a cup. there is also a spoon and a dog."}],  # 0.5, two made up
        "a kitchen is shown.",  # says nothing: 0
    ]
    rewards = ToyWorldOracleReward()(["p"] * 3, completions, objects=[TRUTH] * 3)
    assert rewards == pytest.approx([1.0, 0.5 - 2, 0.0])
    weighted = ToyWorldOracleReward(hallucination_weight=0.5, recall_weight=2.0)(
        ["p"], completions[1:2], objects=[TRUTH]
    )
    assert weighted == pytest.approx([2 * 0.5 - 0.5 * 2])
    with pytest.raises(ValueError, match="objects"):
        ToyWorldOracleReward()(["p"], ["a cup."])


def test_yes_no_reward():
    completions = ["Yes, there is.", "no.", "I think so.", [{"role": "assistant", "content": "No"}]]
    assert yes_no_reward(["p"] * 4, completions, answer=["yes", "yes", "no", "no"]) == [0.5, -0.5, 0.0, 0.5]
    with pytest.raises(ValueError, match="neither yes nor no"):
        yes_no_reward(["p"], ["yes"], answer=["maybe"])


def test_choice_reward():
    completions = ["B. A cat.", "(B) a cat", "I think the correct option is B.", "A", "Because of B"]
    assert choice_reward(["p"] * 5, completions, answer=["B"] * 5) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_length_and_truncation_penalties():
    ids = [[5] * 448, [5] * 10, [5] * 15 + [2]]
    assert LengthPenalty()(["p"] * 3, ["x"] * 3, completion_ids=ids) == pytest.approx(
        [-5.0, -10 * 10 / 896, -10 * 16 / 896]
    )
    truncation = TruncationPenalty(max_tokens=16, eos_token_id=2)
    assert truncation(["p"] * 3, ["x"] * 3, completion_ids=[[5] * 16, [5] * 10, [5] * 15 + [2]]) == [-8.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="completion_ids"):
        LengthPenalty()(["p"], ["x"])
