"""Public preference-set importers: RLHF-V-Dataset, RLAIF-V-Dataset and LLaVA-Human-Preference-10K rows in
their own formats, with bad rows of every kind counted, listed and skipped."""

from __future__ import annotations

import io
import json

import pandas as pd
import PIL.Image
import pytest
from datasets import Dataset, Features, Image, Value

from data_builders import preference_import
from data_builders.preference_import import import_preferences
from data_builders.schema import PREFERENCE_FEATURES
from data_builders.spans import changed_char_spans

G = 5.0  # gamma


def _png(color: str = "red") -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
TRUNCATED_PNG = _png("blue")[:-20]  # cut inside the data: the header still opens


@pytest.fixture(scope="module")
def tokenizer():
    from align.core.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


# ---------------------------------------------------------------- importers


def _rlhf_v_rows() -> list[dict]:
    def text(
        question="What is shown?",
        chosen="there is a red cup on the table.",
        rejected="there is a blue cup on the table.",
    ):
        return json.dumps({"question": question, "chosen": chosen, "rejected": rejected})

    image = {"bytes": PNG, "path": "a.png"}
    return [
        {"idx": 10, "ds_name": "RLHF-V", "text": text("<image>\nWhat is shown?"), "image": image},  # kept
        {"idx": 11, "ds_name": "RLHF-V", "text": "{not json", "image": image},
        {"idx": 12, "ds_name": "RLHF-V", "text": json.dumps({"question": "q", "chosen": "c"}), "image": image},
        {"idx": 13, "ds_name": "RLHF-V", "text": text(chosen="  "), "image": image},
        {"idx": 14, "ds_name": "RLHF-V", "text": text(rejected="there is a red cup on the table. "), "image": image},
        {"idx": 15, "ds_name": "RLHF-V", "text": text(), "image": {"bytes": b"not an image", "path": None}},
        {"idx": 16, "ds_name": "RLHF-V", "text": text(), "image": {"bytes": TRUNCATED_PNG, "path": None}},
        {"idx": 17, "ds_name": "RLHF-V", "text": text(chosen="two cups."), "image": image},  # kept
    ]


def _counts(report: dict) -> dict:
    return {reason: n for reason, n in report["skipped"].items() if n}


def _check_dataset(records: list[dict]) -> None:
    data = Dataset.from_list(records, features=PREFERENCE_FEATURES)
    assert data[0]["image"].size == (4, 4)


def test_rlhf_v_parquet_counts_every_skip_reason(tmp_path):
    pd.DataFrame(_rlhf_v_rows()).to_parquet(tmp_path / "rlhfv.parquet")  # image as a {bytes, path} struct
    records, report = import_preferences(tmp_path / "rlhfv.parquet", "rlhf_v")
    assert report["rows_read"] == 8 and report["kept"] == 2
    assert _counts(report) == {
        "malformed_text_json": 1,
        "missing_field": 1,
        "empty_response": 1,
        "chosen_equals_rejected": 1,
        "bad_image": 2,
    }
    assert [(e["row"], e["reason"]) for e in report["examples"]][:2] == [
        (1, "malformed_text_json"),
        (2, "missing_field"),
    ]
    assert "rejected" in report["examples"][1]["detail"]
    first = records[0]
    assert (first["id"], first["prompt"], first["chosen"], first["rejected"]) == (
        "10", "What is shown?", "there is a red cup on the table.", "there is a blue cup on the table."
    )  # fmt: skip
    assert first["image"] == {"bytes": PNG, "path": None} and first["chosen_spans"] == first["rejected_spans"] == []
    assert first["source"] == "HaoyeZhang/RLHF-V-Dataset"
    assert json.loads(first["meta"]) | {"file": None} == {
        "dataset": "HaoyeZhang/RLHF-V-Dataset", "file": None, "row": 0, "row_id": "10", "ds_name": "RLHF-V"
    }  # fmt: skip
    _check_dataset(records)
    assert import_preferences(tmp_path / "rlhfv.parquet", "rlhf_v", limit=3)[1]["rows_read"] == 3


def test_rlaif_v_save_to_disk_and_jsonl(tmp_path):
    features = Features({k: Value("string") for k in ("idx", "question", "chosen", "rejected")} | {"image": Image()})
    good = {"idx": "r0", "question": "Describe the image.", "chosen": "a cup.", "rejected": "a dog.", "image": PNG}
    bad = {**good, "idx": "r1", "image": b"\x89PNG broken"}
    Dataset.from_list([good, bad], features=features).save_to_disk(str(tmp_path / "rlaifv"))
    records, report = import_preferences(tmp_path / "rlaifv", "rlaif_v")
    assert (report["kept"], _counts(report)) == (1, {"bad_image": 1})
    assert (records[0]["prompt"], records[0]["chosen"], records[0]["rejected"]) == (
        "Describe the image.",
        "a cup.",
        "a dog.",
    )
    _check_dataset(records)

    (tmp_path / "img.png").write_bytes(PNG)
    lines = [
        json.dumps({**good, "image": "img.png"}),
        "{torn line",
        "",
        json.dumps({**good, "idx": "r2", "image": "missing.png"}),
        json.dumps({k: v for k, v in good.items() if k != "question"} | {"image": "img.png"}),
        json.dumps({**good, "idx": "r4", "rejected": "", "image": "img.png"}),
        json.dumps(["not", "an", "object"]),
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    records, report = import_preferences(tmp_path / "rows.jsonl", "rlaif_v")
    assert report["rows_read"] == 6 and report["kept"] == 1
    assert _counts(report) == {"malformed_row": 2, "bad_image": 1, "missing_field": 1, "empty_response": 1}
    assert [e["row"] for e in report["examples"]] == [1, 3, 4, 5, 6]  # line numbers minus one
    assert records[0]["image"]["bytes"] == PNG
    _check_dataset(records)


def _llava_row(preference, conversations=None, **kw) -> dict:
    return {
        "id": "coco-1",
        "image": "000001.png",
        "conversations": conversations
        or [{"from": "human", "value": "<image>\nWhat is on the table?"}, {"from": "gpt", "value": "A cup."}],
        "output_1": {"from": "gpt", "value": "A red cup."},
        "output_2": {"from": "gpt", "value": "A red cup and a dog."},
        "preference": preference,
        **kw,
    }


def test_llava_human_preference_swaps_on_preference_2(tmp_path):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "000001.png").write_bytes(PNG)
    multi = [
        {"from": "human", "value": "<image>\nWhat is this?"},
        {"from": "gpt", "value": "A table."},
        {"from": "human", "value": "What is on it?"},
        {"from": "gpt", "value": "A cup."},
    ]
    rows = [
        _llava_row(1),
        _llava_row(2, id="coco-2"),
        _llava_row(3),
        _llava_row(1, conversations=multi),
        _llava_row(1, output_2={"from": "gpt", "value": "A red cup."}),
        _llava_row(1, output_1="A red cup."),
    ]
    (tmp_path / "pref.json").write_text(json.dumps(rows))
    records, report = import_preferences(tmp_path / "pref.json", "llava_human_pref", image_dir=tmp_path / "coco")
    assert report["kept"] == 2
    assert _counts(report) == {"missing_field": 2, "multi_turn": 1, "chosen_equals_rejected": 1}
    assert [(r["id"], r["prompt"], r["chosen"], r["rejected"]) for r in records] == [
        ("coco-1", "What is on the table?", "A red cup.", "A red cup and a dog."),
        ("coco-2", "What is on the table?", "A red cup and a dog.", "A red cup."),
    ]
    _check_dataset(records)

    (tmp_path / "pref.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]))
    records, report = import_preferences(tmp_path / "pref.jsonl", "llava_human_pref")  # images beside the file: none
    assert (report["kept"], _counts(report)) == (0, {"bad_image": 2})
    assert "000001.png not found" in report["examples"][0]["detail"]


def test_records_take_diff_spans(tokenizer, tmp_path):
    pd.DataFrame(_rlhf_v_rows()[:1]).to_parquet(tmp_path / "one.parquet")
    records, _ = import_preferences(tmp_path / "one.parquet", "rlhf_v")
    record = records[0]
    record["chosen_spans"], record["rejected_spans"] = changed_char_spans(
        record["chosen"], record["rejected"], tokenizer, G
    )
    assert record["chosen_spans"] == [[11, 14, G]] and record["rejected_spans"] == [[11, 15, G]]  # red / blue
    assert Dataset.from_list(records, features=PREFERENCE_FEATURES)[0]["chosen_spans"] == [[11.0, 14.0, G]]


def test_examples_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(preference_import, "MAX_SKIP_EXAMPLES", 2)
    (tmp_path / "bad.jsonl").write_text("x\n" * 5)
    _, report = import_preferences(tmp_path / "bad.jsonl", "rlaif_v")
    assert report["skipped"]["malformed_row"] == 5 and len(report["examples"]) == 2


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        import_preferences(tmp_path / "nope.parquet", "rlhf_v")
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"rows.csv: expected a save_to_disk folder"):
        import_preferences(tmp_path / "rows.csv", "rlhf_v")
    with pytest.raises(ValueError, match="unknown preference format 'hh_rlhf'"):
        import_preferences(tmp_path / "rows.csv", "hh_rlhf")
    pd.DataFrame([{"question": "q", "chosen": "c", "rejected": "r", "image": PNG}]).to_parquet(tmp_path / "v.parquet")
    with pytest.raises(ValueError, match="no column.* text; .*Is this another format"):
        import_preferences(tmp_path / "v.parquet", "rlhf_v")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="expected a JSON array"):
        import_preferences(tmp_path / "obj.json", "llava_human_pref")
