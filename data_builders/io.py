"""Build I/O shared by every builder: resumable JSONL steps, atomic dataset writes, the end of a build, and the
loaders of what builds write (OPA datasets for the OPA-DPO recipe and data_builders/rlhf_v.py, PreferenceRecord
datasets for DPO/DDPO in align/core/preference.py).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from datasets import Dataset, load_from_disk

from data_builders.schema import PREFERENCE_FEATURES


def read_jsonl(path: Path, fields: tuple[str, ...] = ()) -> dict[str, dict]:
    """id → row of a JSONL file that a resumable step appends to (a missing file is an empty step). A line torn by
    a kill mid-write (not JSON, not an object, or without "id" or one of `fields`) is skipped: that item is done
    again."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and all(key in row for key in ("id", *fields)):
            done[row["id"]] = row
    return done


def save_dataset(dataset: Dataset, path: Path) -> None:
    """Write aside, then swap in: a kill never leaves a half-written dataset at `path`."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".partial-"))
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def finish_build(out: Path, summary: dict, records: list[dict], features, empty: str) -> dict:
    """Write `summary.json`, then the dataset; no record is an error (message `empty`) after the summary is written,
    so the cause can be read there while every cached step (rollouts, expert replies) is kept for the rerun."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
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
