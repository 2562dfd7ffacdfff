"""User SFT data: LLaVA conversations → rows (pure functions), and `import_sft` over LLaVA JSON, save_to_disk, .jsonl
and .parquet with every bad item skipped and counted by reason and place."""

from __future__ import annotations

import io
import json

import PIL.Image
import pytest
from datasets import Dataset

from data_builders.preference_import import SkipRow
from data_builders.sft_import import (
    SKIP_REASONS,
    conversation_rows,
    import_sft,
    llava_pairs,
    skipped_line,
)
from data_builders.toyworld import WorldConfig
from data_builders.toyworld_data import export_toyworld_llava

TINY_WORLD = WorldConfig(seed=3, n_train=3, n_val=1, n_test=1)


def human(value):
    return {"from": "human", "value": value}


def gpt(value):
    return {"from": "gpt", "value": value}


def png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_llava_pairs_strip_the_image_token_and_drop_a_trailing_question():
    turns = [human("<image>\nWhat is here?"), gpt(" a cup "), human("And its colour?"), gpt("red"), human("Why?")]
    assert llava_pairs(turns) == [("What is here?", "a cup"), ("And its colour?", "red")]
    assert llava_pairs([human("Describe it.\n<image>"), gpt("a cup")]) == [("Describe it.", "a cup")]


@pytest.mark.parametrize(
    "turns, reason",
    [
        ([human("What is here?"), gpt("a cup")], "missing_image_token"),
        ([human("<image> a"), gpt("b"), human("<image> c"), gpt("d")], "extra_image_token"),
        ([human("<image> a"), gpt("b <image>")], "extra_image_token"),
        ([human("<image>"), gpt("a cup")], "empty_prompt"),
        ([human("<image> a"), gpt("  ")], "empty_response"),
        ([gpt("a"), human("<image> b")], "malformed_row"),
        ([human("<image> a"), human("b")], "malformed_row"),
        ([human("<image> a"), {"from": "gpt"}], "malformed_row"),
        ([human("<image> only a question")], "missing_field"),
        ("not a list", "missing_field"),
    ],
)
def test_llava_pairs_reject_with_a_reason(turns, reason):
    with pytest.raises(SkipRow) as err:
        llava_pairs(turns)
    assert err.value.reason == reason


def test_conversation_rows_give_each_reply_the_earlier_turns_as_context():
    rows = conversation_rows("x", {"bytes": b"img"}, [("q1", "a1"), ("q2", "a2"), ("q3", "a3")])
    assert [r["id"] for r in rows] == ["x/0", "x/1", "x/2"]
    assert [r["response"] for r in rows] == ["a1", "a2", "a3"]
    assert rows[0]["context"] == []
    assert rows[2]["context"] == [{"prompt": "q1", "response": "a1"}, {"prompt": "q2", "response": "a2"}]


def write_bad_llava(tmp_path, cache_dir):
    """ToyWorld exported as LLaVA JSON (3 images, 2 conversations each) plus one item of each bad kind."""
    path = export_toyworld_llava(tmp_path / "llava", TINY_WORLD, cache_dir, turns=4)
    items = json.loads(path.read_text())
    good = len(items)
    (tmp_path / "llava" / "broken.png").write_bytes(b"not a png")
    items += [
        {"id": "gone", "image": "images/missing.png", "conversations": [human("<image> a"), gpt("b")]},
        {"id": "broken", "image": "broken.png", "conversations": [human("<image> a"), gpt("b")]},
        {"id": "no-token", "image": items[0]["image"], "conversations": [human("What is it?"), gpt("a cup")]},
        {"id": "empty", "image": items[0]["image"], "conversations": [human("<image> a"), gpt("")]},
        {"id": "text", "conversations": [human("hello"), gpt("hi")]},
        {"id": "two", "image": [items[0]["image"]] * 2, "conversations": [human("<image> a"), gpt("b")]},
        "not an item",
    ]
    path.write_text(json.dumps(items))
    return path, good


def test_import_llava_json_counts_each_bad_item(tmp_path, cache_dir):
    path, good = write_bad_llava(tmp_path, cache_dir)
    rows, report = import_sft(path, "llava_json")
    assert report["items_read"] == good + 7 and report["items_kept"] == good
    assert report["skipped"] == {
        **{reason: 0 for reason in SKIP_REASONS},
        "bad_image": 2,
        "missing_image_token": 1,
        "empty_response": 1,
        "text_only": 1,
        "multi_image": 1,
        "malformed_row": 1,
    }
    assert report["rows"] == len(rows) > good  # multi-turn: several rows per conversation
    where = {e["detail"].split(":")[0]: e["where"] for e in report["examples"]}
    assert where["image"].startswith(f"{path}[")  # the item's place in the JSON list
    assert any("missing.png" in e["detail"] for e in report["examples"])
    assert "skipped 7 (" in skipped_line(report)
    row = next(r for r in rows if r["context"])
    assert row["image"].size == (48, 48) and "<image>" not in row["prompt"] + row["context"][0]["prompt"]


def test_image_root_and_limit(tmp_path, cache_dir):
    path = export_toyworld_llava(tmp_path / "llava", TINY_WORLD, cache_dir)
    moved = tmp_path / "elsewhere" / "data.json"
    moved.parent.mkdir()
    moved.write_text(path.read_text())
    with pytest.raises(
        ValueError, match=r"no usable item in 1 read .*elsewhere/images/toy3-train-00000.png not found"
    ):
        import_sft(moved, "llava_json", limit=1)  # image paths are relative to the JSON file's folder
    rows, report = import_sft(moved, "llava_json", image_root=tmp_path / "llava", limit=2)
    assert report["items_read"] == report["items_kept"] == 2


def hf_rows(n: int = 3) -> list[dict]:
    return [{"image": png(), "question": f"<image>\nq{i}", "answer": f"a{i}", "id": f"r{i}"} for i in range(n)]


def test_import_hf_save_to_disk_with_named_columns(tmp_path):
    rows = hf_rows() + [{"image": b"junk", "question": "q", "answer": "a", "id": "bad"}]
    rows += [{"image": png(), "question": "q", "answer": " ", "id": "empty"}]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    data, report = import_sft(tmp_path / "ds", "hf", fields=("question", "answer", "image"))
    assert (report["items_kept"], report["skipped"]["bad_image"], report["skipped"]["empty_response"]) == (3, 1, 1)
    assert data[0]["prompt"] == "q0" and data[0]["response"] == "a0" and data[0]["id"] == "r0"
    assert data[0]["context"] == []
    with pytest.raises(ValueError, match="no column.*question"):
        import_sft(tmp_path / "ds", "hf")  # default columns: prompt, response


def test_import_hf_jsonl_with_image_paths_and_broken_lines(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    lines = [
        json.dumps({"image": "a.png", "prompt": "what?", "response": "a cup"}),
        "{not json",
        "",
        json.dumps({"image": "nope.png", "prompt": "what?", "response": "a cup"}),
        json.dumps({"image": "a.png", "prompt": "what?"}),
        json.dumps({"image": "a.png", "prompt": "<image>", "response": "x"}),
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    data, report = import_sft(tmp_path / "d.jsonl", "hf")
    assert report["items_kept"] == 1 and data[0]["id"] == "d-0"
    counts = {k: v for k, v in report["skipped"].items() if v}
    assert counts == {"malformed_row": 1, "bad_image": 1, "missing_field": 1, "empty_prompt": 1}
    assert {e["where"] for e in report["examples"]} == {f"{tmp_path / 'd.jsonl'}:{n}" for n in (2, 4, 5, 6)}


def test_import_hf_parquet(tmp_path):
    Dataset.from_list(hf_rows(2)).to_parquet(str(tmp_path / "d.parquet"))
    data, report = import_sft(tmp_path / "d.parquet", "hf", fields=("question", "answer", "image"))
    assert report["rows"] == 2 and data[1]["response"] == "a1"


def test_unusable_paths_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path: .*nothing.json"):
        import_sft(tmp_path / "nothing.json", "llava_json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        import_sft(tmp_path / "bad.json", "llava_json")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="expected a JSON list"):
        import_sft(tmp_path / "obj.json", "llava_json")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="x.csv is not"):
        import_sft(tmp_path / "x.csv", "hf")
    (tmp_path / "empty.json").write_text(json.dumps([{"id": "t", "conversations": []}]))
    with pytest.raises(ValueError, match=r"empty.json: no usable item in 1 read \(skipped 1 \(text_only: 1\)\)"):
        import_sft(tmp_path / "empty.json", "llava_json")
    with pytest.raises(FileNotFoundError, match="data.image_root"):
        import_sft(tmp_path / "empty.json", "llava_json", image_root=tmp_path / "no-dir")
