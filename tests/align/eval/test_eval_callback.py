"""Hallucination evals at checkpoints during tiny training runs: files, logs, and no trace on training.

LoRA runs go through `attach_checkpoint_eval` + `train_and_save` (the wiring the preference recipes use) on SFT
rows, sampling while evaluating and with LoRA dropout on, so a callback that left the RNG moved would change the
final weights.
"""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, set_seed

from align.config.recipes import DPORecipeConfig
from align.config.sections import DataConfig, EvalConfig, GenerationConfig, ModelConfig, OptimConfig, RunConfig
from align.core.data import RowsDataset, VisionSFTCollator, encode_dataset, image_seq_length
from align.core.models import build_model, save_policy, vision_tower
from align.core.trainer import AlignTrainer, train_and_save, training_arguments
from align.eval import callback as callback_module
from align.eval.callback import HallucinationEvalCallback, attach_checkpoint_eval, eval_mode
from data_builders.toyworld_data import sft_rows
from tests.conftest import MICRO_SPEC, SMALL_WORLD, micro_sft_config

CHAIR_S = "eval_toyworld_chair/chair_s"


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> str:
    model, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0)
    return str(save_policy(model, processor, tmp_path_factory.mktemp("cb") / "policy"))


@pytest.fixture(scope="module")
def rows(small_world, policy) -> list[dict]:
    model, processor = build_model(ModelConfig(name_or_path=policy, finetune="full"), seed=0)
    some = sft_rows(small_world["train"]).select(range(24))
    return encode_dataset(some, processor, 160, image_seq_length(model.config))[0]


def lora_cfg(out, policy, cache_dir, at_checkpoints: bool) -> DPORecipeConfig:
    sampling = GenerationConfig(max_new_tokens=6, do_sample=True, batch_size=16)
    return DPORecipeConfig(
        run=RunConfig(output_dir=str(out), logging_steps=1, save_steps=2, eval_at_end=False),
        model=ModelConfig(name_or_path=policy, lora_r=4, lora_alpha=8, lora_dropout=0.3),
        data=DataConfig(world=SMALL_WORLD, cache_dir=str(cache_dir)),
        optim=OptimConfig(lr=1e-2, warmup_steps=0, max_steps=4, batch_size=4),
        eval=EvalConfig(limit=6, checkpoint_limit=2, at_checkpoints=at_checkpoints, generation=sampling),
    )


class Recorder(TrainerCallback):
    """What the trainer's logging callbacks (TensorBoard, W&B, ...) receive."""

    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def lora_run(out, policy, rows, cache_dir, at_checkpoints: bool) -> tuple[dict, Recorder]:
    cfg = lora_cfg(out, policy, cache_dir, at_checkpoints)
    set_seed(cfg.run.seed)  # as the recipes do: build_model draws the LoRA init from the global RNG
    model, processor = build_model(cfg.model, cfg.run.seed)
    recorder = Recorder()
    trainer = AlignTrainer(
        model=model,
        args=training_arguments(cfg.run, cfg.optim),
        train_dataset=RowsDataset(rows),
        data_collator=VisionSFTCollator(processor),
        processing_class=processor,
        callbacks=[recorder],
    )
    attach_checkpoint_eval(trainer, cfg)
    result, final = train_and_save(trainer, cfg.run, processor, cfg)
    return {"final": str(final), "train": result.metrics, "log_history": trainer.state.log_history}, recorder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, policy, rows, cache_dir) -> dict:
    root = tmp_path_factory.mktemp("runs")
    return {flag: lora_run(root / str(flag), policy, rows, cache_dir, flag) for flag in (True, False)}


def final_weights(summary: dict) -> dict[str, torch.Tensor]:
    return load_file(f"{summary['final']}/model.safetensors")


def test_each_save_writes_a_step_file_and_logs_through_the_trainer(runs):
    summary, recorder = runs[True]
    out = summary["final"].rsplit("/", 1)[0]
    for step in (2, 4):
        record = json.loads(open(f"{out}/eval/step-{step}.json").read())
        assert record["step"] == step and record["checkpoint"].endswith(f"checkpoint-{step}")
        assert record["generation"]["do_sample"] and record["eval_settings"]["limit"] == 2  # checkpoint_limit
        assert record["results"]["meta"]["images"] == 2 and 0 <= record["results"]["toyworld_chair"]["chair_s"] <= 1
        assert {"toyworld_pope", "toyworld_pope_adversarial"} <= set(record["results"])
        # the checkpoint's cached results (what `align eval` reuses) and its trainer state carry the eval too
        assert json.loads(open(f"{record['checkpoint']}/eval_results.json").read()) == record["results"]
        saved = json.loads(open(f"{record['checkpoint']}/trainer_state.json").read())["log_history"]
        assert any(CHAIR_S in h and h["step"] == step for h in saved)
    history = [h for h in summary["log_history"] if CHAIR_S in h]
    assert [h["step"] for h in history] == [2, 4]
    assert [h[CHAIR_S] for h in history] == [
        json.loads(open(f"{out}/eval/step-{s}.json").read())["results"]["toyworld_chair"]["chair_s"] for s in (2, 4)
    ]
    assert [log[CHAIR_S] for log in recorder.logs if CHAIR_S in log] == [h[CHAIR_S] for h in history]
    assert open(f"{out}/eval/training_metrics.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_training_is_identical_with_and_without_the_callback(runs):
    (with_cb, _), (without, _) = runs[True], runs[False]
    losses = [[h["loss"] for h in s["log_history"] if "loss" in h] for s in (with_cb, without)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    a, b = final_weights(with_cb), final_weights(without)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_equality_test_would_catch_a_moved_rng(tmp_path, policy, rows, cache_dir, runs, monkeypatch):
    """Negative control: without restoring the RNG, sampling during the eval changes the dropout that follows."""
    monkeypatch.setattr(callback_module, "preserved_rng", nullcontext)
    leaky, _ = lora_run(tmp_path / "leaky", policy, rows, cache_dir, True)
    a, b = final_weights(leaky), final_weights(runs[False][0])
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_full_finetune_with_activation_checkpointing(tmp_path, cache_dir, rows, policy):
    cfg = micro_sft_config(tmp_path / "full", cache_dir, steps=2, eval_at_end=False)
    cfg.model = ModelConfig(name_or_path=policy, finetune="full")
    cfg.eval = lora_cfg(tmp_path, policy, cache_dir, at_checkpoints=True).eval
    model, processor = build_model(cfg.model, cfg.run.seed)
    args = training_arguments(cfg.run, cfg.optim, activation_checkpointing=True, save_steps=1)
    trainer = AlignTrainer(
        model=model, args=args, train_dataset=RowsDataset(rows), data_collator=VisionSFTCollator(processor),
        processing_class=processor,
    )  # fmt: skip
    assert attach_checkpoint_eval(trainer, cfg) is attach_checkpoint_eval(trainer, cfg)  # attached once
    trainer.train()
    assert model.is_activation_checkpointing and model.training
    assert [h["step"] for h in trainer.state.log_history if CHAIR_S in h] == [1, 2]
    assert (tmp_path / "full" / "eval" / "step-1.json").is_file()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_off_by_default_and_unknown_benchmarks_fail_early(micro_model, tmp_path, cache_dir):
    model, processor = micro_model
    cfg = micro_sft_config(tmp_path, cache_dir)
    trainer = AlignTrainer(model=model, args=training_arguments(cfg.run, cfg.optim), processing_class=processor)
    assert attach_checkpoint_eval(trainer, cfg) is None
    with pytest.raises(ValueError, match=r"unknown 'mhal'; suites: toyworld"):
        EvalConfig(benchmarks=["toyworld", "mhal"])
    bad = EvalConfig()
    bad.benchmarks = ["amber"]  # mutated after validation: the callback checks again
    with pytest.raises(ValueError, match="'amber' needs an eval.sources entry"):
        HallucinationEvalCallback(bad, cfg.data)
    with pytest.raises(ValueError, match="checkpoint_limit"):
        EvalConfig(checkpoint_limit=0)


def test_eval_mode_restores_each_module_flag(micro_model):
    model, _ = micro_model
    model.train()
    vision_tower(model).eval()  # e.g. a frozen tower kept in eval mode
    before = {n: m.training for n, m in model.named_modules()}
    with eval_mode(model):
        assert not model.training and not torch.is_grad_enabled()
    assert {n: m.training for n, m in model.named_modules()} == before
