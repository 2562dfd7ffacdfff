"""Import public preference rows as prompts for on-policy data (OPA-DPO's recipe uses RLAIF-V's prompts).

RLAIF-V-style rows carry `image`, `question`, `chosen` (and usually `rejected`). As OPA-DPO does, `chosen` becomes
the reference answer; `rejected` is kept as the off-policy answer of the DPO baseline. Accepted sources: a folder
written by `datasets.save_to_disk`, a `.parquet` file (the layout of openbmb/RLAIF-V-Dataset on the hub), or a
`.jsonl` file. An image given as a path (a string, or `{"path": ...}` without bytes) is resolved against the file's
folder (a save_to_disk folder: that folder), not the working directory. A bad row (a line that is not JSON, an
empty question or reference, an image that is missing or does not decode) is skipped and counted by reason with
where it is (`<file>:<line>` in a .jsonl file), never raised for the whole file. Nothing is downloaded: fetch the
files yourself.
"""

from __future__ import annotations

import collections
import io
import json
from collections.abc import Iterator
from pathlib import Path

import PIL.Image
from datasets import Dataset, Image, load_from_disk

REQUIRED = ("image", "question", "chosen")
SKIP_REASONS = ("malformed_row", "empty_question", "empty_reference", "bad_image")
MAX_SKIP_EXAMPLES = 50


class PublicRowError(ValueError):
    """A public file cannot be used; the message names the file, the row and what is wrong."""


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _read(path: Path) -> Dataset:
    """A columnar source: a save_to_disk folder or a .parquet file."""
    if path.is_dir():
        return load_from_disk(str(path))
    if path.suffix == ".parquet":
        return Dataset.from_parquet(str(path))
    raise PublicRowError(f"{path}: expected a save_to_disk folder, a .parquet or a .jsonl file")


def _rows(path: Path) -> Iterator[tuple[str, object]]:
    """(where, row) per row; `where` is `<file>:<line>` for a .jsonl file (1-based, blank lines counted), the file
    otherwise. A .jsonl line that is not JSON comes as a _Skip in place of the row."""
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield f"{path}:{number}", _Skip("malformed_row", f"not a JSON line ({e})")
        return
    data = _read(path)
    missing = [c for c in REQUIRED if c not in data.column_names]
    if missing:
        raise PublicRowError(f"{path}: missing column(s) {', '.join(missing)}; rows need {', '.join(REQUIRED)}")
    if isinstance(data.features.get("image"), Image):
        data = data.cast_column("image", Image(decode=False))
    for row in data:
        yield str(path), row


def _image_bytes(image, root: Path) -> bytes:
    """Encoded bytes of a row's image (bytes, {"bytes", "path"} or a path relative to `root`), decoded once here
    so a corrupt image is skipped now, not met in the middle of a rollout."""
    if isinstance(image, str):
        image = {"bytes": None, "path": image}
    data = image.get("bytes") if isinstance(image, dict) else image
    if isinstance(image, dict) and not data and image.get("path"):
        file = root / image["path"]
        if not file.is_file():
            raise _Skip("bad_image", f"image file {file} not found")
        data = file.read_bytes()
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise _Skip("bad_image", "no image bytes; every row needs one image")
    try:
        with PIL.Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise _Skip("bad_image", f"image does not decode ({type(e).__name__}: {e})") from None
    return bytes(data)


def _prompt(row, index: int, path: Path, root: Path) -> dict:
    if not isinstance(row, dict):
        raise _Skip("malformed_row", f"expected a JSON object, got {type(row).__name__}")
    question, chosen = row.get("question"), row.get("chosen")
    if not isinstance(question, str) or not question.strip():
        raise _Skip("empty_question", "empty or missing question")
    if not isinstance(chosen, str) or not chosen.strip():
        raise _Skip("empty_reference", "empty or missing chosen answer (the reference)")
    return {
        "id": str(row.get("idx") or row.get("id") or f"{path.stem}-{index}"),
        "image": _image_bytes(row.get("image"), root),
        "prompt": question,
        "reference": chosen,
        "offpolicy": row.get("rejected") or "",
        "objects": None,
    }


def read_public_prompts(path: str | Path, limit: int | None = None) -> tuple[list[dict], dict]:
    """(prompts `{id, image, prompt, reference, offpolicy, objects}` from RLAIF-V-style rows, a report {path,
    rows_read, kept, skipped: {reason: count}, examples: [{row, reason, detail}]}). `limit` caps the rows read, a
    skipped row included, so the same rows are read whatever is skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist")
    root = path if path.is_dir() else path.parent
    prompts, skipped, examples, rows_read = [], collections.Counter(), [], 0
    for index, (where, row) in enumerate(_rows(path)):
        if limit is not None and rows_read >= limit:
            break
        rows_read += 1
        row_id = row.get("idx") or row.get("id") if isinstance(row, dict) else None
        where = f"{where}: row {index}" + (f" ({row_id})" if row_id else "")
        try:
            if isinstance(row, _Skip):
                raise row
            prompts.append(_prompt(row, index, path, root))
        except _Skip as skip:
            skipped[skip.reason] += 1
            if len(examples) < MAX_SKIP_EXAMPLES:
                examples.append({"row": where, "reason": skip.reason, "detail": str(skip)})
    report = {"path": str(path), "rows_read": rows_read, "kept": len(prompts), "skipped": dict(skipped)}
    return prompts, {**report, "examples": examples}


def public_prompts(path: str | Path, limit: int | None = None) -> list[dict]:
    """The prompts of `read_public_prompts`, bad rows left out; a file without one usable row is an error that
    names the first bad rows."""
    prompts, report = read_public_prompts(path, limit)
    if not prompts:
        first = "; ".join(f"{e['row']}: {e['detail']}" for e in report["examples"][:3])
        raise PublicRowError(f"{path}: no usable row of {report['rows_read']} ({report['skipped']}): {first}")
    return prompts
