"""RLHF-V preference data: RLHF-V pairs built from OPA-DPO records, and public preference sets with RLHF-V's spans.

RLHF-V's DDPO up-weights (by gamma) the tokens a human corrected, stored as weighted character spans (the
PreferenceRecord format) that the collator maps back to tokens through the tokenizer's offsets. The span rules are
data_builders/spans.py's: `changed_char_spans` (Muffin's token-id diff) and `report_spans(weights="corrected")`
(the sentences an OPA-DPO expert flagged, no diff needed); `report_char_spans` applies the latter to both sides of a
report. `preferences_from_opa` turns a whole OPA dataset into such pairs (revision over rollout), so RLHF-V's DDPO
can be compared with OPA-DPO on equal data:

    align build-data configs/toy/preference_data.yaml   # runs/opa_data/dataset → runs/pref_data/dataset

Public preference sets (RLHF-V-Dataset, RLAIF-V-Dataset, LLaVA-Human-Preference-10K) are read by
`data_builders.preference_import`; `build_public_preferences` writes them as a PreferenceRecord dataset, with the
same diff spans if asked (nothing is downloaded: fetch the file yourself):

    align build-data configs/llava15_7b/rlhf_v_data.yaml   # RLHF-V-Dataset.parquet → runs/llava15_7b/rlhf_v_data

Loading the OPA dataset and writing the result go through data_builders/io.py.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from datasets import Image

from data_builders.captions import Facts
from data_builders.configs import PreferenceDataConfig, PublicPreferenceConfig
from data_builders.experts import ExpertReplyError
from data_builders.hub import check_pretrained, hub_errors
from data_builders.io import finish_build, load_opa_dataset
from data_builders.preference_import import MAX_SKIP_EXAMPLES, SkipRow, import_preferences
from data_builders.schema import PREFERENCE_FEATURES
from data_builders.spans import changed_char_spans, report_spans, validate_spans


def report_char_spans(report: dict, gamma: float) -> tuple[str, list[list[float]], str, list[list[float]]]:
    """(chosen = revision, its spans, rejected = rollout, its spans) of an OPA-DPO expert report, with gamma on what
    the expert corrected (`report_spans(weights="corrected")`); raises ExpertReplyError for a malformed report."""
    chosen, chosen_spans = report_spans(report, "revision", "corrected", gamma)
    rejected, rejected_spans = report_spans(report, "rollout", "corrected", gamma)
    return chosen, [list(s) for s in chosen_spans], rejected, [list(s) for s in rejected_spans]


# ---------------------------------------------------------------- equal-data pairs from OPA-DPO records

OPA_SKIP_REASONS = (
    "uncorrected",  # the revision equals the rollout: RLHF-V discards responses without a hallucination
    "empty_response",
    "malformed_report",
)


def _image_field(image) -> dict:
    """The stored-image dict of PREFERENCE_FEATURES from an undecoded dataset cell or raw bytes."""
    return image if isinstance(image, dict) else {"bytes": image, "path": None}


def _opa_pair(row: dict, gamma: float, spans: str, tokenizer, min_match: int, chosen_from: str = "revision") -> dict:
    """One OPA record as an RLHF-V pair (chosen = revision, or the reference answer; rejected = rollout); raises
    SkipRow."""
    try:
        chosen, chosen_spans, rejected, rejected_spans = report_char_spans(json.loads(row["report"]), gamma)
    except (json.JSONDecodeError, TypeError, ExpertReplyError) as err:
        raise SkipRow("malformed_report", f"report: {err}") from None
    if chosen_from == "reference":  # not an edit of the rollout: only a token diff can place its spans
        chosen = (row.get("reference") or "").strip()
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
    opa_dataset,
    gamma: float,
    spans: Literal["report", "diff"] = "report",
    tokenizer=None,
    min_match: int = 3,
    chosen: Literal["revision", "reference"] = "revision",
) -> tuple[list[dict], dict]:
    """RLHF-V pairs on exactly the data OPA-DPO trains on: chosen = the expert's revision, rejected = the policy's
    rollout, both rebuilt from the report (`report_char_spans`) so the spans line up with the texts. With
    `chosen="reference"` the chosen answer is the record's reference (an answer the policy did not write; spans
    "diff" only).

    spans="report": gamma on the sentences the expert flagged (and its added text); spans="diff": gamma on the
    tokens Muffin's token-id diff marks changed (`changed_char_spans`; needs the policy's `tokenizer`).
    `opa_dataset` is an OPA dataset (OPA_FEATURES) or a list of its rows. Rows the expert left unchanged are
    skipped (RLHF-V keeps only corrected responses), as are empty sides and malformed reports; returns
    (PreferenceRecord dicts, counts {rows_in, rows_out, skipped {reason: n}}).
    """
    if spans not in ("report", "diff"):
        raise ValueError(f"spans must be 'report' or 'diff', got {spans!r}")
    if chosen not in ("revision", "reference"):
        raise ValueError(f"chosen must be 'revision' or 'reference', got {chosen!r}")
    if chosen == "reference" and spans != "diff":
        raise ValueError("chosen='reference' needs spans='diff': the expert's report marks edits of the rollout")
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
            pair = _opa_pair(row, gamma, spans, tokenizer, min_match, chosen)
        except SkipRow as skip:
            skipped[skip.reason] += 1
            continue
        meta = {"builder": "preferences_from_opa", "row": index, "spans": spans, "gamma": gamma, "chosen": chosen}
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


def _load_tokenizer(policy: str):
    """The policy's tokenizer for the token-id diff. Never trust_remote_code: a config file must not run code."""
    from transformers import AutoTokenizer  # only here: spans "none"/"report" need no tokenizer

    check_pretrained(policy, "tokenizer (policy)")  # seconds, not a minute of hub retries, when it cannot be had
    with hub_errors(policy, "tokenizer (policy)"):
        return AutoTokenizer.from_pretrained(policy, trust_remote_code=False)


def build_preference_data(cfg: PreferenceDataConfig) -> dict:
    """Write `output_dir/dataset` (PREFERENCE_FEATURES) and `output_dir/summary.json`; returns the summary."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tokenizer = _load_tokenizer(cfg.policy) if cfg.spans == "diff" else None
    records, counts = preferences_from_opa(
        load_opa_dataset(cfg.opa_dataset), cfg.gamma, cfg.spans, tokenizer, cfg.min_match, cfg.chosen
    )
    summary = {
        "dataset": str(out / "dataset"),
        "opa_dataset": cfg.opa_dataset,
        "gamma": cfg.gamma,
        "spans": cfg.spans,
        "chosen": cfg.chosen,
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
    facts = Facts.load(cfg.captions) if cfg.captions else None  # a missing or malformed file fails here too
    tokenizer = _load_tokenizer(cfg.policy) if cfg.spans == "diff" else None  # fail before a long import
    records, report = import_preferences(cfg.path, cfg.format, cfg.limit, cfg.image_dir, facts)
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
