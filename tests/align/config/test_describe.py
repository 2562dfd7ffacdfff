"""align/config/describe.py and align/config/loggers.py: every field listed with type, default, value and help;
`run.report_to` checked by name at load and by package before a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.config import loggers
from align.config.describe import NO_VALUE, REQUIRED, config_summary, describe_fields, format_value, render_fields
from align.config.loading import ConfigError
from align.config.recipes import DPORecipeConfig, SFTConfig
from align.config.registry import RECIPES, load_config

REPO = Path(__file__).resolve().parents[3]
DPO, RLAIF_V = str(REPO / "configs/toy/dpo.yaml"), str(REPO / "configs/toy/rlaif_v.yaml")


def field(docs, name):
    return next(d for d in docs if d.name == name)


def test_a_field_has_its_type_default_value_and_help():
    cfg = load_config(DPO, ["optim.lr=3e-4"])
    lr = field(describe_fields(DPORecipeConfig, cfg), "optim.lr")
    assert (lr.section, lr.type, lr.default, lr.value) == ("optim", "float", 1e-5, 3e-4)
    assert lr.help == "Peak learning rate." and lr.changed
    assert field(describe_fields(DPORecipeConfig, cfg), "optim.max_steps").changed is False


def test_defaults_come_from_the_parent_and_sections_from_their_class():
    docs = describe_fields(SFTConfig)  # SFTConfig's model defaults to finetune=full, ModelConfig's to lora
    assert field(docs, "model.finetune").default == "full"
    assert field(docs, "model.finetune").type == "'lora' | 'full'"
    assert field(docs, "model.finetune").value is NO_VALUE
    assert field(docs, "model").is_section and field(docs, "model.tiny").is_section
    assert field(docs, "eval.sources[].name").default is REQUIRED  # items of a list of sections
    assert field(docs, "eval.judge.model").section == "eval.judge"  # an optional section, null by default


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_field_of_every_recipe_is_listed_with_help(recipe):
    docs = describe_fields(RECIPES[recipe].config_cls)
    assert docs and all(d.help for d in docs), [d.name for d in docs if not d.help]
    assert len({d.name for d in docs}) == len(docs)


def test_render_groups_by_section_and_marks_what_changed():
    cfg = load_config(DPO, ["optim.lr=3e-4"])
    text = render_fields(DPORecipeConfig, cfg)
    assert text.startswith("[top level] DPORecipeConfig")
    assert "\n[optim] OptimConfig: " in text
    assert "  optim.lr: float = 0.0003  (default 1.0e-05)\n      Peak learning rate." in text
    assert "  optim.max_steps: int = 100  (default)" in text
    assert "  run.report_to: str = none  (default)" in text
    changed = render_fields(DPORecipeConfig, cfg, changed_only=True)
    assert changed.splitlines()[:2] == ["[optim] OptimConfig: Optimiser and schedule (batch_size counts pairs).",
                                        "  optim.lr: float = 0.0003  (default 1.0e-05)"]  # fmt: skip
    assert "max_steps" not in changed


def test_values_are_written_as_an_override_would_take_them():
    assert [format_value(v) for v in (None, True, 3e-4, 5, "runs/x", "", "true", ["toyworld"])] == [
        "null", "true", "0.0003", "5", "runs/x", '""', '"true"', '["toyworld"]'
    ]  # fmt: skip


def test_config_summary_reads_the_command_and_the_first_sentence(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# align train x.yaml\n# Plain DPO on ToyWorld. More words here.\nrecipe: dpo\n")
    assert config_summary(path) == {
        "path": str(path), "recipe": "dpo", "command": "align train x.yaml", "description": "Plain DPO on ToyWorld."
    }  # fmt: skip


def test_report_to_names_are_checked_at_load():
    assert loggers.parse_report_to("none") == []
    assert loggers.parse_report_to(" wandb, tensorboard ") == ["wandb", "tensorboard"]
    cfg = load_config(DPO, ["run.report_to=wandb, tensorboard"])
    assert cfg.run.report_to == "wandb,tensorboard"  # as training_arguments splits it
    with pytest.raises(ConfigError, match=r"unknown logger 'tensorbord'.*none, tensorboard, wandb.*'tensorboard'"):
        load_config(DPO, ["run.report_to=tensorbord"])
    with pytest.raises(ConfigError, match="none"):
        load_config(DPO, ["run.report_to=none,wandb"])


def test_a_missing_logger_package_is_one_line(monkeypatch):
    monkeypatch.setattr(loggers, "find_spec", lambda name: None)
    cfg = load_config(RLAIF_V, ["train.run.report_to=tensorboard"])  # a RunConfig nested deeper
    with pytest.raises(ConfigError) as e:
        loggers.check_logger_packages(cfg)
    assert str(e.value) == (
        "train.run.report_to=tensorboard needs the tensorboard package: pip install 'align-vlm[tensorboard]'"
    )
    loggers.check_logger_packages(load_config(DPO))  # none needs nothing
