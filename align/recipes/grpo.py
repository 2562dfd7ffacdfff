"""GRPO and RLOO on ToyWorld images through TRL's trainers, with the oracle reward or a saved reward model.

    align train configs/toy/grpo.yaml                                          # GRPO (TRL's GRPOTrainer)
    align train configs/toy/grpo.yaml algorithm=rloo run.output_dir=runs/rloo  # RLOO (TRL's RLOOTrainer)
    align train configs/toy/grpo.yaml reward=reward_model reward_model_path=runs/reward_model/final

Each training image is a prompt ("describe the image"); the policy (a fresh LoRA on the start model) samples
`num_generations` captions of it, and `ToyWorldOracleReward` scores each from the ground truth: recall minus the
hallucinated object mentions (or `reward: reward_model`: a saved reward model, reading the image's ground truth
as facts when it was trained with them). GRPO normalises the rewards within each image's group; RLOO takes each
caption's baseline from the others of its group. With beta > 0 the adapter-free start model is the KL reference.
A NaN or infinite reward stops the run with the sample named (`FiniteRewards`). TRL takes the LLaVA as it is: the
prompts are conversational with an image placeholder and the `image` column holds the PIL images.
"""

from __future__ import annotations

import json
import time

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from align.config.online import GRPORecipeConfig
from align.core.models import build_model
from align.core.trainer import ConsoleMixin, begin_run, train_and_save, training_arguments, write_summary
from align.eval.runner import evaluate_checkpoint
from align.rollout.prompts import rl_prompts
from rewards.functions import FiniteRewards, RewardModelReward, ToyWorldOracleReward


class AlignGRPOTrainer(ConsoleMixin, GRPOTrainer):
    """TRL's GRPOTrainer with the project's console lines and train.log."""


class AlignRLOOTrainer(ConsoleMixin, RLOOTrainer):
    """TRL's RLOOTrainer with the project's console lines and train.log."""


def prompt_rows(cfg: GRPORecipeConfig) -> Dataset:
    """One conversational prompt per training image (or per record of `cfg.prompts`), with its image, facts and,
    on ToyWorld, ground truth (`objects`)."""
    rows = []
    for p in rl_prompts(cfg.data, cfg.prompts, cfg.limit, cfg.run.seed):
        content = [{"type": "image"}, {"type": "text", "text": p["prompt"]}]
        rows.append({"prompt": [{"role": "user", "content": content}], "image": p["image"], "objects": p["objects"],
                     "facts": json.dumps(p["facts"]), "image_id": p["id"]})  # fmt: skip
    return Dataset.from_list(rows)


def build_trainer(cfg: GRPORecipeConfig):
    model, processor = build_model(cfg.model, cfg.run.seed)
    grpo = cfg.algorithm == "grpo"
    config_cls, trainer_cls = (GRPOConfig, AlignGRPOTrainer) if grpo else (RLOOConfig, AlignRLOOTrainer)
    args = training_arguments(
        cfg.run,
        cfg.optim,
        cfg.model.dtype,
        args_cls=config_cls,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
    )
    if cfg.reward == "oracle":
        reward = FiniteRewards(ToyWorldOracleReward(cfg.hallucination_weight, cfg.recall_weight))
    else:
        reward = FiniteRewards(RewardModelReward(cfg.reward_model_path, batch_size=cfg.optim.batch_size))
    trainer = trainer_cls(
        model=model, reward_funcs=[reward], args=args, train_dataset=prompt_rows(cfg), processing_class=processor
    )
    return trainer, processor


def main(cfg: GRPORecipeConfig) -> dict:
    run, t0 = cfg.run, time.time()
    finished = begin_run(cfg, tag=cfg.algorithm)
    if finished is not None:
        return finished
    trainer, processor = build_trainer(cfg)
    result, final = train_and_save(trainer, run, processor, cfg, tag=cfg.algorithm)
    rewards = [e["reward"] for e in trainer.state.log_history if "reward" in e]
    summary = {
        "final": str(final),
        "start": cfg.model.name_or_path,
        "algorithm": cfg.algorithm,
        "train": result.metrics,
        "reward_first_last": [rewards[0], rewards[-1]] if rewards else None,
        "log_history": trainer.state.log_history,
        "seconds": round(time.time() - t0, 1),
    }
    if run.eval_at_end:
        summary["eval"] = evaluate_checkpoint(final, cfg.eval, data_cfg=cfg.data)
    return write_summary(run, summary)
