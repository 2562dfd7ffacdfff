"""data_builders/spans.py: token weights from weighted character spans, and the spans of an expert report."""

from __future__ import annotations

import pytest

from data_builders.experts import ExpertReport
from data_builders.spans import report_spans, span_token_weights
from tests.conftest import sample_report


def test_span_token_weights_hand_offsets():
    # "a cat. a dog." ; sentence spans [0, 6) weight 2, [7, 13) weight 1.5; a leading special token at (0, 0)
    offsets = [(0, 0), (0, 1), (2, 5), (5, 6), (7, 8), (9, 12), (12, 13)]
    spans = [(0, 6, 2.0), (7, 13, 1.5)]
    assert span_token_weights(offsets, spans) == [1.0, 2.0, 2.0, 2.0, 1.5, 1.5, 1.5]
    # most overlap wins; a tie goes to the earlier span; no overlap takes the default
    assert span_token_weights([(5, 10), (4, 9), (13, 20)], spans, default=0.5) == [1.5, 2.0, 0.5]
    # spans read back from disk are floats
    assert span_token_weights([(2, 5)], [(0.0, 6.0, 2.0)]) == [2.0]


def test_report_spans_text_and_weights():
    report = sample_report()
    text, spans = report_spans(report, "rollout")
    assert text == "there is a red cup at the top left. a blue fork is at the center. a dog sings."
    assert spans == [(0, 35, 1.0), (36, 65, 2.0), (66, 78, 2.5)]
    text, spans = report_spans(report, "revision")
    assert text == ExpertReport.from_dict(report).revision
    assert [text[s:e] for s, e, _ in spans] == [
        "there is a red cup at the top left.",
        "a blue knife is at the center.",
        "there is a green cat at the bottom right.",
    ]
    assert [w for _, _, w in spans] == [1.0, 2.0, 1.0]  # the added part weighs 1.0
    _, spans = report_spans(report, "revision", weights="error_type")
    assert [w for _, _, w in spans] == [1.0, 3.0, 1.0]
    _, spans = report_spans(report, "rollout", weights="error_type")
    assert [w for _, _, w in spans] == [1.0, 3.0, 1.0]
    with pytest.raises(ValueError):
        report_spans(report, "chosen")


def test_weights_land_on_tokens_with_the_tiny_tokenizer():
    from align.core.models import build_tiny_tokenizer

    report = sample_report()
    report["sentences"] = report["sentences"][:2]
    text, spans = report_spans(report, "rollout")
    assert text == "there is a red cup at the top left. a blue fork is at the center."
    enc = build_tiny_tokenizer()(text, return_offsets_mapping=True)
    weights = span_token_weights(enc["offset_mapping"], spans)
    tokens = enc.tokens()
    assert len(weights) == len(tokens) == 18
    first = tokens.index(".") + 1  # the score-2 sentence starts after the first full stop
    assert weights[:first] == [1.0] * first
    assert weights[first:] == [2.0] * (len(tokens) - first)
    assert tokens[first : first + 3] == ["a", "blue", "fork"]


def test_corrected_weights_put_gamma_on_what_the_expert_changed_only():
    report = sample_report()
    text, spans = report_spans(report, "rollout", weights="corrected", gamma=5.0)
    assert [(text[s:e], w) for s, e, w in spans] == [("a blue fork is at the center.", 5.0), ("a dog sings.", 5.0)]
    text, spans = report_spans(report, "revision", weights="corrected", gamma=5.0)
    assert text == ExpertReport.from_dict(report).revision  # the deleted sentence leaves no span on this side
    assert [text[s:e] for s, e, _ in spans] == [
        "a blue knife is at the center.",
        "there is a green cat at the bottom right.",
    ]
    for bad in ({"weights": "corrected"}, {"weights": "corrected", "gamma": 0.0}, {"weights": "sentence"}):
        with pytest.raises(ValueError, match="weights|gamma"):
            report_spans(report, "rollout", **bad)
