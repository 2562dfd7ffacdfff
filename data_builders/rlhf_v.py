"""RLHF-V / RLAIF-V preference data: fine-grained correction weights, and importers for public preference sets.

RLHF-V's DDPO up-weights (by gamma) the tokens a human corrected. Its training code (thunlp/Muffin,
`utils/diff_lib.py:get_diff_ids`) finds them by diffing the token ids of the rejected (original) and chosen
(corrected) answers and ignoring matches shorter than 3 tokens. `changed_char_spans` runs that diff and stores the
result as weighted character spans, the PreferenceRecord format, which the collator maps back to tokens through
the tokenizer's offsets (`align.losses.span_token_weights`). `report_char_spans` gives the same spans from an
OPA-DPO expert report, where the changed sentences are known without a diff.

`import_preferences` turns public rows (RLHF-V-Dataset, RLAIF-V-Dataset, LLaVA-Human-Preference-10K) into
PreferenceRecords with no spans. A bad row is skipped and counted by reason, never raised: one broken image in
83k rows must not stop an import. Nothing is downloaded: fetch the files yourself.

This package never imports `align` (DESIGN.md), so the expert-report text rule is restated here; the tests pin it
to `align.losses.report_spans` and `ExpertReport.revision`.
"""

from __future__ import annotations

import difflib
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import PIL.Image
from datasets import Image

from data_builders.experts import ExpertReport
from data_builders.importers import _read

Format = Literal["rlhf_v", "rlaif_v", "llava_human_pref"]
DATASET_NAMES = {
    "rlhf_v": "HaoyeZhang/RLHF-V-Dataset",
    "rlaif_v": "openbmb/RLAIF-V-Dataset",
    "llava_human_pref": "zhiqings/LLaVA-Human-Preference-10K",
}
REQUIRED_COLUMNS = {
    "rlhf_v": ("text", "image"),
    "rlaif_v": ("question", "chosen", "rejected", "image"),
    "llava_human_pref": ("conversations", "output_1", "output_2", "preference", "image"),
}
SKIP_REASONS = (
    "malformed_row",  # a .jsonl line or .json entry that is not a JSON object
    "malformed_text_json",
    "missing_field",
    "multi_turn",  # LLaVA-Human-Preference rows whose outputs answer a later turn; a record holds one prompt
    "empty_response",
    "chosen_equals_rejected",
    "bad_image",
)
MAX_SKIP_EXAMPLES = 50
_IMAGE_TOKEN = re.compile(r"\s*<image>\s*")


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


# ---------------------------------------------------------------- public preference sets


class _SkipRow(Exception):
    """A row that cannot become a record; `reason` is one of SKIP_REASONS, the message says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _text(container: dict, key: str) -> str:
    value = container.get(key)
    if not isinstance(value, str):
        raise _SkipRow("missing_field", f"{key}: expected text, got {type(value).__name__}")
    return value


def _rlhf_v_fields(row: dict) -> tuple[str, str, str]:
    text = row.get("text")
    if text is None:
        raise _SkipRow("missing_field", "text: missing")
    try:
        data = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as err:
        raise _SkipRow("malformed_text_json", f"text: {err}") from None
    if not isinstance(data, dict):
        raise _SkipRow("malformed_text_json", f"text: expected a JSON object, got {type(data).__name__}")
    return _text(data, "question"), _text(data, "chosen"), _text(data, "rejected")


def _llava_pref_fields(row: dict) -> tuple[str, str, str]:
    """LLaVA-RLHF's reward-model data puts output_1/output_2 in place of the last gpt turn, so the turn they
    answer is the human turn before it; with earlier turns the prompt would lose its context: skipped."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise _SkipRow("missing_field", "conversations: expected a list of {from, value}")
    if turns and turns[-1].get("from") == "gpt":
        turns = turns[:-1]
    if len(turns) > 1:
        raise _SkipRow("multi_turn", f"conversations: {len(turns)} turns before the compared answer")
    if not turns or turns[0].get("from") != "human":
        raise _SkipRow("missing_field", "conversations: no human turn")
    outputs = [row.get("output_1"), row.get("output_2")]
    if not all(isinstance(o, dict) for o in outputs):
        raise _SkipRow("missing_field", "output_1/output_2: expected {from, value}")
    first, second = (_text(o, "value") for o in outputs)
    preference = row.get("preference")
    if isinstance(preference, bool) or preference not in (1, 2):
        raise _SkipRow("missing_field", f"preference: expected 1 or 2, got {preference!r}")
    return _text(turns[0], "value"), *((first, second) if preference == 1 else (second, first))


def _checked_image(image, image_dir: Path) -> bytes:
    """Encoded bytes from raw bytes, {"bytes", "path"} or a path (relative to `image_dir`). Decoded once here so
    a corrupt image is skipped at import, not met in the middle of a training run."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, str) and image:
        file = image_dir / image
        if not file.is_file():
            raise _SkipRow("bad_image", f"image: file {file} not found")
        image = file.read_bytes()
    if not isinstance(image, (bytes, bytearray)) or not image:
        raise _SkipRow("missing_field", "image: no bytes or path")
    try:
        with PIL.Image.open(io.BytesIO(image)) as im:
            im.verify()  # structure and checksums; verify() leaves the image unusable, hence the second open
        with PIL.Image.open(io.BytesIO(image)) as im:
            im.load()  # full decode: catches truncated data that verify() does not read
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise _SkipRow("bad_image", f"image: {type(err).__name__}: {err}") from None
    return bytes(image)


def _to_record(row, fmt: Format, index: int, path: Path, image_dir: Path) -> dict:
    if not isinstance(row, dict):
        raise _SkipRow("malformed_row", "not a JSON object")
    if fmt == "rlhf_v":
        prompt, chosen, rejected = _rlhf_v_fields(row)
    elif fmt == "rlaif_v":
        prompt, chosen, rejected = _text(row, "question"), _text(row, "chosen"), _text(row, "rejected")
    else:
        prompt, chosen, rejected = _llava_pref_fields(row)
    prompt = _IMAGE_TOKEN.sub(" ", prompt).strip()  # the chat template places the image; a second token breaks it
    if not prompt:
        raise _SkipRow("missing_field", "prompt: empty")
    if not chosen.strip() or not rejected.strip():
        raise _SkipRow("empty_response", "chosen or rejected is empty")
    if chosen.strip() == rejected.strip():
        raise _SkipRow("chosen_equals_rejected", "chosen and rejected are the same text")
    image = _checked_image(row.get("image"), image_dir)
    row_id = row.get("idx", row.get("id"))
    row_id = f"{path.stem}-{index}" if row_id is None or row_id == "" else str(row_id)
    meta = {"dataset": DATASET_NAMES[fmt], "file": str(path), "row": index, "row_id": row_id}
    if row.get("ds_name"):
        meta["ds_name"] = row["ds_name"]
    return {
        "id": row_id,
        "image": {"bytes": image, "path": None},
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_spans": [],
        "rejected_spans": [],
        "source": DATASET_NAMES[fmt],
        "meta": json.dumps(meta),
    }


def _rows(path: Path, fmt: Format) -> Iterator[tuple[int, object]]:
    """(row index, row) pairs. Text files are parsed line by line so one broken line is one skipped row; columnar
    sources go through `importers._read` and must have the format's columns (a missing one means the wrong fmt)."""
    if path.suffix == ".jsonl":
        with path.open() as lines:
            for index, line in enumerate(lines):
                if line.strip():
                    try:
                        yield index, json.loads(line)
                    except json.JSONDecodeError:
                        yield index, None
        return
    if path.suffix == ".json":  # LLaVA-Human-Preference-10K ships as one JSON array
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); expected an array of rows") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON array of rows, got {type(rows).__name__}")
        yield from enumerate(rows)
        return
    data = _read(path)
    missing = [c for c in REQUIRED_COLUMNS[fmt] if c not in data.column_names]
    if missing:
        raise ValueError(
            f"{path}: no column(s) {', '.join(missing)}; {fmt} rows ({DATASET_NAMES[fmt]}) need "
            f"{', '.join(REQUIRED_COLUMNS[fmt])}. Is this another format?"
        )
    if isinstance(data.features.get("image"), Image):
        data = data.cast_column("image", Image(decode=False))
    yield from enumerate(data)


def import_preferences(
    path: str | Path, fmt: Format, limit: int | None = None, image_dir: str | Path | None = None
) -> tuple[list[dict], dict]:
    """PreferenceRecord dicts (no spans) from a public preference set, and a report of what was read and skipped.

    `path`: a `datasets.save_to_disk` folder, a .parquet file (the hub layout), a .jsonl file, or a .json array
    (LLaVA-Human-Preference-10K's own file). Image paths in rows are resolved against `image_dir` (default: the
    file's folder; LLaVA-Human-Preference names COCO train2017 files). `limit` caps the rows read, so a skipped row
    still counts. The report: rows_read, kept, skipped {reason: count} over SKIP_REASONS, and up to
    MAX_SKIP_EXAMPLES examples {row, reason, detail} to find the bad rows by (`row` is 0-based; in a .jsonl file
    it is the line index, blank lines included, so the line number is row + 1).
    """
    if fmt not in DATASET_NAMES:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {', '.join(DATASET_NAMES)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"preference data {str(path)!r} does not exist")
    if not path.is_dir() and path.suffix not in (".parquet", ".jsonl", ".json"):
        raise ValueError(f"{path}: expected a save_to_disk folder, a .parquet, .jsonl or .json file")
    image_dir = Path(image_dir) if image_dir is not None else (path if path.is_dir() else path.parent)
    skipped: Counter = Counter()
    examples: list[dict] = []
    records, rows_read = [], 0
    for index, row in _rows(path, fmt):
        if limit is not None and rows_read >= limit:
            break
        rows_read += 1
        try:
            records.append(_to_record(row, fmt, index, path, image_dir))
        except _SkipRow as skip:
            skipped[skip.reason] += 1
            if len(examples) < MAX_SKIP_EXAMPLES:
                examples.append({"row": index, "reason": skip.reason, "detail": str(skip)})
    report = {
        "path": str(path),
        "format": fmt,
        "rows_read": rows_read,
        "kept": len(records),
        "skipped": {reason: skipped[reason] for reason in SKIP_REASONS},
        "examples": examples,
    }
    return records, report
