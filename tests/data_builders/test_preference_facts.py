"""Facts from a captions file (LLaVA-RLHF's image_to_caption.json) on imported public preference pairs: each image's
captions land in meta.facts, found by the row's path or its file name; rows without a caption are kept and counted;
a broken captions file is one clear error naming it; the reward-model recipe reads the facts back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import PIL.Image
import pytest
from datasets import Image

from align.cli import main as cli
from data_builders.captions import Facts, load_captions, record_facts
from data_builders.io import load_preference_dataset
from data_builders.preference_import import import_preferences

REPO = Path(__file__).resolve().parents[2]
CAPTIONS = {
    "000000000001.png": "A red cup on a wooden table.",
    "000000000002.png": ["A cup and a plate.", "  ", "Breakfast on a table."],
    "000000000009.png": ["An image no row names."],
}


def _png() -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return buf.getvalue()


def _llava_row(row_id: str, image: str, turns: int = 1) -> dict:
    conversations = [{"from": "human", "value": "<image>\nWhat is on the table?"}, {"from": "gpt", "value": "x"}]
    return {
        "id": row_id,
        "image": image,
        "conversations": conversations * turns,
        "output_1": {"from": "gpt", "value": "A red cup."},
        "output_2": {"from": "gpt", "value": "A red cup and a dog."},
        "preference": 1,
    }


@pytest.fixture
def human_pref(tmp_path) -> dict:
    """LLaVA-Human-Preference rows over real PNG files: a string caption, a list caption found by the file name of
    a longer path, an image without a caption, and a multi-turn row (skipped, so not counted for facts)."""
    coco = tmp_path / "coco"
    (coco / "train2017").mkdir(parents=True)
    for name in ("000000000001.png", "000000000003.png", "train2017/000000000002.png"):
        (coco / name).write_bytes(_png())
    rows = [
        _llava_row("a", "000000000001.png"),
        _llava_row("b", "train2017/000000000002.png"),
        _llava_row("c", "000000000003.png"),
        _llava_row("d", "000000000001.png", turns=2),
    ]
    (tmp_path / "pref.json").write_text(json.dumps(rows))
    (tmp_path / "image_to_caption.json").write_text(json.dumps(CAPTIONS))
    return {"path": tmp_path / "pref.json", "captions": tmp_path / "image_to_caption.json", "image_dir": coco}


def test_facts_land_in_meta_and_rows_without_a_caption_are_kept(human_pref):
    records, report = import_preferences(**human_pref, fmt="llava_human_pref")
    assert [r["id"] for r in records] == ["a", "b", "c"] and report["skipped"]["multi_turn"] == 1
    facts = {r["id"]: json.loads(r["meta"]).get("facts") for r in records}
    assert facts == {
        "a": ["A red cup on a wooden table."],
        "b": ["A cup and a plate.", "Breakfast on a table."],  # blank captions dropped
        "c": None,
    }
    assert report["facts"] == {
        "captions": str(human_pref["captions"]),
        "with_facts": 2,
        "without_facts": 1,
        "without_examples": ["c"],
    }
    no_captions = import_preferences(human_pref["path"], "llava_human_pref", image_dir=human_pref["image_dir"])
    assert no_captions[1]["facts"] is None and all("facts" not in json.loads(r["meta"]) for r in no_captions[0])


def test_facts_for_columnar_rows_by_image_path_and_none_for_bytes_only(tmp_path):
    png = _png()
    base = {"question": "Describe the image.", "chosen": "a cup.", "rejected": "a dog."}
    rows = [
        {**base, "idx": "p", "image": {"bytes": png, "path": "images/000000000001.png"}},
        {**base, "idx": "q", "image": {"bytes": png, "path": None}},
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "rlaifv.parquet")
    (tmp_path / "caps.json").write_text(json.dumps(CAPTIONS))
    records, report = import_preferences(tmp_path / "rlaifv.parquet", "rlaif_v", captions=tmp_path / "caps.json")
    assert [json.loads(r["meta"]).get("facts") for r in records] == [["A red cup on a wooden table."], None]
    assert (report["facts"]["with_facts"], report["facts"]["without_facts"]) == (1, 1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", r"not valid JSON .*expected a JSON object mapping image file names"),
        ('["a caption"]', r"got a JSON list; expected a JSON object"),
        ('{"1.jpg": 3}', r"the value of '1.jpg' is not a string or a list of strings"),
        ('{"1.jpg": ["ok", null]}', r"the value of '1.jpg' is not a string or a list of strings"),
    ],
)
def test_a_malformed_captions_file_is_named(tmp_path, human_pref, text, message):
    bad = tmp_path / "bad_captions.json"
    bad.write_text(text)
    with pytest.raises(ValueError, match=f"captions file {bad}: {message}"):
        import_preferences(**{**human_pref, "captions": bad}, fmt="llava_human_pref")


def test_a_missing_captions_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json' does not exist: download image_to_caption.json"):
        load_captions(tmp_path / "nope.json")


def test_imported_facts_feed_the_reward_model(human_pref):
    facts = Facts.load(human_pref["captions"])  # loaded ahead, as the builder does before its tokenizer
    records, _ = import_preferences(**{**human_pref, "captions": facts}, fmt="llava_human_pref")
    assert [record_facts(r) for r in records] == [
        ["A red cup on a wooden table."],
        ["A cup and a plate.", "Breakfast on a table."],
        [],  # recipe reward_model with facts: true skips it as no_facts
    ]


def test_the_shipped_config_builds_with_facts(human_pref, tmp_path, capsys):
    config = str(REPO / "configs/llava15_7b/human_pref_data.yaml")
    inputs = [f"path={human_pref['path']}", f"image_dir={human_pref['image_dir']}"]
    args = [*inputs, f"captions={human_pref['captions']}", f"output_dir={tmp_path / 'out'}"]
    assert cli(["build-data", config, *args]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["rows_out"], summary["facts"]["with_facts"], summary["facts"]["without_facts"]) == (3, 2, 1)
    assert "facts: 2 with, 1 without" in captured.err
    rows = list(load_preference_dataset(summary["dataset"]).cast_column("image", Image(decode=False)))
    assert [record_facts(r) for r in rows][0] == ["A red cup on a wooden table."]

    missing = [*inputs, f"captions={tmp_path / 'missing.json'}", f"output_dir={tmp_path / 'other'}"]
    assert cli(["build-data", config, *missing]) == 2
    assert "missing.json' does not exist" in capsys.readouterr().err
