"""Build I/O shared by every builder: resumable JSONL steps, atomic dataset writes, the end of a build, and the
loaders of what builds write (OPA datasets for the OPA-DPO recipe and data_builders/rlhf_v.py, PreferenceRecord
datasets for DPO/DDPO in align/core/preference.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from datasets import Dataset, load_from_disk

from data_builders.schema import PREFERENCE_FEATURES
from data_builders.summary import counts_line


def read_jsonl(path: Path, fields: tuple[str, ...] = ()) -> dict[str, dict]:
    """id → row of a JSONL file that a resumable step appends to (a missing file is an empty step). A torn tail
    (a kill or power loss mid-write) is cut off the file first (`jsonl_rows`), so the next append starts a line
    of its own; a line that is not a JSON object with "id" and every one of `fields` is skipped: that item is done
    again. The last row of an id wins."""
    return {row["id"]: row for row in jsonl_rows(path, fields)}


def jsonl_rows(path: Path, fields: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a resumable JSONL step in file order, after `cut_torn_tail`; rows that are not a JSON object
    with "id" and `fields` are left out."""
    if not path.exists():
        return []
    cut_torn_tail(path)
    rows = []
    for line in path.read_bytes().split(b"\n"):
        row = _json_line(line)
        if isinstance(row, dict) and all(key in row for key in ("id", *fields)):
            rows.append(row)
    return rows


def cut_torn_tail(path: Path) -> int:
    """Truncate `path` after its last complete line: one that ends in a newline and is valid JSON. Appends write
    whole lines, so anything after it was torn by a kill mid-write; without the cut the next append would be glued
    to it and lost too. Returns the bytes cut (0 when the file ends cleanly)."""
    data = path.read_bytes()
    end = len(data)
    while end:
        if data[end - 1 : end] != b"\n":  # an unfinished last line
            end = data.rfind(b"\n", 0, end) + 1
            continue
        start = data.rfind(b"\n", 0, end - 1) + 1
        if not data[start : end - 1].strip() or _json_line(data[start : end - 1]) is not None:
            break
        end = start  # a finished line that is not JSON: the torn end of an earlier write
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return len(data) - end


def append_jsonl(f, rows: list[dict]) -> None:
    """Append `rows` to the open file `f` in one write and push them to disk, so a finished step survives a power
    loss and a kill leaves at most one torn tail."""
    f.write("".join(json.dumps(row) + "\n" for row in rows))
    f.flush()
    os.fsync(f.fileno())


def rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    """Replace `path` by `rows`, written aside and swapped in (a kill leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w") as f:
        append_jsonl(f, rows)
    os.replace(tmp, path)


def _json_line(line: bytes):
    """The JSON value of one line, None when it is not JSON (torn, or not UTF-8)."""
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def save_dataset(dataset: Dataset, path: Path) -> None:
    """Write aside, then swap in: a kill never leaves a half-written dataset at `path`."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".partial-"))
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def finish_build(out: Path, summary: dict, records: list[dict], features, empty: str) -> dict:
    """Write `summary.json`, say what the build did in one line, then write the dataset; no record is an error
    (message `empty`) after the summary is written, so the cause can be read there while every cached step
    (rollouts, expert replies) is kept for the rerun."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[build] {counts_line(summary)}", file=sys.stderr)  # stdout is the summary JSON the CLI prints
    if not records:
        raise ValueError(f"{empty}; see {out / 'summary.json'} and rerun once the cause is fixed")
    save_dataset(Dataset.from_list(records, features=features), out / "dataset")
    return summary


def load_opa_dataset(path: str | Path) -> Dataset:
    path = Path(path)
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{path} is not an OPA dataset: build it with `align build-data <opa config>`")
    return load_from_disk(str(path))


def load_preference_dataset(path: str | Path) -> Dataset:
    path = Path(path)
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{path} is not a preference dataset: build it with `align build-data <config>`")
    dataset = load_from_disk(str(path))
    missing = [name for name in PREFERENCE_FEATURES if name not in dataset.column_names]
    if missing:
        raise ValueError(f"{path}: no column(s) {', '.join(missing)}; expected PreferenceRecords")
    return dataset
