"""PPO with a value model (align/recipes/ppo.py) on a micro policy and a micro reward model: one PPO step moves
every trainable parameter of the policy's LoRA and the value model and logs the KL, a run stopped after a
checkpoint resumes to the weights of an uninterrupted one, checkpoints are scored by the eval callback, replies
cut before their end token keep none, and a NaN reward stops the run naming the image."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from align.config.online import PPORecipeConfig
from align.config.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig
from align.core.logprobs import IGNORE
from align.core.models import build_model
from align.recipes import ppo
from align.rollout.prompts import rl_prompts
from data_builders.configs import RolloutSettings
from data_builders.schema import PREFERENCE_FEATURES
from data_builders.toyworld_data import toyworld_prompts
from rewards.functions import FiniteRewards
from rewards.model import RewardModel, save_reward_model
from tests.conftest import SMALL_WORLD


@pytest.fixture(scope="module")
def reward_model(micro_opa_data, tmp_path_factory):
    """A fact-reading reward model on the micro policy: a fresh LoRA (B moved off zero) and head, saved."""
    policy, _ = micro_opa_data
    backbone, processor = build_model(ModelConfig(name_or_path=policy, finetune="lora", lora_r=4, lora_alpha=8), 1)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    out = tmp_path_factory.mktemp("rm") / "rm"
    return str(save_reward_model(RewardModel(backbone), processor, out, base_model=policy, facts=True))


def _cfg(policy, rm, cache_dir, out, steps=2, **kw) -> PPORecipeConfig:
    return PPORecipeConfig(
        run=RunConfig(output_dir=str(out), seed=0, logging_steps=1, save_steps=1, report_to="none", eval_at_end=False),
        model=ModelConfig(name_or_path=policy, finetune="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0),
        data=DataConfig(world=SMALL_WORLD, cache_dir=str(cache_dir)),
        limit=8,
        optim=OptimConfig(lr=5e-3, warmup_steps=0, max_steps=steps, batch_size=2),
        rollout=RolloutSettings(temperature=1.0, top_p=1.0, max_new_tokens=8, batch_size=8),
        rollout_batch_size=4,
        ppo_epochs=1,
        reward_model_path=rm,
        eval=EvalConfig(limit=4, benchmarks=["toyworld"]),
        **kw,
    )


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_one_step_moves_every_lora_and_value_parameter_and_logs_the_kl(
    micro_opa_data, reward_model, cache_dir, tmp_path
):
    policy, _ = micro_opa_data
    run = ppo.PPORun(_cfg(policy, reward_model, cache_dir, tmp_path, steps=1))
    policy_before, value_before = _trainable(run.policy), _trainable(run.value)
    assert any("lora_" in n for n in policy_before) and {"head.weight", "head.bias"} <= set(value_before)
    batch, stats = run.rollout()
    assert batch["old_values"].shape == batch["old_logps"].shape == batch["advantages"].shape
    assert stats["kl"] == pytest.approx(0.0, abs=1e-5)  # the fresh LoRA's B is zero: the policy is its reference
    logs = run.update(batch)  # two minibatches: the second moves A too (its gradient needs B != 0)
    for name, model, before in (("policy", run.policy, policy_before), ("value", run.value, value_before)):
        after = dict(model.named_parameters())
        unchanged = [n for n, p in before.items() if torch.equal(p, after[n])]
        assert not unchanged, f"{name} parameters that did not move: {unchanged[:4]}"
    assert all(math.isfinite(v) for v in logs.values())
    _, second = run.rollout()  # the policy has moved away from its reference: a KL to log
    assert second["kl"] != 0.0 and math.isfinite(second["kl"])


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(
    micro_opa_data, reward_model, cache_dir, tmp_path, monkeypatch
):
    policy, _ = micro_opa_data
    whole = ppo.main(_cfg(policy, reward_model, cache_dir, tmp_path / "whole", steps=3))
    assert [e["step"] for e in whole["log_history"]] == [1, 2, 3] and "kl" in whole["log_history"][0]

    save = ppo.PPORun.save

    def save_then_die(self, callback):  # as if killed right after the step-2 checkpoint was written
        out = save(self, callback)
        if self.state.global_step == 2:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(ppo.PPORun, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ppo.main(_cfg(policy, reward_model, cache_dir, tmp_path / "stopped", steps=3))
    monkeypatch.setattr(ppo.PPORun, "save", save)
    assert not (tmp_path / "stopped" / "final").exists()
    resumed = ppo.main(_cfg(policy, reward_model, cache_dir, tmp_path / "stopped", steps=3))
    assert resumed["log_history"] == whole["log_history"]
    for file in (ppo.POLICY_FILE, ppo.VALUE_FILE):
        a, b = (load_file(tmp_path / d / "checkpoint-3" / file) for d in ("whole", "stopped"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = ppo.main(_cfg(policy, reward_model, cache_dir, tmp_path / "stopped", steps=3))
    assert again["seconds"] == resumed["seconds"]  # finished: the stored summary, nothing trained


def test_checkpoints_are_scored_by_the_eval_callback(micro_opa_data, reward_model, cache_dir, tmp_path):
    policy, _ = micro_opa_data
    cfg = _cfg(policy, reward_model, cache_dir, tmp_path, steps=1)
    cfg.eval.at_checkpoints = True
    summary = ppo.main(cfg)
    record = json.loads((tmp_path / "eval" / "step-1.json").read_text())
    assert record["step"] == 1 and "chair_i" in record["results"]["toyworld_chair"]
    assert any("eval_toyworld_chair/chair_i" in e for e in summary["log_history"])


def test_a_reply_cut_at_max_new_tokens_keeps_no_end_token(micro_opa_data, reward_model, cache_dir, tmp_path):
    policy, _ = micro_opa_data
    run = ppo.PPORun(_cfg(policy, reward_model, cache_dir, tmp_path))
    prompts, eos = run.prompts[:2], run.processor.tokenizer.eos_token_id
    rows = ppo.encode_replies(run.processor, prompts, [("a red cup", True), ("a red cup", False)], 160,
                              run.n_image_tokens, {})  # fmt: skip
    finished, cut = ([t for t in r["labels"] if t != IGNORE] for r in rows)
    assert finished[-1] == eos and cut == finished[:-1]


def test_token_values_read_the_head_before_each_response_token(micro_opa_data, reward_model, cache_dir, tmp_path):
    policy, _ = micro_opa_data
    run = ppo.PPORun(_cfg(policy, reward_model, cache_dir, tmp_path))
    rows = ppo.encode_replies(run.processor, run.prompts[:2], [("a red cup", True), ("two cats", True)], 160,
                              run.n_image_tokens, {})  # fmt: skip
    batch = run.collator(rows)
    run.value.eval()
    with torch.no_grad():
        values = ppo.token_values(run.value, batch, width=6)
        hidden = run.value.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
        for i, row in enumerate(rows):
            first = row["labels"].index(next(t for t in row["labels"] if t != IGNORE))
            n = len(row["labels"]) - first
            expected = run.value.head(hidden[i, first - 1 : first - 1 + n]).squeeze(-1)
            assert torch.allclose(values[i, :n], expected) and not values[i, n:].any()


def test_step_indices_visit_every_prompt_once_per_pass():
    first_pass = [i for step in range(3) for i in ppo.step_indices(12, 4, step, seed=0)]
    assert sorted(first_pass) == list(range(12))
    assert ppo.step_indices(12, 4, 5, seed=0) == ppo.step_indices(12, 4, 5, seed=0)
    assert ppo.step_indices(12, 4, 3, seed=0) != ppo.step_indices(12, 4, 0, seed=0)


def test_a_nan_reward_stops_the_run_naming_the_image(micro_opa_data, reward_model, cache_dir, tmp_path):
    policy, _ = micro_opa_data
    run = ppo.PPORun(_cfg(policy, reward_model, cache_dir, tmp_path))
    run.reward = FiniteRewards(lambda prompts, completions, **_: [0.0] * (len(completions) - 1) + [math.nan])
    with pytest.raises(ValueError, match=r"gave nan for sample \S+-train-\d+"):
        run.rollout()


def _preference_dataset(cache_dir, out) -> str:
    """Two pairs per image of four small-world images, the ground truth as each record's facts."""
    select = SimpleNamespace(world=SMALL_WORLD, cache_dir=str(cache_dir), split="train", limit=4, seed=0)
    records = [
        {
            "id": f"{p['id']}#{k}",
            "image": {"bytes": p["image"], "path": None},
            "prompt": p["prompt"],
            "chosen": "a cup",
            "rejected": "a dog",
            "chosen_spans": [],
            "rejected_spans": [],
            "source": "test",
            "meta": json.dumps({"facts": [f"fact of {p['id']}"]}),
        }  # fmt: skip
        for p in toyworld_prompts(select)
        for k in range(2)
    ]
    Dataset.from_list(records, features=PREFERENCE_FEATURES).save_to_disk(str(out))
    return str(out)


def test_a_preference_dataset_gives_the_prompts_and_facts(micro_opa_data, reward_model, cache_dir, tmp_path):
    policy, _ = micro_opa_data
    dataset = _preference_dataset(cache_dir, tmp_path / "pairs")
    prompts = rl_prompts(DataConfig(), dataset, limit=None, seed=0)
    assert [p["id"] for p in prompts] == [f"{p}#0" for p in sorted({p["id"][:-2] for p in prompts})]
    assert len(prompts) == 4 and all(
        p["objects"] is None and p["facts"] == [f"fact of {p['id'][:-2]}"] for p in prompts
    )
    cfg = _cfg(policy, reward_model, cache_dir, tmp_path, steps=1, prompts=dataset)
    cfg.optim.grad_accum, cfg.optim.batch_size = 2, 1  # minibatches of 2 rows in two micro-batches
    summary = ppo.main(cfg)
    step = summary["log_history"][0]
    assert "oracle/chair_i" not in step and math.isfinite(step["reward/score"]) and math.isfinite(step["loss"])
    with pytest.raises(ValueError, match="reward: oracle"):
        _cfg(policy, None, cache_dir, tmp_path, prompts=dataset, reward="oracle")
