"""Import public preference rows as prompts for on-policy data (OPA-DPO's recipe uses RLAIF-V's prompts).

RLAIF-V-style rows carry `image`, `question`, `chosen` (and usually `rejected`). As OPA-DPO does, `chosen` becomes
the reference answer; `rejected` is kept as the off-policy answer of the DPO baseline. Accepted sources: a folder
written by `datasets.save_to_disk`, a `.parquet` file (the layout of openbmb/RLAIF-V-Dataset on the hub), or a
`.jsonl` file whose `image` is a path relative to the file. Nothing is downloaded: fetch the files yourself.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, Image, load_from_disk

REQUIRED = ("image", "question", "chosen")


class PublicRowError(ValueError):
    """A public row or file cannot be used; the message names the file, the row and what is wrong."""


def _read(path: Path) -> Dataset:
    if path.is_dir():
        return load_from_disk(str(path))
    if path.suffix == ".parquet":
        return Dataset.from_parquet(str(path))
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            if isinstance(row.get("image"), str):
                row["image"] = {"bytes": (path.parent / row["image"]).read_bytes(), "path": None}
        return Dataset.from_list(rows)
    raise PublicRowError(f"{path}: expected a save_to_disk folder, a .parquet or a .jsonl file")


def _image_bytes(image, where: str) -> bytes:
    data = image.get("bytes") if isinstance(image, dict) else None
    if isinstance(image, dict) and not data and image.get("path"):
        data = Path(image["path"]).read_bytes()
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise PublicRowError(f"{where}: no image bytes; every row needs one image")
    return bytes(data)


def public_prompts(path: str | Path, limit: int | None = None) -> list[dict]:
    """Prompts `{id, image, prompt, reference, offpolicy, objects}` from RLAIF-V-style rows."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist")
    data = _read(path)
    missing = [c for c in REQUIRED if c not in data.column_names]
    if missing:
        raise PublicRowError(f"{path}: missing column(s) {', '.join(missing)}; rows need {', '.join(REQUIRED)}")
    if isinstance(data.features.get("image"), Image):
        data = data.cast_column("image", Image(decode=False))
    n = len(data) if limit is None else min(limit, len(data))
    out = []
    for i, row in enumerate(data.select(range(n))):
        row_id = str(row.get("idx") or row.get("id") or f"{path.stem}-{i}")
        where = f"{path} row {i} ({row_id})"
        if not row["question"] or not row["chosen"]:
            raise PublicRowError(f"{where}: empty question or chosen answer")
        out.append(
            {
                "id": row_id,
                "image": _image_bytes(row["image"], where),
                "prompt": row["question"],
                "reference": row["chosen"],
                "offpolicy": row.get("rejected") or "",
                "objects": None,
            }
        )
    return out
