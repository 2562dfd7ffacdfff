"""Public preference sets → a PreferenceRecord dataset on disk (`align build-data`, recipe public_preferences): plain
pairs, RLHF-V's diff spans on the changed words only, bad rows counted not raised, the shipped config via the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import PIL.Image
import pytest
from datasets import Image

from align.cli import main as cli
from align.core.models import build_tiny_tokenizer
from data_builders.configs import PublicPreferenceConfig
from data_builders.io import load_preference_dataset
from data_builders.rlhf_v import build_public_preferences

REPO = Path(__file__).resolve().parents[2]
G = 5.0
CHOSEN = "there is a red cup at the top left. a blue knife is at the center."
REJECTED = "there is a red cup at the top left. a blue fork is at the center. a dog is at the right."


def _png() -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return buf.getvalue()


def _row(idx: int, chosen: str = CHOSEN, rejected: str = REJECTED, text: str | None = None) -> dict:
    """One row as RLHF-V-Dataset ships it: the texts as a JSON string, the image as a {bytes, path} struct."""
    qa = {"question": "<image>\nwhat is in the image?", "chosen": chosen, "rejected": rejected}
    return {"idx": idx, "ds_name": "RLHF-V", "text": text or json.dumps(qa), "image": {"bytes": _png(), "path": None}}


@pytest.fixture(scope="module")
def rlhf_v_file(tmp_path_factory) -> Path:
    """A kept pair, a row with broken JSON text, and a pair that differs only in case (the tiny tokenizer lowercases,
    so its tokens agree: kept as a plain pair, skipped by the diff)."""
    path = tmp_path_factory.mktemp("rlhfv") / "RLHF-V-Dataset.parquet"
    rows = [_row(0), _row(1, text="{not json"), _row(2, chosen=CHOSEN.capitalize(), rejected=CHOSEN)]
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer().save_pretrained(path)
    return str(path)


def _rows(dataset_dir: str) -> list[dict]:
    return list(load_preference_dataset(dataset_dir).cast_column("image", Image(decode=False)))


def _texts(text: str, spans: list) -> list[str]:
    return [text[int(s) : int(e)] for s, e, _ in spans]


def test_plain_pairs_have_no_spans(rlhf_v_file, tmp_path):
    summary = build_public_preferences(PublicPreferenceConfig(path=str(rlhf_v_file), output_dir=str(tmp_path)))
    rows = _rows(summary["dataset"])
    assert [r["id"] for r in rows] == ["0", "2"]
    assert all(r["chosen_spans"] == r["rejected_spans"] == [] for r in rows)
    assert rows[0]["prompt"] == "what is in the image?" and rows[0]["image"]["bytes"] == _png()
    assert (summary["rows_read"], summary["rows_out"], summary["skipped"]["malformed_text_json"]) == (3, 2, 1)
    assert summary["examples"][0]["row"] == 1
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_diff_spans_weight_the_changed_words_only(rlhf_v_file, policy, tmp_path):
    cfg = PublicPreferenceConfig(path=str(rlhf_v_file), output_dir=str(tmp_path), spans="diff", policy=policy, gamma=G)
    summary = build_public_preferences(cfg)
    (row,) = _rows(summary["dataset"])
    assert _texts(row["chosen"], row["chosen_spans"]) == ["knife"]
    assert _texts(row["rejected"], row["rejected_spans"]) == ["fork", "a dog is at the right."]
    assert {w for *_, w in row["chosen_spans"] + row["rejected_spans"]} == {G}
    assert json.loads(row["meta"]) | {"file": None} == {
        "dataset": "HaoyeZhang/RLHF-V-Dataset", "file": None, "row": 0, "row_id": "0", "ds_name": "RLHF-V",
        "spans": "diff", "gamma": G, "min_match": 3,
    }  # fmt: skip
    assert summary["span_skipped"] == {"empty_response": 0, "chosen_equals_rejected": 0, "same_tokens": 1}
    assert summary["skipped"]["malformed_text_json"] == 1 and summary["rows_out"] == 1
    assert [(e["row"], e["reason"]) for e in summary["examples"]] == [(1, "malformed_text_json"), (2, "same_tokens")]


def test_no_pair_left_names_the_file_after_writing_the_summary(tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame([_row(0, text="{not json"), _row(1, rejected=CHOSEN)]).to_parquet(path)
    with pytest.raises(ValueError, match=r"bad.parquet: no pair left of 2 rows; skipped .*malformed_text_json': 1"):
        build_public_preferences(PublicPreferenceConfig(path=str(path), output_dir=str(tmp_path / "out")))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rows_out"] == 0
    assert not (tmp_path / "out" / "dataset").exists()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"path": None}, "path: .*required"),
        ({"spans": "diff"}, "policy: spans: diff needs"),
        ({"gamma": 0.0}, "gamma must be > 0"),
        ({"min_match": 0}, "min_match must be >= 1"),
        ({"limit": 0}, "limit must be >= 1"),
    ],
)
def test_config_errors_name_the_field(kw, message):
    with pytest.raises(ValueError, match=message):
        PublicPreferenceConfig(**{"path": "rows.parquet", **kw})


def test_cli_runs_the_shipped_config(rlhf_v_file, policy, tmp_path, capsys):
    config = str(REPO / "configs/llava15_7b/rlhf_v_data.yaml")
    args = [f"path={rlhf_v_file}", "format=rlhf_v", f"output_dir={tmp_path}", f"policy={policy}"]
    assert cli(["build-data", config, *args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["spans"], summary["gamma"], summary["rows_out"]) == ("diff", G, 1)
    (row,) = _rows(summary["dataset"])
    assert _texts(row["chosen"], row["chosen_spans"]) == ["knife"]
    missing = [f"path={tmp_path / 'missing.parquet'}", f"output_dir={tmp_path / 'other'}", f"policy={policy}"]
    assert cli(["build-data", config, *missing]) == 2
    assert "missing.parquet' does not exist" in capsys.readouterr().err
