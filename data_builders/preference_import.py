"""Public preference sets → PreferenceRecords: RLHF-V-Dataset, RLAIF-V-Dataset, LLaVA-Human-Preference-10K.

`import_preferences` reads their rows (no spans) from a .parquet, .jsonl or .json file or a `save_to_disk`
folder, with each image's reference captions as the record's facts (meta["facts"]) when given a captions file
(`data_builders.captions`, LLaVA-RLHF's image_to_caption.json). A bad row is skipped and counted by reason, never
raised: one broken image in 83k rows must not stop an import. Nothing is downloaded: fetch the files yourself.
Token weights for RLHF-V's DDPO come from `data_builders.rlhf_v`.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import PIL.Image
from datasets import Image

from data_builders.captions import Facts
from data_builders.configs import Format
from data_builders.importers import _read

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


class SkipRow(Exception):
    """A row that cannot become a record; `reason` is one of SKIP_REASONS, the message says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _text(container: dict, key: str) -> str:
    value = container.get(key)
    if not isinstance(value, str):
        raise SkipRow("missing_field", f"{key}: expected text, got {type(value).__name__}")
    return value


def _rlhf_v_fields(row: dict) -> tuple[str, str, str]:
    text = row.get("text")
    if text is None:
        raise SkipRow("missing_field", "text: missing")
    try:
        data = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as err:
        raise SkipRow("malformed_text_json", f"text: {err}") from None
    if not isinstance(data, dict):
        raise SkipRow("malformed_text_json", f"text: expected a JSON object, got {type(data).__name__}")
    return _text(data, "question"), _text(data, "chosen"), _text(data, "rejected")


def _llava_pref_fields(row: dict) -> tuple[str, str, str]:
    """LLaVA-RLHF's reward-model data puts output_1/output_2 in place of the last gpt turn, so the turn they
    answer is the human turn before it; with earlier turns the prompt would lose its context: skipped."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise SkipRow("missing_field", "conversations: expected a list of {from, value}")
    if turns and turns[-1].get("from") == "gpt":
        turns = turns[:-1]
    if len(turns) > 1:
        raise SkipRow("multi_turn", f"conversations: {len(turns)} turns before the compared answer")
    if not turns or turns[0].get("from") != "human":
        raise SkipRow("missing_field", "conversations: no human turn")
    outputs = [row.get("output_1"), row.get("output_2")]
    if not all(isinstance(o, dict) for o in outputs):
        raise SkipRow("missing_field", "output_1/output_2: expected {from, value}")
    first, second = (_text(o, "value") for o in outputs)
    preference = row.get("preference")
    if isinstance(preference, bool) or preference not in (1, 2):
        raise SkipRow("missing_field", f"preference: expected 1 or 2, got {preference!r}")
    return _text(turns[0], "value"), *((first, second) if preference == 1 else (second, first))


def _checked_image(image, image_dir: Path) -> bytes:
    """Encoded bytes from raw bytes, {"bytes", "path"} or a path (relative to `image_dir`). Decoded once here so
    a corrupt image is skipped at import, not met in the middle of a training run."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, str) and image:
        file = image_dir / image
        if not file.is_file():
            raise SkipRow("bad_image", f"image: file {file} not found")
        image = file.read_bytes()
    if not isinstance(image, (bytes, bytearray)) or not image:
        raise SkipRow("missing_field", "image: no bytes or path")
    try:
        with PIL.Image.open(io.BytesIO(image)) as im:
            im.verify()  # structure and checksums; verify() leaves the image unusable, hence the second open
        with PIL.Image.open(io.BytesIO(image)) as im:
            im.load()  # full decode: catches truncated data that verify() does not read
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise SkipRow("bad_image", f"image: {type(err).__name__}: {err}") from None
    return bytes(image)


def _to_record(row, fmt: Format, index: int, path: Path, image_dir: Path, facts: Facts | None) -> dict:
    if not isinstance(row, dict):
        raise SkipRow("malformed_row", "not a JSON object")
    if fmt == "rlhf_v":
        prompt, chosen, rejected = _rlhf_v_fields(row)
    elif fmt == "rlaif_v":
        prompt, chosen, rejected = _text(row, "question"), _text(row, "chosen"), _text(row, "rejected")
    else:
        prompt, chosen, rejected = _llava_pref_fields(row)
    prompt = _IMAGE_TOKEN.sub(" ", prompt).strip()  # the chat template places the image; a second token breaks it
    if not prompt:
        raise SkipRow("missing_field", "prompt: empty")
    if not chosen.strip() or not rejected.strip():
        raise SkipRow("empty_response", "chosen or rejected is empty")
    if chosen.strip() == rejected.strip():
        raise SkipRow("chosen_equals_rejected", "chosen and rejected are the same text")
    image = _checked_image(row.get("image"), image_dir)
    row_id = row.get("idx", row.get("id"))
    row_id = f"{path.stem}-{index}" if row_id is None or row_id == "" else str(row_id)
    meta = {"dataset": DATASET_NAMES[fmt], "file": str(path), "row": index, "row_id": row_id}
    if row.get("ds_name"):
        meta["ds_name"] = row["ds_name"]
    if facts is not None and (captions := facts.of(row.get("image"), row_id)):
        meta["facts"] = captions
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
    path: str | Path,
    fmt: Format,
    limit: int | None = None,
    image_dir: str | Path | None = None,
    captions: str | Path | Facts | None = None,
) -> tuple[list[dict], dict]:
    """PreferenceRecord dicts (no spans) from a public preference set, and a report of what was read and skipped.

    `path`: a `datasets.save_to_disk` folder, a .parquet file (the hub layout), a .jsonl file, or a .json array
    (LLaVA-Human-Preference-10K's own file). Image paths in rows are resolved against `image_dir` (default: the
    file's folder; LLaVA-Human-Preference names COCO train2017 files). `limit` caps the rows read, so a skipped row
    still counts. The report: rows_read, kept, skipped {reason: count} over SKIP_REASONS, and up to
    MAX_SKIP_EXAMPLES examples {row, reason, detail} to find the bad rows by (`row` is 0-based; in a .jsonl file
    it is the line index, blank lines included, so the line number is row + 1).

    `captions`: a captions file (or a fresh `captions.Facts` loaded from one); each kept record whose image it
    names, by the row's path or its file name, gets those captions as meta["facts"]; the others are kept without
    facts. report["facts"] counts both (with up to 5 row ids without), None without a captions file.
    """
    if fmt not in DATASET_NAMES:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {', '.join(DATASET_NAMES)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"preference data {str(path)!r} does not exist")
    if not path.is_dir() and path.suffix not in (".parquet", ".jsonl", ".json"):
        raise ValueError(f"{path}: expected a save_to_disk folder, a .parquet, .jsonl or .json file")
    image_dir = Path(image_dir) if image_dir is not None else (path if path.is_dir() else path.parent)
    facts = captions if isinstance(captions, Facts) or captions is None else Facts.load(captions)
    skipped: Counter = Counter()
    examples: list[dict] = []
    records, rows_read = [], 0
    for index, row in _rows(path, fmt):
        if limit is not None and rows_read >= limit:
            break
        rows_read += 1
        try:
            records.append(_to_record(row, fmt, index, path, image_dir, facts))
        except SkipRow as skip:
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
        "facts": facts.report() if facts is not None else None,
    }
    return records, report
