"""`align train CONFIG --help`, `align show`, `align configs`, and the one-line errors of run.report_to and of a
model that cannot be had from the hub (issue 17, items 5 and 7)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from align.cli import main
from align.cli import run as cli_run
from align.config import loggers

REPO = Path(__file__).resolve().parents[2]
DPO = str(REPO / "configs/toy/dpo.yaml")
LR_LINE = "  optim.lr: float = 0.0003  (default 1.0e-05)"


def test_train_config_help_lists_every_field_after_the_usage(capsys):
    assert main(["train", DPO, "optim.lr=3e-4", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: align train")
    assert f"{DPO}: DPORecipeConfig (recipe dpo, run with `align train {DPO}`)" in out
    assert f"{LR_LINE}\n      Peak learning rate." in out
    assert "  run.report_to: str = none  (default)\n      Trainer loggers: none, tensorboard, wandb" in out
    assert "[model.tiny] TinyModelSpec" in out and "  eval.sources[].name: str (required)" in out


def test_build_data_config_help_and_plain_help(capsys):
    assert main(["build-data", str(REPO / "configs/toy/toyworld.yaml"), "-h"]) == 0
    assert "  world.n_train: int = " in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # without a config: argparse's help, as before
        main(["train", "--help"])
    assert e.value.code == 0
    assert "optim.lr: float" not in capsys.readouterr().out


def test_config_help_of_a_bad_override_is_one_error_line(capsys):
    assert main(["train", DPO, "optim.lrr=1", "--help"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "did you mean 'optim.lr'" in captured.err


def test_show_all_and_changed(capsys):
    assert main(["show", DPO, "optim.lr=3e-4"]) == 0
    assert LR_LINE in capsys.readouterr().out
    assert main(["show", DPO, "optim.lr=3e-4", "--changed"]) == 0
    out = capsys.readouterr().out
    assert LR_LINE in out and "optim.max_steps" not in out and "run.output_dir" not in out


def test_configs_lists_every_shipped_yaml(capsys):
    assert main(["configs", str(REPO / "configs")]) == 0
    out = capsys.readouterr().out
    shipped = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "accelerate")
    assert shipped and f"{len(shipped)} configs" in out and "configs/accelerate" not in out
    for path in shipped:
        line = next(line for line in out.splitlines() if line.startswith(str(path)))
        first = path.read_text().splitlines()[0].lstrip("#").strip()
        assert line.endswith(first), line
    assert "sft " in out and "public_preferences" in out


def no_recipe(cfg):
    raise AssertionError("the recipe ran")


def test_report_to_without_its_package_fails_before_the_run(monkeypatch, capsys):
    monkeypatch.setattr(loggers, "find_spec", lambda name: None)
    monkeypatch.setattr(cli_run, "run_recipe", no_recipe)
    assert main(["train", DPO, "run.report_to=tensorboard"]) == 2
    assert capsys.readouterr().err == (
        "error: run.report_to=tensorboard needs the tensorboard package: pip install 'align-vlm[tensorboard]'\n"
    )


def test_an_unknown_logger_is_a_config_error(monkeypatch, capsys):
    monkeypatch.setattr(cli_run, "run_recipe", no_recipe)
    assert main(["train", DPO, "run.report_to=tensorbord"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown logger 'tensorbord'" in err and "none, tensorboard, wandb" in err


def test_validate_accepts_a_logger_that_is_not_installed_here(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loggers, "find_spec", lambda name: None)
    path = tmp_path / "wandb.yaml"
    path.write_text(f"# align train {path}\nrecipe: dpo\nrun:\n  report_to: wandb\n")
    assert main(["validate", str(path)]) == 0  # the GPU machine that runs it may have wandb


def test_an_unknown_hub_model_offline_is_one_line_in_seconds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "rlhf_v.parquet").write_bytes(b"")  # the path is checked before the tokenizer
    argv = [
        "build-data",
        str(REPO / "configs/llava15_7b/rlhf_v_data.yaml"),
        f"path={tmp_path / 'rlhf_v.parquet'}",
        f"output_dir={tmp_path / 'out'}",
        "policy=no-such-org-xyz/no-such-model-xyz",
    ]
    t0 = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - t0 < 30  # imports included; the hub is never asked
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "'no-such-org-xyz/no-such-model-xyz'" in err and "HF_HUB_OFFLINE" in err
