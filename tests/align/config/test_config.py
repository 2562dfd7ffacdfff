"""Config loading: unknown keys with suggestions, types, overrides, cross-field checks, every shipped YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from align.config.loading import ConfigError, apply_overrides, from_dict
from align.config.recipes import SFTConfig
from align.config.registry import load_config
from align.demo import demo_config

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return f


def test_unknown_key_names_key_and_closest_valid(tmp_path):
    f = write(tmp_path, "recipe: sft\noptim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: optim\.lrr: unknown key; did you mean 'optim\.lr'\?"):
        load_config(f)


def test_wrong_type_names_key(tmp_path):
    f = write(tmp_path, "recipe: sft\noptim:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match=r"optim\.max_steps: expected an integer, got 'many'"):
        load_config(f)


def test_bad_literal_suggests(tmp_path):
    f = write(tmp_path, "recipe: sft\nmodel:\n  finetune: ful\n")
    with pytest.raises(ConfigError, match=r"model\.finetune: 'ful' is not one of .*did you mean 'full'"):
        load_config(f)


def test_unknown_recipe_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe: 'sfft' is not one of.*did you mean 'sft'"):
        load_config(write(tmp_path, "recipe: sfft\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cross_field_checks_name_section(tmp_path):
    f = write(tmp_path, "recipe: sft\noptim:\n  warmup_steps: 10\n  max_steps: 5\n")
    with pytest.raises(ConfigError, match=r"optim: warmup_steps \(10\) exceeds max_steps \(5\)"):
        load_config(f)
    f = write(tmp_path, "recipe: sft\nmodel:\n  finetune: lora\n")
    with pytest.raises(ConfigError, match="tiny model is built from scratch"):
        load_config(f)


def test_dotted_overrides_and_float_strings():
    cfg = load_config(
        REPO / "configs/toy/sft_base.yaml", ["optim.lr=3e-4", "data.world.n_train=10", "eval.limit=null"]
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.world.n_train == 10 and cfg.eval.limit is None
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])


def test_every_shipped_config_is_valid_and_starts_with_its_command():
    from align.cli.configs import config_files

    files = config_files([REPO / "configs"])
    assert files
    for f in files:
        assert f.read_text().startswith("# align "), f
        load_config(f)
    launches = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))  # accelerate's own, not ours to load
    assert launches and not set(launches) & set(files)
    for f in launches:
        assert f.read_text().startswith(f"# accelerate launch --config_file configs/accelerate/{f.name} -m align"), f
        assert yaml.safe_load(f.read_text())["distributed_type"]


def test_demo_runs_exactly_the_shipped_sft_base_config(tmp_path):
    shipped = load_config(REPO / "configs/toy/sft_base.yaml")
    demo = demo_config(tmp_path)
    assert dataclasses.replace(demo, run=dataclasses.replace(demo.run, output_dir=shipped.run.output_dir)) == shipped


def test_demo_runs_exactly_the_shipped_opa_dpo_configs(tmp_path):
    from align.demo import opa_demo_configs, split_overrides

    sft = demo_config(tmp_path)
    data, opa, offpolicy = opa_demo_configs(tmp_path, sft, split_overrides([]))
    shipped_data = load_config(REPO / "configs/toy/opa_dpo_data.yaml")
    wired = {"output_dir": shipped_data.output_dir, "policy": shipped_data.policy, "world": shipped_data.world}
    assert dataclasses.replace(data, **wired) == shipped_data
    shipped = load_config(REPO / "configs/toy/opa_dpo.yaml")
    run = dataclasses.replace(opa.run, output_dir=shipped.run.output_dir, eval_at_end=True)
    wired = {"run": run, "dataset": shipped.dataset, "model": shipped.model}
    assert dataclasses.replace(opa, **wired, data=shipped.data, eval=shipped.eval) == shipped
    assert opa.model.name_or_path == str(tmp_path / "sft_base" / "final")
    assert offpolicy.baseline == "offpolicy" and dataclasses.replace(offpolicy, baseline="none").optim == opa.optim


def test_demo_overrides_go_to_their_stage():
    from align.demo import split_overrides

    groups = split_overrides(["optim.lr=1", "opa_data.limit=5", "opa_dpo.optim.max_steps=3", "opa_data=1"])
    assert groups == {"sft": ["optim.lr=1", "opa_data=1"], "opa_data": ["limit=5"], "opa_dpo": ["optim.max_steps=3"]}


def test_from_dict_builds_nested_defaults():
    cfg = from_dict(SFTConfig, {"optim": {"lr": 1}})
    assert cfg.optim.lr == 1.0 and cfg.model.finetune == "full"


def test_partial_section_keeps_the_parents_default_for_it():
    cfg = from_dict(SFTConfig, {"model": {"tiny": {"text_layers": 1}}})
    assert cfg.model.finetune == "full" and cfg.model.tiny.text_layers == 1 and cfg.model.tiny.text_hidden == 128
