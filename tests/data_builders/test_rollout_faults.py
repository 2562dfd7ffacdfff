"""Faults in the rollout step and the prompts it reads (issue 16, items 5 and 7): a torn last line or a half-written
batch in rollouts.jsonl is dropped on resume and the file ends byte for byte as an uninterrupted build's; a bad public
row is skipped and counted with where it is; a prompt longer than the engine takes is skipped and counted."""

from __future__ import annotations

import hashlib
import io
import json
import types

import PIL.Image
import pytest
from datasets import Dataset, Features, Image, Value

from data_builders.configs import RolloutSettings
from data_builders.importers import PublicRowError, public_prompts, read_public_prompts
from data_builders.io import read_jsonl
from data_builders.rollout import fitting_prompts, roll_out, rollout_prompts

B = 8
SETTINGS = RolloutSettings(batch_size=B)


class SeededEngine:
    """A deterministic engine whose replies depend on the seed and on every prompt of the batch, as sampling does
    (a batch of other prompts, or of fewer, draws other samples)."""

    name = "seeded"

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def generate(self, images, prompts, seed):
        self.calls.append((seed, len(prompts)))
        key = hashlib.sha256(json.dumps([seed, prompts, [hashlib.sha256(i).hexdigest() for i in images]]).encode())
        return [f"{key.hexdigest()[:16]} reply {i} to {p}" for i, p in enumerate(prompts)]


def prompts(n: int = 60) -> list[dict]:
    return [{"id": f"p{i:02d}", "image": bytes([i]), "prompt": f"describe picture {i}"} for i in range(n)]


def whole_build(tmp_path) -> bytes:
    path = tmp_path / "whole.jsonl"
    roll_out(SeededEngine(), prompts(), path, SETTINGS, seed=3)
    return path.read_bytes()


@pytest.mark.parametrize(
    "complete_lines, torn",
    [
        (19, True),  # 3 rows of batch 2 written whole, the 4th torn mid-line
        (19, False),  # 3 rows of batch 2 written, the kill between two lines
        (16, True),  # batches 0-1 whole, the first row of batch 2 torn
        (40, False),  # a clean end at a batch boundary: nothing to drop
    ],
)
def test_a_kill_mid_batch_resumes_to_the_uninterrupted_file(tmp_path, complete_lines, torn):
    whole = whole_build(tmp_path)
    lines = whole.splitlines(keepends=True)
    assert len(lines) == 60
    path = tmp_path / "rollouts.jsonl"
    path.write_bytes(b"".join(lines[:complete_lines]) + (lines[complete_lines][:25] if torn else b""))

    engine = SeededEngine()
    done = roll_out(engine, prompts(), path, SETTINGS, seed=3)
    assert path.read_bytes() == whole  # 0 lost, 0 duplicated, the same samples
    assert sorted(done) == [p["id"] for p in prompts()]
    first = complete_lines // B  # the batch the kill cut into is sampled again, whole, with its own seed
    assert engine.calls == [(3 + k * B, B if k < 7 else 4) for k in range(first, 8)]


def test_a_rerun_of_a_finished_rollout_samples_nothing(tmp_path):
    whole = whole_build(tmp_path)
    path = tmp_path / "whole.jsonl"
    engine = SeededEngine()
    roll_out(engine, prompts(), path, SETTINGS, seed=3)
    assert engine.calls == [] and path.read_bytes() == whole


def test_read_jsonl_cuts_a_torn_tail_so_the_next_append_is_whole(tmp_path):
    path = tmp_path / "feedback.jsonl"
    path.write_text(json.dumps({"id": "a", "x": 1}) + "\n" + '{"id": "b", "x"')
    assert list(read_jsonl(path)) == ["a"]
    with path.open("a") as f:  # what a resumable step does next
        f.write(json.dumps({"id": "b", "x": 2}) + "\n")
    assert {i: r["x"] for i, r in read_jsonl(path).items()} == {"a": 1, "b": 2}


def png(color: int = 0) -> bytes:
    out = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), (color, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def test_bad_public_rows_are_skipped_and_counted_with_file_and_line(tmp_path):
    (tmp_path / "ok.png").write_bytes(png())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    row = {"question": "Describe.", "chosen": "a cup.", "image": "ok.png"}
    lines = [
        json.dumps({**row, "idx": "a"}),
        '{"idx": "b", "question": "Describe.", "chos',  # a malformed line, line 2
        "",
        json.dumps({**row, "idx": "c", "question": "  "}),
        json.dumps({**row, "idx": "d", "image": "broken.png"}),
        json.dumps({**row, "idx": "e", "image": "missing.png"}),
        json.dumps({**row, "idx": "f", "chosen": ""}),
        json.dumps({**row, "idx": "g"}),
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    kept, report = read_public_prompts(path)
    assert [p["id"] for p in kept] == ["a", "g"] and kept[0]["image"] == png()
    assert report["rows_read"] == 7 and report["kept"] == 2
    assert report["skipped"] == {"malformed_row": 1, "empty_question": 1, "bad_image": 2, "empty_reference": 1}
    where = {e["row"].split(": row")[0]: e["reason"] for e in report["examples"]}
    assert where == {
        f"{path}:2": "malformed_row",
        f"{path}:4": "empty_question",
        f"{path}:5": "bad_image",
        f"{path}:6": "bad_image",
        f"{path}:7": "empty_reference",
    }
    assert "missing.png not found" in report["examples"][3]["detail"]
    assert [p["id"] for p in public_prompts(path)] == ["a", "g"]  # the list API skips them too
    assert [p["id"] for p in public_prompts(path, limit=3)] == ["a"]  # limit counts skipped rows


def test_a_file_without_one_usable_row_is_an_error_naming_its_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("not json\n")
    with pytest.raises(PublicRowError, match=r"rows.jsonl:1: row 0: not a JSON line"):
        public_prompts(path)


@pytest.mark.parametrize("as_path_string", [False, True])
def test_image_paths_in_a_parquet_resolve_against_its_folder(tmp_path, monkeypatch, as_path_string):
    data_dir, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (data_dir / "img").mkdir(parents=True)
    elsewhere.mkdir()
    (data_dir / "img" / "0.png").write_bytes(png(1))
    (data_dir / "img" / "1.png").write_bytes(png(2))
    image = Value("string") if as_path_string else Image()
    features = Features(
        {"idx": Value("string"), "image": image, "question": Value("string"), "chosen": Value("string")}
    )
    rows = [
        {"idx": f"r{i}", "image": f"img/{i}.png" if as_path_string else {"path": f"img/{i}.png", "bytes": None}}
        | {"question": "Describe.", "chosen": "a cup."}
        for i in range(2)
    ]
    monkeypatch.chdir(data_dir)  # datasets reads the files' sizes as it writes
    Dataset.from_list(rows, features=features).to_parquet(str(data_dir / "rows.parquet"))
    monkeypatch.chdir(elsewhere)  # a relative path must not depend on where the build runs
    kept, report = read_public_prompts(data_dir / "rows.parquet")
    assert report["skipped"] == {} and [p["image"] for p in kept] == [png(1), png(2)]


class LimitedEngine(SeededEngine):
    """An engine with a context limit: a prompt costs one token per word plus 4 image tokens."""

    max_prompt_tokens = 10

    def prompt_tokens(self, image, prompt):
        return len(prompt.split()) + 4


def test_prompts_longer_than_the_engine_takes_are_skipped_and_counted(tmp_path):
    (tmp_path / "ok.png").write_bytes(png())
    rows = [
        {"idx": f"q{i}", "image": "ok.png", "chosen": "a cup.", "question": "word " * n}
        for i, n in enumerate((3, 6, 7, 25_000))
    ]
    rows.append({"idx": "bad", "image": "ok.png", "chosen": "a cup.", "question": ""})
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, skipped = fitting_prompts(LimitedEngine(), public_prompts(path))
    assert [p["id"] for p in kept] == ["q0", "q1"]
    assert [(s["row"], s["reason"]) for s in skipped] == [("q2", "prompt_too_long"), ("q3", "prompt_too_long")]
    assert "25004 prompt tokens (image included) > 10" in skipped[1]["detail"]

    cfg = types.SimpleNamespace(prompts=str(path), limit=None)
    kept, read = rollout_prompts(cfg, LimitedEngine())
    assert [p["id"] for p in kept] == ["q0", "q1"] and read["rows_in"] == 5
    assert read["skipped"] == {"empty_question": 1, "prompt_too_long": 2}
    assert fitting_prompts(SeededEngine(), kept) == (kept, [])  # an engine without a limit takes every prompt
