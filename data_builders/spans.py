"""Weighted character spans on a response text, `[start_char, end_char, weight]`, and their token weights.

One copy of each rule, used by every method that weights tokens (the OPA-DPO recipe, DPO/DDPO in
align/core/preference.py, the RLHF-V builders in data_builders/rlhf_v.py):
- `report_spans`: the spans of an expert report, with OPA-DPO's sentence-score or error-type weights, or RLHF-V's
  gamma on the sentences the expert corrected (weights="corrected");
- `diff_token_weights` / `changed_char_spans`: RLHF-V's (Muffin's) token-id diff of chosen and rejected, as spans;
- `span_token_weights`: the tokenizer-offset mapping that turns spans into per-token weights;
- `validate_spans`: the check that spans fit their text.
"""

from __future__ import annotations

import difflib

from data_builders.experts import ExpertReport

SCORE_WEIGHTS = {1: 2.5, 2: 2.0, 3: 1.5, 4: 1.0}
ERROR_TYPE_WEIGHTS = {"image_recognition_error": 3.0, "correct": 1.0, "language_comprehension_error": 1.0}
ADDED_WEIGHT = 1.0  # the expert's "added" content is new text, not a correction of a scored sentence


def span_token_weights(
    offsets: list[tuple[int, int]], spans: list[tuple[float, float, float]], default: float = 1.0
) -> list[float]:
    """Per-token weights from weighted character spans [start, end, weight] on the response text.

    A token takes the weight of the span its offsets overlap most (ties: the earlier span); a token that overlaps
    no span, or has an empty offset (special tokens report (0, 0)), takes `default`.
    """
    weights = []
    for start, end in offsets:
        best, weight = 0.0, default
        if end > start:
            for s_start, s_end, s_weight in spans:
                overlap = min(end, s_end) - max(start, s_start)
                if overlap > best:
                    best, weight = overlap, float(s_weight)
        weights.append(weight)
    return weights


def _sentence_weight(sentence: dict, weights: str, gamma: float | None) -> float | None:
    if weights == "score":
        return SCORE_WEIGHTS[sentence["score"]]
    if weights == "error_type":
        return ERROR_TYPE_WEIGHTS[sentence["error_type"]]
    return None if sentence["error_type"] == "correct" else gamma  # weights == "corrected"


def report_spans(
    report: dict, side: str, weights: str = "score", gamma: float | None = None
) -> tuple[str, list[tuple[int, int, float]]]:
    """The response text of one side of an expert report and its weighted character spans.

    side="rollout": the `copied` sentences; side="revision": the `rewritten` sentences then `added`. Each sentence's
    span gets SCORE_WEIGHTS[score] (OPA-DPO's pair 2), with weights="error_type" ERROR_TYPE_WEIGHTS (pair 4), and
    `added` gets ADDED_WEIGHT. With weights="corrected" (RLHF-V's DDPO) only the sentences whose error_type is not
    "correct" and the added text get a span, of weight `gamma`: the expert already says what was wrong, so no diff is
    needed, and a sentence the expert deleted (empty rewrite) is weighted on the rollout only.
    Pieces are stripped, empty ones skipped and joined by one space, the rule of `ExpertReport.revision`,
    so the revision text equals the stored revision; the separating spaces belong to no span.
    """
    if weights not in ("score", "error_type", "corrected"):
        raise ValueError(f"weights must be 'score', 'error_type' or 'corrected', got {weights!r}")
    if weights == "corrected" and not (gamma is not None and gamma > 0):
        raise ValueError(f"weights='corrected' needs gamma > 0, got {gamma}")
    ExpertReport.from_dict(report)  # validate first: a bad score or error type is named, not a KeyError
    if side == "rollout":
        pieces = [(s["copied"], _sentence_weight(s, weights, gamma)) for s in report["sentences"]]
    elif side == "revision":
        pieces = [(s["rewritten"], _sentence_weight(s, weights, gamma)) for s in report["sentences"]]
        pieces.append((report.get("added", ""), gamma if weights == "corrected" else ADDED_WEIGHT))
    else:
        raise ValueError(f"side must be 'rollout' or 'revision', got {side!r}")
    text, spans = "", []
    for piece, weight in pieces:
        piece = piece.strip()
        if not piece:
            continue
        if text:
            text += " "
        if weight is not None:
            spans.append((len(text), len(text) + len(piece), weight))
        text += piece
    return text, spans


def diff_token_weights(
    chosen_ids: list[int], rejected_ids: list[int], gamma: float, min_match: int = 3
) -> tuple[list[float], list[float]]:
    """Per-token weights (chosen, rejected): gamma on tokens outside the kept matching blocks, 1 elsewhere.

    RLHF-V's training code (thunlp/Muffin, `utils/diff_lib.py:get_diff_ids`) diffs the token ids of the rejected
    (original) and chosen (corrected) answers the same way. Matching blocks shorter than `min_match` are dropped,
    as in Muffin, so a word that recurs by chance inside a rewritten segment ("a" in "a dog" -> "a red cat") stays
    part of the change. Unlike Muffin, a pure insertion or deletion is weighted too (Muffin only weights a change
    that has tokens on both sides). autojunk is off: its popularity heuristic would treat frequent tokens (".",
    "the") of long answers as junk and never match them.
    """
    chosen_w, rejected_w = [gamma] * len(chosen_ids), [gamma] * len(rejected_ids)
    if chosen_ids == rejected_ids:  # also when shorter than min_match, where no block would be kept
        return [1.0] * len(chosen_ids), [1.0] * len(rejected_ids)
    matcher = difflib.SequenceMatcher(None, rejected_ids, chosen_ids, autojunk=False)
    for block in matcher.get_matching_blocks():
        if block.size >= min_match:
            rejected_w[block.a : block.a + block.size] = [1.0] * block.size
            chosen_w[block.b : block.b + block.size] = [1.0] * block.size
    return chosen_w, rejected_w


def _weighted_runs_to_spans(offsets: list[tuple[int, int]], weights: list[float], gamma: float) -> list[list[float]]:
    """Merge each run of gamma-weighted tokens into one span from its first to its last character. Tokens with an
    empty offset are left out of the bounds: they map to no character, so no span can carry them."""
    spans: list[list[float]] = []
    run: list[tuple[int, int]] = []
    for (start, end), weight in zip([*offsets, (0, 0)], [*weights, 1.0], strict=True):  # the sentinel ends a last run
        if weight == gamma != 1.0:
            run += [(start, end)] if end > start else []
        elif run:
            spans.append([run[0][0], run[-1][1], gamma])
            run = []
    return spans


def changed_char_spans(
    chosen: str, rejected: str, tokenizer, gamma: float, min_match: int = 3
) -> tuple[list[list[float]], list[list[float]]]:
    """`[start, end, gamma]` spans on chosen and rejected covering the tokens `diff_token_weights` marks changed.

    Round trip: `span_token_weights(offsets, spans)` gives back the diff weights token for token, as long as the
    tokenizer's offsets are non-empty and do not overlap (true of word-level, SentencePiece and byte-level BPE
    tokenizers except for byte-fallback pieces of one character).
    """
    enc_c = tokenizer(chosen, add_special_tokens=False, return_offsets_mapping=True)
    enc_r = tokenizer(rejected, add_special_tokens=False, return_offsets_mapping=True)
    chosen_w, rejected_w = diff_token_weights(enc_c["input_ids"], enc_r["input_ids"], gamma, min_match)
    return (
        _weighted_runs_to_spans(enc_c["offset_mapping"], chosen_w, gamma),
        _weighted_runs_to_spans(enc_r["offset_mapping"], rejected_w, gamma),
    )


def validate_spans(text: str, spans: list[list[float]]) -> None:
    """Raise ValueError naming the first span that cannot weight `text`. Written so NaN fails every check."""
    for i, span in enumerate(spans):
        if len(span) != 3:
            raise ValueError(f"span {i} {list(span)}: expected [start, end, weight]")
        start, end, weight = span
        if not start >= 0:
            problem = "start < 0"
        elif not end <= len(text):
            problem = f"end > len(text) = {len(text)}"
        elif not start < end:
            problem = "start >= end (empty span)"
        elif not weight > 0:
            problem = "weight <= 0"
        else:
            continue
        raise ValueError(f"span {i} {list(span)}: {problem}")
