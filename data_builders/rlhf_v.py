"""RLHF-V preference data: fine-grained correction weights, and RLHF-V pairs built from OPA-DPO records.

RLHF-V's DDPO up-weights (by gamma) the tokens a human corrected. Its training code (thunlp/Muffin,
`utils/diff_lib.py:get_diff_ids`) finds them by diffing the token ids of the rejected (original) and chosen
(corrected) answers and ignoring matches shorter than 3 tokens. `changed_char_spans` runs that diff and stores the
result as weighted character spans, the PreferenceRecord format, which the collator maps back to tokens through
the tokenizer's offsets (`align.losses.span_token_weights`). `report_char_spans` gives the same spans from an
OPA-DPO expert report, where the changed sentences are known without a diff. `preferences_from_opa` turns a whole
OPA dataset into such pairs (revision over rollout), so RLHF-V's DDPO can be compared with OPA-DPO on equal data:

    align build-data configs/toy/preference_data.yaml   # runs/opa_data/dataset → runs/pref_data/dataset

Public preference sets (RLHF-V-Dataset, RLAIF-V-Dataset, LLaVA-Human-Preference-10K) are read by
`data_builders.preference_import`; `build_public_preferences` writes them as a PreferenceRecord dataset, with the
same diff spans if asked (nothing is downloaded: fetch the file yourself):

    align build-data configs/llava15_7b/rlhf_v_data.yaml   # RLHF-V-Dataset.parquet → runs/llava15_7b/rlhf_v_data

This package never imports `align` (DESIGN.md), so the expert-report text rule is restated here; the tests pin it
to `align.losses.report_spans` and `ExpertReport.revision`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from datasets import Image

from data_builders.experts import ExpertReplyError, ExpertReport
from data_builders.opa_dpo import finish_build, load_opa_dataset
from data_builders.preference_import import MAX_SKIP_EXAMPLES, Format, SkipRow, import_preferences
from data_builders.schema import PREFERENCE_FEATURES

# ---------------------------------------------------------------- correction weights


def diff_token_weights(
    chosen_ids: list[int], rejected_ids: list[int], gamma: float, min_match: int = 3
) -> tuple[list[float], list[float]]:
    """Per-token weights (chosen, rejected): gamma on tokens outside the kept matching blocks, 1 elsewhere.

    Matching blocks shorter than `min_match` are dropped, as in Muffin, so a word that recurs by chance inside a
    rewritten segment ("a" in "a dog" -> "a red cat") stays part of the change. Unlike Muffin, a pure insertion
    or deletion is weighted too (Muffin only weights a change that has tokens on both sides). autojunk is off:
    its popularity heuristic would treat frequent tokens (".", "the") of long answers as junk and never match them.
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


def _joined(pieces: list[tuple[str, bool]], gamma: float) -> tuple[str, list[list[float]]]:
    """Pieces stripped, empty ones skipped, joined by one space (the rule of `ExpertReport.revision`, which
    `align.losses.report_spans` follows too), with a gamma span on each flagged piece; the spaces get none."""
    text, spans = "", []
    for piece, changed in pieces:
        piece = piece.strip()
        if not piece:
            continue
        text += " " if text else ""
        if changed:
            spans.append([len(text), len(text) + len(piece), gamma])
        text += piece
    return text, spans


def report_char_spans(report: dict, gamma: float) -> tuple[str, list[list[float]], str, list[list[float]]]:
    """(chosen = revision, its spans, rejected = rollout, its spans) from an OPA-DPO expert report.

    The expert already says which sentences were wrong, so no diff is needed: every sentence whose error_type is
    not "correct" carries gamma on both sides, and so does the expert's `added` text on the chosen side (it is new
    content the rollout lacked). A sentence the expert deleted (empty rewrite) is weighted on the rollout only.
    """
    parsed = ExpertReport.from_dict(report)  # a malformed report is named (ExpertReplyError), not a KeyError
    wrong = [s.error_type != "correct" for s in parsed.sentences]
    revision = [(s.rewritten, w) for s, w in zip(parsed.sentences, wrong, strict=True)] + [(parsed.added, True)]
    chosen, chosen_spans = _joined(revision, gamma)
    rejected, rejected_spans = _joined([(s.copied, w) for s, w in zip(parsed.sentences, wrong, strict=True)], gamma)
    return chosen, chosen_spans, rejected, rejected_spans


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


# ---------------------------------------------------------------- equal-data pairs from OPA-DPO records

OPA_SKIP_REASONS = (
    "uncorrected",  # the revision equals the rollout: RLHF-V discards responses without a hallucination
    "empty_response",
    "malformed_report",
)


def _image_field(image) -> dict:
    """The stored-image dict of PREFERENCE_FEATURES from an undecoded dataset cell or raw bytes."""
    return image if isinstance(image, dict) else {"bytes": image, "path": None}


def _opa_pair(row: dict, gamma: float, spans: str, tokenizer, min_match: int) -> dict:
    """One OPA record as an RLHF-V pair (chosen = revision, rejected = rollout); raises SkipRow."""
    try:
        chosen, chosen_spans, rejected, rejected_spans = report_char_spans(json.loads(row["report"]), gamma)
    except (json.JSONDecodeError, TypeError, ExpertReplyError) as err:
        raise SkipRow("malformed_report", f"report: {err}") from None
    if not chosen or not rejected:
        raise SkipRow("empty_response", "revision or rollout is empty")
    if chosen == rejected:
        raise SkipRow("uncorrected", "the expert changed nothing")
    if spans == "diff":
        chosen_spans, rejected_spans = changed_char_spans(chosen, rejected, tokenizer, gamma, min_match)
    validate_spans(chosen, chosen_spans)  # a bad span here is a bug in this module: fail loudly, write nothing
    validate_spans(rejected, rejected_spans)
    return {"chosen": chosen, "rejected": rejected, "chosen_spans": chosen_spans, "rejected_spans": rejected_spans}


def preferences_from_opa(
    opa_dataset, gamma: float, spans: Literal["report", "diff"] = "report", tokenizer=None, min_match: int = 3
) -> tuple[list[dict], dict]:
    """RLHF-V pairs on exactly the data OPA-DPO trains on: chosen = the expert's revision, rejected = the policy's
    rollout, both rebuilt from the report (`report_char_spans`) so the spans line up with the texts.

    spans="report": gamma on the sentences the expert flagged (and its added text); spans="diff": gamma on the
    tokens Muffin's token-id diff marks changed (`changed_char_spans`; needs the policy's `tokenizer`).
    `opa_dataset` is an OPA dataset (OPA_FEATURES) or a list of its rows. Rows the expert left unchanged are
    skipped (RLHF-V keeps only corrected responses), as are empty sides and malformed reports; returns
    (PreferenceRecord dicts, counts {rows_in, rows_out, skipped {reason: n}}).
    """
    if spans not in ("report", "diff"):
        raise ValueError(f"spans must be 'report' or 'diff', got {spans!r}")
    if spans == "diff" and tokenizer is None:
        raise ValueError("spans='diff' diffs token ids: pass the policy's tokenizer")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if isinstance(getattr(opa_dataset, "features", {}).get("image"), Image):
        opa_dataset = opa_dataset.cast_column("image", Image(decode=False))  # pass the encoded bytes through
    records: list[dict] = []
    skipped: Counter = Counter()
    for index, row in enumerate(opa_dataset):
        try:
            pair = _opa_pair(row, gamma, spans, tokenizer, min_match)
        except SkipRow as skip:
            skipped[skip.reason] += 1
            continue
        meta = {"builder": "preferences_from_opa", "row": index, "spans": spans, "gamma": gamma}
        meta["opa_meta"] = json.loads(row["meta"]) if row.get("meta") else {}
        records.append(
            {
                "id": row["id"],
                "image": _image_field(row["image"]),
                "prompt": row["prompt"],
                **pair,
                "source": row.get("source") or "opa",
                "meta": json.dumps(meta),
            }
        )
    counts = {
        "rows_in": len(records) + sum(skipped.values()),
        "rows_out": len(records),
        "skipped": {reason: skipped[reason] for reason in OPA_SKIP_REASONS},
    }
    return records, counts


@dataclasses.dataclass
class PreferenceDataConfig:
    """`align build-data` config: RLHF-V preference pairs from an OPA-DPO dataset (the same rollouts and
    corrections, so DPO/DDPO and OPA-DPO can be compared on equal data)."""

    recipe: Literal["preference_data"] = dataclasses.field(
        default="preference_data", metadata={"help": "Selects this builder."}
    )
    opa_dataset: str = dataclasses.field(
        default="runs/opa_data/dataset", metadata={"help": "OPA dataset from `align build-data` (opa_dpo_data)."}
    )
    output_dir: str = dataclasses.field(
        default="runs/pref_data", metadata={"help": "Where dataset/ and summary.json are written."}
    )
    gamma: float = dataclasses.field(
        default=5.0,
        metadata={
            "help": "DDPO weight of corrected tokens, stored as the span weight. 5.0 as the RLHF-V paper and "
            "Muffin's first README; the current RLHF-V script uses 1.1."
        },
    )
    spans: Literal["report", "diff"] = dataclasses.field(
        default="report",
        metadata={
            "help": "report: the sentences the expert flagged; diff: the tokens a token-id diff of revision and "
            "rollout marks changed (Muffin's rule; needs policy for its tokenizer)."
        },
    )
    policy: str | None = dataclasses.field(
        default=None, metadata={"help": "Checkpoint whose tokenizer the diff runs on (spans: diff only)."}
    )
    min_match: int = dataclasses.field(
        default=3, metadata={"help": "spans: diff: matching runs shorter than this count as changed (Muffin: 3)."}
    )

    def __post_init__(self):
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if self.spans == "diff" and not self.policy:
            raise ValueError("spans: diff needs policy (a checkpoint directory) for its tokenizer")
        if self.min_match < 1:
            raise ValueError("min_match must be >= 1")


def _load_tokenizer(policy: str):
    """The policy's tokenizer for the token-id diff. Never trust_remote_code: a config file must not run code."""
    from transformers import AutoTokenizer  # only here: spans "none"/"report" need no tokenizer

    return AutoTokenizer.from_pretrained(policy, trust_remote_code=False)


def build_preference_data(cfg: PreferenceDataConfig) -> dict:
    """Write `output_dir/dataset` (PREFERENCE_FEATURES) and `output_dir/summary.json`; returns the summary."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tokenizer = _load_tokenizer(cfg.policy) if cfg.spans == "diff" else None
    records, counts = preferences_from_opa(
        load_opa_dataset(cfg.opa_dataset), cfg.gamma, cfg.spans, tokenizer, cfg.min_match
    )
    summary = {
        "dataset": str(out / "dataset"),
        "opa_dataset": cfg.opa_dataset,
        "gamma": cfg.gamma,
        "spans": cfg.spans,
        **counts,
        "seconds": round(time.time() - t0, 1),
    }
    empty = f"{cfg.opa_dataset}: no pair left of {counts['rows_in']} rows; skipped {counts['skipped']}"
    return finish_build(out, summary, records, PREFERENCE_FEATURES, empty)


# ---------------------------------------------------------------- public preference sets → PreferenceRecords

PUBLIC_SKIP_REASONS = (
    "empty_response",  # the importer drops these already; checked again so any record list is safe here
    "chosen_equals_rejected",
    "same_tokens",  # spans: diff: texts differ (case, spacing) but the tokens do not, so DPO's logit is 0
)


@dataclasses.dataclass
class PublicPreferenceConfig:
    """`align build-data` config: a public preference set (a file you downloaded) as PreferenceRecords, optionally
    with RLHF-V's DDPO spans, for `align train` with recipe dpo."""

    recipe: Literal["public_preferences"] = dataclasses.field(
        default="public_preferences", metadata={"help": "Selects this builder."}
    )
    path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "The downloaded rows: .parquet (hub layout), .jsonl, .json array or save_to_disk folder."},
    )
    format: Format = dataclasses.field(
        default="rlhf_v",
        metadata={
            "help": "rlhf_v: HaoyeZhang/RLHF-V-Dataset; rlaif_v: openbmb/RLAIF-V-Dataset; llava_human_pref: "
            "zhiqings/LLaVA-Human-Preference-10K."
        },
    )
    image_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Root of image paths named in rows (null: the file's folder)."}
    )
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Rows to read (null = all)."})
    output_dir: str = dataclasses.field(
        default="runs/public_pref", metadata={"help": "Where dataset/ and summary.json are written."}
    )
    spans: Literal["none", "diff"] = dataclasses.field(
        default="none",
        metadata={
            "help": "none: plain DPO pairs; diff: Muffin's token-id diff of chosen vs rejected marks the corrected "
            "tokens with weight gamma (RLHF-V's DDPO; needs policy for its tokenizer)."
        },
    )
    gamma: float = dataclasses.field(
        default=5.0,
        metadata={
            "help": "DDPO weight of the changed tokens (spans: diff). 5.0 as the RLHF-V paper and Muffin's first "
            "README; the current RLHF-V script uses 1.1."
        },
    )
    min_match: int = dataclasses.field(
        default=3, metadata={"help": "spans: diff: matching runs shorter than this count as changed (Muffin: 3)."}
    )
    policy: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Checkpoint or hub id whose tokenizer the diff uses (spans: diff only; no remote code)."},
    )

    def __post_init__(self):
        if not self.path:
            raise ValueError("path: the downloaded preference file or folder is required (nothing is downloaded)")
        if self.spans == "diff" and not self.policy:
            raise ValueError("policy: spans: diff needs a checkpoint or hub id for its tokenizer")
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if self.min_match < 1:
            raise ValueError("min_match must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")


def _with_diff_spans(record: dict, tokenizer, gamma: float, min_match: int) -> dict:
    """The record with Muffin's diff spans on both sides; raises SkipRow for a pair with nothing to prefer."""
    chosen, rejected = record["chosen"], record["rejected"]
    if not chosen.strip() or not rejected.strip():
        raise SkipRow("empty_response", "chosen or rejected is empty")
    if chosen == rejected:
        raise SkipRow("chosen_equals_rejected", "chosen and rejected are the same text")
    chosen_spans, rejected_spans = changed_char_spans(chosen, rejected, tokenizer, gamma, min_match)
    if not chosen_spans and not rejected_spans:  # differing texts always leave a span unless the tokens agree
        raise SkipRow("same_tokens", "chosen and rejected tokenize the same")
    validate_spans(chosen, chosen_spans)  # a bad span here is a bug in this module: fail loudly, write nothing
    validate_spans(rejected, rejected_spans)
    return {**record, "chosen_spans": chosen_spans, "rejected_spans": rejected_spans}


def public_preference_spans(
    records: list[dict], tokenizer, gamma: float, min_match: int = 3
) -> tuple[list[dict], dict, list[dict]]:
    """Imported records with diff spans: (kept records, skip counts over PUBLIC_SKIP_REASONS, examples).

    A pair that cannot carry a preference is skipped and counted, never raised, as in the importer: one odd row in
    thousands must not stop a build. The diff settings go into each record's meta so a span can be traced back.
    """
    kept: list[dict] = []
    skipped: Counter = Counter()
    examples: list[dict] = []
    for record in records:
        try:
            record = _with_diff_spans(record, tokenizer, gamma, min_match)
        except SkipRow as skip:
            skipped[skip.reason] += 1
            if len(examples) < MAX_SKIP_EXAMPLES:
                examples.append(
                    {"row": json.loads(record["meta"]).get("row"), "reason": skip.reason, "detail": str(skip)}
                )
            continue
        meta = json.loads(record["meta"]) | {"spans": "diff", "gamma": gamma, "min_match": min_match}
        kept.append({**record, "meta": json.dumps(meta)})
    return kept, {reason: skipped[reason] for reason in PUBLIC_SKIP_REASONS}, examples


def build_public_preferences(cfg: PublicPreferenceConfig) -> dict:
    """Write `output_dir/dataset` (PREFERENCE_FEATURES) and `output_dir/summary.json`; returns the summary.

    summary.json is written before a build with no pair left fails, so the skip counts and examples that explain
    the failure are on disk.
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not Path(cfg.path).exists():  # before the tokenizer, which may come from the hub
        raise FileNotFoundError(f"preference data {cfg.path!r} does not exist (nothing is downloaded: fetch it)")
    tokenizer = _load_tokenizer(cfg.policy) if cfg.spans == "diff" else None  # fail before a long import
    records, report = import_preferences(cfg.path, cfg.format, cfg.limit, cfg.image_dir)
    span_skipped, span_examples = {}, []
    if cfg.spans == "diff":
        records, span_skipped, span_examples = public_preference_spans(records, tokenizer, cfg.gamma, cfg.min_match)
    summary = {
        "dataset": str(out / "dataset"),
        **{k: v for k, v in report.items() if k != "examples"},
        "spans": cfg.spans,
        "gamma": cfg.gamma if cfg.spans == "diff" else None,
        "min_match": cfg.min_match if cfg.spans == "diff" else None,
        "policy": cfg.policy if cfg.spans == "diff" else None,
        "span_skipped": span_skipped,
        "rows_out": len(records),
        "examples": report["examples"] + span_examples,
        "seconds": round(time.time() - t0, 1),
    }
    counts = {k: n for k, n in {**report["skipped"], **span_skipped}.items() if n}
    empty = f"{cfg.path}: no pair left of {report['rows_read']} rows; skipped {counts}"
    return finish_build(out, summary, records, PREFERENCE_FEATURES, empty)
