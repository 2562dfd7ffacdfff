"""Run directories (issue 17): which config changes count, and fresh / resume / finished / refused for each mode,
on hand-made directories (no Trainer, no torch)."""

from __future__ import annotations

import json

import pytest
import yaml

from align.config.loading import ConfigError, to_dict
from align.config.recipes import RLAIFVConfig, SFTConfig
from align.core.run_dir import (
    FINISHED,
    FRESH,
    RESUME,
    clear_run,
    config_diff,
    last_checkpoint,
    run_state,
    start_build,
    with_mode,
)
from data_builders.configs import OPADataConfig

CONFIG = {"run": {"output_dir": "runs/a", "seed": 0, "existing": "auto"}, "optim": {"max_steps": 100, "lr": 1e-5}}


def changed(**sections) -> dict:
    return {k: {**CONFIG.get(k, {}), **sections.get(k, {})} for k in {*CONFIG, *sections}}


def test_config_diff_names_each_changed_key_old_to_new():
    new = changed(optim={"max_steps": 3, "lr": 1e-5}, model={"lora_r": 4})
    assert config_diff(CONFIG, new) == ["model.lora_r: (unset) -> 4", "optim.max_steps: 100 -> 3"]
    assert config_diff(CONFIG, CONFIG) == []
    lists = config_diff({"eval": {"benchmarks": ["toyworld"]}}, {"eval": {"benchmarks": ["toyworld", "pope"]}})
    assert lists == ['eval.benchmarks: ["toyworld"] -> ["toyworld", "pope"]']


def test_where_and_how_shown_keys_are_no_change_at_any_depth():
    moved = changed(run={"output_dir": "elsewhere", "existing": "overwrite", "report_to": "tensorboard"})
    assert config_diff(CONFIG, moved) == []
    nested = {"train": {"run": {"save_total_limit": 1}, "data": {"cache_dir": "/x"}}, "concurrency": 3, "seed": 1}
    assert config_diff({"train": {"run": {"save_total_limit": 2}, "data": {"cache_dir": None}}}, nested) == [
        "seed: (unset) -> 1"
    ]
    # what decides the stored results counts, the checkpoint schedule included
    assert config_diff(CONFIG, changed(run={"save_steps": 10})) == ["run.save_steps: (unset) -> 10"]


def make_run(out, config=CONFIG, steps=(50, 100), final=True, summary=True):
    out.mkdir(parents=True, exist_ok=True)
    (out / "align_config.yaml").write_text(yaml.safe_dump(config))
    for step in steps:
        (out / f"checkpoint-{step}").mkdir()
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if final:
        (out / "final").mkdir()
        (out / "final" / "config.json").write_text("{}")
    if summary:
        (out / "train_summary.json").write_text(json.dumps({"final": str(out / "final")}))
    return out


def test_an_empty_or_missing_dir_is_fresh(tmp_path):
    assert run_state(tmp_path / "nope", CONFIG).state == FRESH
    (tmp_path / "began").mkdir()
    (tmp_path / "began" / "align_config.yaml").write_text("optim: {max_steps: 1}\n")  # killed before a checkpoint
    assert run_state(tmp_path / "began", CONFIG).state == FRESH


def test_a_finished_run_with_the_same_config_is_finished(tmp_path):
    out = make_run(tmp_path / "run")
    assert run_state(out, CONFIG).state == FINISHED
    assert run_state(out, changed(run={"existing": "resume"}), "resume").state == FINISHED
    assert run_state(out, CONFIG, "overwrite").state == FRESH


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    out = make_run(tmp_path / "run", final=False, summary=False)
    (out / "checkpoint-150").mkdir()  # killed mid-save: no trainer state
    state = run_state(out, CONFIG)
    assert state.state == RESUME and state.last == out / "checkpoint-100" == last_checkpoint(out)
    # final/ saved but killed before the summary (e.g. in the final eval): not finished, resumed
    out2 = make_run(tmp_path / "run2", summary=False)
    assert run_state(out2, CONFIG).state == RESUME


def test_a_changed_config_is_refused_naming_the_keys_unless_resume(tmp_path):
    out = make_run(tmp_path / "run")
    new = changed(optim={"max_steps": 3, "lr": 1e-5})
    with pytest.raises(ConfigError) as e:
        run_state(out, new)
    message = str(e.value)
    assert "optim.max_steps: 100 -> 3" in message and "--overwrite" in message and "--resume" in message
    assert "\n" not in message
    state = run_state(out, new, "resume")
    assert state.state == RESUME and state.last == out / "checkpoint-100"
    assert state.changes == ("optim.max_steps: 100 -> 3",)


def test_a_run_without_its_saved_config_is_refused(tmp_path):
    out = make_run(tmp_path / "run")
    (out / "align_config.yaml").unlink()
    with pytest.raises(ConfigError, match="align_config.yaml"):
        run_state(out, CONFIG)
    with pytest.raises(ConfigError, match="run.existing"):
        run_state(out, CONFIG, "sometimes")


def test_clear_run_deletes_the_run_and_keeps_the_rest(tmp_path):
    out = make_run(tmp_path / "run")
    (out / "eval").mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "opa").mkdir()
    assert sorted(clear_run(out)) == sorted(
        ["checkpoint-50", "checkpoint-100", "final", "eval", "train_summary.json", "align_config.yaml"]
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "opa"]


def test_with_mode_sets_every_run_section():
    assert with_mode(SFTConfig(), "overwrite").run.existing == "overwrite"
    loop = with_mode(RLAIFVConfig(), "resume")
    assert loop.train.run.existing == "resume" and RLAIFVConfig().train.run.existing == "auto"


def built(out, cfg, failed=None):
    out.mkdir(parents=True)
    (out / "align_config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    (out / "dataset").mkdir()
    (out / "dataset" / "dataset_info.json").write_text("{}")
    (out / "summary.json").write_text(json.dumps({"rows_out": 3, "failed": failed or {}}))
    (out / "expert_cache").mkdir()
    (out / "rollouts.jsonl").write_text("{}\n")


def test_a_finished_build_is_reported_a_changed_one_refused_and_overwrite_keeps_the_reply_cache(tmp_path, capsys):
    cfg = OPADataConfig(output_dir=str(tmp_path / "data"), limit=6)
    assert start_build(cfg) is None and (tmp_path / "data" / "align_config.yaml").is_file()  # a new build runs
    (tmp_path / "data" / "align_config.yaml").unlink()
    (tmp_path / "data").rmdir()
    built(tmp_path / "data", cfg)
    assert start_build(cfg) == {"rows_out": 3, "failed": {}}
    assert "already finished" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="limit: 6 -> 7"):
        start_build(OPADataConfig(output_dir=cfg.output_dir, limit=7))
    assert start_build(OPADataConfig(output_dir=cfg.output_dir, limit=6, concurrency=1)) is not None
    assert start_build(OPADataConfig(output_dir=cfg.output_dir, limit=7), "resume") is None  # resumes under it
    assert start_build(cfg, "overwrite") is None
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["align_config.yaml", "expert_cache"]


def test_a_build_with_failed_items_runs_again(tmp_path):
    cfg = OPADataConfig(output_dir=str(tmp_path / "data"))
    built(tmp_path / "data", cfg, failed={"expert_failed": 2})
    assert start_build(cfg) is None  # a rerun retries what failed


def test_a_run_saved_before_a_key_was_added_is_unchanged_at_its_default():
    new = {**CONFIG, "data": {"packing": False}, "precompute_ref_logps": False}
    assert config_diff(CONFIG, new) == []
    turned_on = {**CONFIG, "data": {"packing": True}}
    assert config_diff(CONFIG, turned_on) == ["data.packing: false -> true"]
