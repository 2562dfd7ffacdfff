"""RLHF-V data: token-diff weights (Muffin's rule), their character spans, expert-report spans, span validation."""

from __future__ import annotations

import pytest

from data_builders.experts import ExpertReport
from data_builders.rlhf_v import report_char_spans
from data_builders.spans import (
    changed_char_spans,
    diff_token_weights,
    report_spans,
    span_token_weights,
    validate_spans,
)
from tests.conftest import sample_report

G = 5.0  # gamma


# ---------------------------------------------------------------- token diff


def test_identical_sequences_weigh_one_even_below_min_match():
    assert diff_token_weights([1, 2, 3, 4], [1, 2, 3, 4], G) == ([1.0] * 4, [1.0] * 4)
    assert diff_token_weights([7, 8], [7, 8], G) == ([1.0, 1.0], [1.0, 1.0])
    assert diff_token_weights([], [], G) == ([], [])


def test_replacement_weighs_both_sides():
    chosen, rejected = diff_token_weights([1, 2, 3, 9, 9, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7], G)
    assert chosen == [1, 1, 1, G, G, 1, 1, 1]
    assert rejected == [1, 1, 1, G, 1, 1, 1]


def test_pure_insertion_and_deletion_weigh_the_side_that_has_tokens():
    chosen, rejected = diff_token_weights([1, 2, 3, 7, 8, 4, 5, 6], [1, 2, 3, 4, 5, 6], G)
    assert chosen == [1, 1, 1, G, G, 1, 1, 1] and rejected == [1.0] * 6
    chosen, rejected = diff_token_weights([1, 2, 3, 4, 5, 6], [1, 2, 3, 7, 8, 4, 5, 6], G)
    assert chosen == [1.0] * 6 and rejected == [1, 1, 1, G, G, 1, 1, 1]


def test_repeated_tokens():
    chosen, rejected = diff_token_weights([5, 5, 5, 9, 5, 5, 5], [5] * 6, G)
    assert chosen == [1, 1, 1, G, 1, 1, 1] and rejected == [1.0] * 6
    # Runs of 2 are below min_match, so every token counts as changed (as in Muffin); min_match=1 localises it.
    assert diff_token_weights([5, 5, 9, 5, 5], [5, 5, 5, 5], G) == ([G] * 5, [G] * 4)
    assert diff_token_weights([5, 5, 9, 5, 5], [5, 5, 5, 5], G, min_match=1) == ([1, 1, G, 1, 1], [1.0] * 4)


def test_coincidental_short_match_inside_a_rewrite_stays_weighted():
    # difflib matches the lone 4; with min_match=3 it is part of the rewritten segment on both sides
    chosen, rejected = diff_token_weights([1, 2, 3, 20, 4, 21, 5, 6, 7], [1, 2, 3, 10, 11, 4, 12, 13, 5, 6, 7], G)
    assert chosen == [1, 1, 1, G, G, G, 1, 1, 1]
    assert rejected == [1, 1, 1, G, G, G, G, G, 1, 1, 1]


# ---------------------------------------------------------------- character spans


@pytest.fixture(scope="module")
def tokenizer():
    from align.core.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


def test_changed_char_spans_round_trip_through_the_tokenizer(tokenizer):
    chosen = "there is a red cup at the top left. a blue knife is at the center."
    rejected = "there is a red cup at the top left. a blue fork is at the center. a dog is at the right."
    chosen_spans, rejected_spans = changed_char_spans(chosen, rejected, tokenizer, G)
    assert [chosen[int(s) : int(e)] for s, e, _ in chosen_spans] == ["knife"]
    assert [rejected[int(s) : int(e)] for s, e, _ in rejected_spans] == ["fork", "a dog is at the right."]
    enc_c = tokenizer(chosen, add_special_tokens=False, return_offsets_mapping=True)
    enc_r = tokenizer(rejected, add_special_tokens=False, return_offsets_mapping=True)
    weights = diff_token_weights(enc_c["input_ids"], enc_r["input_ids"], G)
    assert span_token_weights(enc_c["offset_mapping"], chosen_spans) == weights[0]
    assert span_token_weights(enc_r["offset_mapping"], rejected_spans) == weights[1]
    validate_spans(chosen, chosen_spans)
    validate_spans(rejected, rejected_spans)
    assert changed_char_spans(chosen, chosen, tokenizer, G) == ([], [])


def test_report_char_spans_weight_wrong_sentences_and_the_added_part():
    report = sample_report()
    chosen, chosen_spans, rejected, rejected_spans = report_char_spans(report, G)
    assert chosen == ExpertReport.from_dict(report).revision == report_spans(report, "revision")[0]
    assert rejected == report_spans(report, "rollout")[0]
    assert [chosen[s:e] for s, e, _ in chosen_spans] == [
        "a blue knife is at the center.",
        "there is a green cat at the bottom right.",
    ]
    assert [rejected[s:e] for s, e, _ in rejected_spans] == ["a blue fork is at the center.", "a dog sings."]
    assert {w for *_, w in chosen_spans + rejected_spans} == {G}
    validate_spans(chosen, chosen_spans)
    validate_spans(rejected, rejected_spans)


@pytest.mark.parametrize(
    "span, message",
    [
        ([-1, 2, 2.0], "start < 0"),
        ([0, 6, 2.0], r"end > len\(text\) = 5"),
        ([3, 3, 2.0], "start >= end"),
        ([0, 2, 0.0], "weight <= 0"),
        ([0, 2, float("nan")], "weight <= 0"),
        ([0, 2], "expected"),
    ],
)
def test_validate_spans_names_the_bad_span(span, message):
    with pytest.raises(ValueError, match=rf"span 1 .*{message}"):
        validate_spans("hello", [[0, 5, 1.5], span])
