"""GRPO and RLOO through TRL's trainers (align/recipes/grpo.py) on a micro policy: the ToyWorld prompts with their
images and ground truth, training that moves the LoRA and logs the oracle reward, a saved final policy, and a
NaN reward that stops the run naming the sample."""

from __future__ import annotations

import math

import pytest
import torch

from align.config.online import GRPORecipeConfig
from align.config.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig
from align.recipes.grpo import build_trainer, main, prompt_rows
from rewards.functions import FiniteRewards
from tests.conftest import SMALL_WORLD


def _cfg(policy, cache_dir, out, algorithm="grpo", **kw) -> GRPORecipeConfig:
    return GRPORecipeConfig(
        algorithm=algorithm,
        run=RunConfig(output_dir=str(out), seed=0, logging_steps=1, save_steps=2, report_to="none", eval_at_end=False),
        model=ModelConfig(name_or_path=policy, finetune="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0),
        data=DataConfig(world=SMALL_WORLD, cache_dir=str(cache_dir)),
        limit=8,
        optim=OptimConfig(lr=5e-3, warmup_steps=0, max_steps=2, batch_size=4),
        num_generations=2,
        max_completion_length=8,
        eval=EvalConfig(limit=4),
        **kw,
    )


def test_prompts_carry_their_image_and_ground_truth(micro_opa_data, cache_dir, tmp_path):
    policy, _ = micro_opa_data
    rows = prompt_rows(_cfg(policy, cache_dir, tmp_path))
    assert len(rows) == 8 and set(rows.column_names) == {"prompt", "image", "objects", "facts", "image_id"}
    content = rows[0]["prompt"][0]["content"]
    assert content[0]["type"] == "image" and content[1]["text"]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_training_moves_the_lora_and_saves_the_policy(micro_opa_data, cache_dir, tmp_path, algorithm):
    policy, _ = micro_opa_data
    cfg = _cfg(policy, cache_dir, tmp_path / algorithm, algorithm=algorithm)
    trainer, _ = build_trainer(cfg)
    assert isinstance(trainer.reward_funcs[0], FiniteRewards)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    moved = [n for n, p in trainer.model.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])]
    assert moved  # B starts at zero: a step with any advantage moves it
    summary = main(_cfg(policy, cache_dir, tmp_path / f"{algorithm}-run", algorithm=algorithm))
    assert (tmp_path / f"{algorithm}-run" / "final" / "config.json").is_file()
    assert all(math.isfinite(r) for r in summary["reward_first_last"])


def test_a_nan_reward_stops_training_naming_the_sample():
    guarded = FiniteRewards(lambda prompts, completions, completion_ids=None, **_: [0.5, float("nan")])
    with pytest.raises(ValueError, match=r"gave nan for sample toy-train-00007 \(completion 'a dog'\)"):
        guarded(["p", "p"], ["a cup", "a dog"], image_id=["toy-train-00003", "toy-train-00007"])
    assert guarded.__name__ == "<lambda>"
    inf = FiniteRewards(lambda prompts, completions, completion_ids=None, **_: [float("inf")])
    with pytest.raises(ValueError, match="batch item 0"):
        inf(["p"], ["x"])


def test_a_saved_reward_model_rewards_the_policy(micro_opa_data, cache_dir, tmp_path):
    from align.core.models import build_model
    from rewards.functions import RewardModelReward
    from rewards.model import RewardModel, save_reward_model

    policy, _ = micro_opa_data
    backbone, processor = build_model(ModelConfig(name_or_path=policy, finetune="lora", lora_r=4), seed=0)
    path = save_reward_model(RewardModel(backbone), processor, tmp_path / "rm", base_model=policy, facts=True)
    cfg = _cfg(policy, cache_dir, tmp_path / "grpo-rm", reward="reward_model", reward_model_path=str(path))
    trainer, _ = build_trainer(cfg)
    assert isinstance(trainer.reward_funcs[0].fn, RewardModelReward)
    trainer.train()
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    assert rewards and all(math.isfinite(r) for r in rewards)
    with pytest.raises(ValueError, match="reward_model_path"):
        _cfg(policy, cache_dir, tmp_path, reward="reward_model")
