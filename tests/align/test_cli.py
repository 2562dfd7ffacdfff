"""The `align` command as a user runs it: validate, train with overrides, eval a run dir, demo, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from align.cli import main

REPO = Path(__file__).resolve().parents[2]
MICRO = [
    "model.tiny.vision_hidden=32",
    "model.tiny.vision_layers=1",
    "model.tiny.vision_heads=2",
    "model.tiny.vision_mlp=64",
    "model.tiny.text_hidden=32",
    "model.tiny.text_layers=1",
    "model.tiny.text_mlp=64",
    "data.world.n_train=40",
    "data.world.n_val=2",
    "data.world.n_test=6",
    "optim.max_steps=6",
    "optim.warmup_steps=1",
    "optim.batch_size=8",
    "run.save_steps=3",
    "run.logging_steps=2",
    "eval.limit=3",
    "eval.generation.max_new_tokens=8",
    "vision_pretrain_steps=10",
]


def test_validate_shipped_configs(capsys):
    assert main(["validate", str(REPO / "configs")]) == 0
    assert "config files valid" in capsys.readouterr().out


def test_validate_reports_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# align train bad.yaml\nrecipe: sft\noptim:\n  learning_rate: 1\n")
    assert main(["validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "optim.learning_rate: unknown key" in err


def test_validate_requires_command_comment(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("recipe: sft\n")
    assert main(["validate", str(tmp_path)]) == 2
    assert "first line must be a comment" in capsys.readouterr().err


def test_train_then_eval_run_dir(tmp_path, cache_dir, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(REPO / "configs/toy/sft_base.yaml"),
                f"run.output_dir={run}",
                f"data.cache_dir={cache_dir}",
                *MICRO,
            ]
        )
        == 0
    )
    assert (run / "final" / "eval_results.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--limit", "3", "--json", str(tmp_path / "all.json")]) == 0
    out = capsys.readouterr().out
    assert "CHAIR_s" in out and "checkpoint-3" in out and "final" in out
    results = json.loads((tmp_path / "all.json").read_text())
    assert len(results) == 3  # checkpoint-3, checkpoint-6, final
    assert all(0 <= r["toyworld_chair"]["chair_s"] <= 1 for r in results.values())


def test_train_rejects_data_recipe(capsys):
    assert main(["train", str(REPO / "configs/toy/toyworld.yaml")]) == 2
    assert "runs with `align build-data`" in capsys.readouterr().err


def test_build_data(tmp_path, capsys):
    assert (
        main(
            [
                "build-data",
                str(REPO / "configs/toy/toyworld.yaml"),
                f"cache_dir={tmp_path}",
                "world.n_train=20",
                "world.n_val=2",
                "world.n_test=2",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["images"] == 20 and Path(summary["path"]).is_dir()


def test_eval_missing_path_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


MICRO_ALIGNMENT = [
    "opa_data.limit=6",
    "opa_data.rollout.max_new_tokens=12",
    "opa_dpo.opa.steps=2",
    "opa_dpo.opa.batch_size=4",
    "opa_dpo.optim.max_steps=2",
    "opa_dpo.optim.warmup_steps=0",
    "opa_dpo.optim.batch_size=2",
    "opa_dpo.model.lora_r=4",
]


def test_demo_base_only_small(tmp_path, cache_dir, capsys):
    argv = ["demo", "--base-only", "--workdir", str(tmp_path / "demo"), f"data.cache_dir={cache_dir}", *MICRO]
    assert main(argv) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert {"toyworld_chair", "toyworld_pope", "meta"} <= set(report)
    assert set(report["meta"]["stages_seconds"]) == {"build_data", "sft", "eval"}
    assert "stages_seconds_first_run" not in report["meta"]
    # a rerun trains nothing; the report keeps what the first run's stages took beside the rerun's own seconds
    capsys.readouterr()
    assert main(argv) == 0
    assert "[sft] already finished" in capsys.readouterr().out
    again = json.loads((tmp_path / "demo" / "report.json").read_text())["meta"]
    assert again["stages_seconds_first_run"] == report["meta"]["stages_seconds"]


def test_demo_with_alignment_stages_small(tmp_path, cache_dir, capsys):
    argv = ["demo", "--workdir", str(tmp_path / "demo"), f"data.cache_dir={cache_dir}", *MICRO, *MICRO_ALIGNMENT]
    assert main(argv) == 0
    compared = json.loads((tmp_path / "demo" / "comparison.json").read_text())
    assert list(compared) == ["base (SFT)", "OPA step", "OPA-DPO", "off-policy DPO"]
    assert all("toyworld_chair" in r for r in compared.values())
    out = capsys.readouterr().out
    assert "[6/6]" in out and "off-policy DPO" in out


@pytest.mark.slow
def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "align.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "validate" in out.stdout
