"""data_builders/io.py: resumable JSONL reads that skip torn lines, and the build's end (summary first)."""

from __future__ import annotations

import json

import pytest
from datasets import Features, Value

from data_builders.io import finish_build, load_opa_dataset, load_preference_dataset, read_jsonl


def test_read_jsonl_keeps_whole_rows_and_skips_torn_ones(tmp_path):
    path = tmp_path / "steps.jsonl"
    assert read_jsonl(path) == {}  # no file yet: nothing done
    lines = [
        json.dumps({"id": "a", "response": "x"}),
        json.dumps({"id": "b"}),  # whole, but without the field the caller needs
        "7",
        json.dumps({"response": "no id"}),
        json.dumps({"id": "c", "response": "y"}),
        '{"id": "d", "resp',  # torn by a kill mid-write
    ]
    path.write_text("\n".join(lines))
    assert list(read_jsonl(path)) == ["a", "b", "c"]
    assert {i: r["response"] for i, r in read_jsonl(path, ("response",)).items()} == {"a": "x", "c": "y"}


def test_finish_build_writes_the_summary_even_when_nothing_is_left(tmp_path):
    features = Features({"id": Value("string")})
    with pytest.raises(ValueError, match="nothing left; see"):
        finish_build(tmp_path, {"rows": 0}, [], features, "nothing left")
    assert json.loads((tmp_path / "summary.json").read_text()) == {"rows": 0}
    assert not (tmp_path / "dataset").exists()
    finish_build(tmp_path, {"rows": 1}, [{"id": "a"}], features, "nothing left")
    assert load_opa_dataset(tmp_path / "dataset")["id"] == ["a"]  # the loader checks only that a dataset is there
    with pytest.raises(ValueError, match="expected PreferenceRecords"):
        load_preference_dataset(tmp_path / "dataset")
    with pytest.raises(FileNotFoundError, match="build-data"):
        load_preference_dataset(tmp_path / "missing")
