"""SFT on the user's data through `align train`: LLaVA-format JSON (multi-turn, bad items skipped and counted), an HF
save_to_disk folder and a .jsonl of {image, prompt, response}; the data config's checks; unusable paths."""

from __future__ import annotations

import io
import json
from pathlib import Path

import PIL.Image
import pytest
from datasets import Dataset

from align.cli import main
from align.config.loading import ConfigError
from align.config.recipes import SFTConfig, SFTDataConfig
from align.config.registry import load_config
from align.config.sections import DataConfig
from align.core.data import encode_row
from align.eval.runner import run_data_config
from data_builders.toyworld import WorldConfig
from data_builders.toyworld_data import export_toyworld_llava
from tests.align.test_cli import MICRO

REPO = Path(__file__).resolve().parents[3]
CONFIG = str(REPO / "configs/toy/sft_llava_json.yaml")
# the shipped config fine-tunes the demo's base policy; tests build the micro model in-process instead
FROM_SCRATCH = ["model.name_or_path=null", "model.finetune=full", "freeze_vision=false"]
FAST = [
    *FROM_SCRATCH,
    "optim.max_steps=4",
    "optim.warmup_steps=1",
    "optim.batch_size=4",
    "run.save_steps=2",
    "run.logging_steps=1",
]
WORLD = WorldConfig(seed=5, n_train=6, n_val=1, n_test=1)


def train(tmp_path, *overrides) -> tuple[int, dict | None]:
    run = tmp_path / "run"
    status = main(["train", CONFIG, f"run.output_dir={run}", *MICRO, *FAST, *overrides])
    summary = run / "train_summary.json"
    return status, json.loads(summary.read_text()) if summary.is_file() else None


def assert_trained(tmp_path, summary: dict) -> None:
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert [step for step, _ in summary["loss_history"]] == [1, 2, 3, 4]
    assert all(loss > 0 for _, loss in summary["loss_history"]) and summary["train"]["train_runtime"] > 0
    assert summary["vision_pretrain"] is None and "eval" not in summary


def test_llava_json_trains_and_counts_bad_items(tmp_path, cache_dir, capsys):
    path = export_toyworld_llava(tmp_path / "llava", WORLD, cache_dir)
    items = json.loads(path.read_text())
    good, image = len(items), items[0]["image"]

    def turns(*values):
        return [{"from": ("human", "gpt")[k % 2], "value": v} for k, v in enumerate(values)]

    items += [
        {"id": "gone", "image": "images/missing.png", "conversations": turns("<image> a", "b")},
        {"id": "no-token", "image": image, "conversations": turns("what?", "a cup")},
        {"id": "empty", "image": image, "conversations": turns("<image> a", "")},
        ["malformed"],
    ]
    path.write_text(json.dumps(items))
    status, summary = train(tmp_path, f"data.path={path}")
    out = capsys.readouterr().out
    assert status == 0
    assert_trained(tmp_path, summary)
    data = summary["data"]
    assert (data["items_read"], data["items_kept"]) == (good + 4, good)
    assert {k: v for k, v in data["skipped"].items() if v} == {
        "bad_image": 1,
        "missing_image_token": 1,
        "empty_response": 1,
        "malformed_row": 1,
    }
    assert summary["encode"]["rows"] == data["rows"] > good  # one row per turn pair
    assert f"[sft] data: llava_json {path}: {good}/{good + 4} items kept" in out and "skipped 4 (" in out
    assert "ToyWorld eval skipped" in out
    # `align eval <run dir>` reads the run's world from its data section, which also names the source
    assert run_data_config(tmp_path / "run" / "final").world.n_train == 40


@pytest.mark.parametrize("layout", ["save_to_disk", "jsonl"])
def test_hf_rows_train(tmp_path, cache_dir, layout):
    path = export_toyworld_llava(tmp_path / "llava", WORLD, cache_dir, turns=1)
    rows = [
        {"img": str(path.parent / item["image"]), "question": turns[0]["value"], "answer": turns[1]["value"]}
        for item in json.loads(path.read_text())
        for turns in [item["conversations"]]
    ]
    rows.append({"img": str(path.parent / "nope.png"), "question": "what?", "answer": "a cup"})
    if layout == "jsonl":
        data = tmp_path / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    else:
        data = tmp_path / "rows"
        Dataset.from_list(rows).save_to_disk(str(data))
    fields = ["data.prompt_field=question", "data.response_field=answer", "data.image_field=img"]
    status, summary = train(tmp_path, "data.source=hf", f"data.path={data}", *fields, "data.limit=100")
    assert status == 0
    assert_trained(tmp_path, summary)
    skipped = {k: v for k, v in summary["data"]["skipped"].items() if v}
    assert skipped == ({"bad_image": 1, "malformed_row": 1} if layout == "jsonl" else {"bad_image": 1})
    assert summary["data"]["rows"] == len(rows) - 1 == summary["encode"]["rows"]


def test_unusable_path_is_one_line_naming_it(tmp_path, capsys):
    assert train(tmp_path, f"data.path={tmp_path / 'nothing.json'}")[0] == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: data.path: {str(tmp_path / 'nothing.json')!r} does not exist"
    (tmp_path / "bad.json").write_text('[{"id": 1,')
    assert train(tmp_path, f"data.path={tmp_path / 'bad.json'}")[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'bad.json'}: not valid JSON")


def test_data_section_checks_name_the_field():
    cfg = load_config(CONFIG)
    assert (cfg.data.source, cfg.data.path, cfg.data.image_root) == ("llava_json", "runs/toy_llava/llava.json", None)
    with pytest.raises(ConfigError, match="data: path: source hf needs data.path"):
        load_config(CONFIG, ["data.source=hf", "data.path=null"])
    with pytest.raises(ConfigError, match="data: path / image_root: only read with source llava_json or hf"):
        load_config(CONFIG, ["data.source=toyworld"])
    with pytest.raises(ConfigError, match="data.source: 'llava' is not one of"):
        load_config(CONFIG, ["data.source=llava"])
    with pytest.raises(ConfigError, match="data: limit"):
        load_config(CONFIG, ["data.limit=0"])
    plain = SFTConfig(data=DataConfig(max_length=99))  # a plain DataConfig from code: ToyWorld, as before
    assert (type(plain.data), plain.data.source, plain.data.max_length) == (SFTDataConfig, "toyworld", 99)


def test_context_turns_are_prompt_tokens(micro_model):
    """A row's earlier turns come before its prompt, after the one image, and only its own reply is trained on."""
    model, processor = micro_model
    buf = io.BytesIO()
    PIL.Image.new("RGB", (48, 48), (10, 200, 10)).save(buf, format="PNG")
    row = {"id": "r", "image": {"bytes": buf.getvalue()}, "prompt": "what is at the top?", "response": "a red cup"}
    n_image = model.config.image_seq_length
    plain = encode_row(processor, row, 160, n_image)
    turn = encode_row(
        processor, {**row, "context": [{"prompt": "what is this?", "response": "a chair"}]}, 160, n_image
    )
    tok = processor.tokenizer
    trained = [[t for t in enc["labels"] if t != -100] for enc in (plain, turn)]
    assert trained[0] == trained[1] and tok.decode(trained[1]).startswith("a red cup")
    text = tok.decode(turn["input_ids"])
    assert text.index("<image>") < text.index("chair") < text.index("top")
    assert turn["input_ids"].count(model.config.image_token_index) == n_image
