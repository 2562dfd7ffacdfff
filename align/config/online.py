"""The online RL recipes' config (`recipe: grpo`): GRPO or RLOO through TRL's trainers, torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal

from align.config.recipes import preference_policy
from align.config.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig


@dataclasses.dataclass
class GRPORecipeConfig:
    recipe: Literal["grpo"] = field(default="grpo", metadata={"help": "Selects this recipe."})
    algorithm: Literal["grpo", "rloo"] = field(
        default="grpo", metadata={"help": "grpo: TRL's GRPOTrainer; rloo: TRL's RLOOTrainer (leave-one-out baseline)."}
    )
    run: RunConfig = field(
        default_factory=lambda: RunConfig(output_dir="runs/grpo"),
        metadata={"help": "Run directory, seed (LoRA init, prompt order, sampling), logging, checkpoints."},
    )
    model: ModelConfig = field(
        default_factory=preference_policy,
        metadata={"help": "The start policy (a full model) and its LoRA; with beta > 0 also the reference."},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "The ToyWorld whose train images prompt."})
    limit: int | None = field(default=None, metadata={"help": "Training images used as prompts (null = all)."})
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=5, max_steps=100, batch_size=16),
        metadata={"help": "Optimiser and schedule; batch_size counts completions (num_generations per prompt)."},
    )
    num_generations: int = field(default=4, metadata={"help": "Completions sampled per prompt (the group)."})
    max_completion_length: int = field(default=64, metadata={"help": "Longest completion in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    beta: float = field(
        default=0.04, metadata={"help": "KL coefficient to the start policy (0: no reference model is run)."}
    )
    reward: Literal["oracle", "reward_model"] = field(
        default="oracle",
        metadata={
            "help": "oracle: ToyWorld's ground truth (recall minus hallucinated mentions); reward_model: the saved "
            "reward model at reward_model_path (with the image's facts when it was trained with them)."
        },
    )
    reward_model_path: str | None = field(
        default=None, metadata={"help": "reward: reward_model: a reward model's final/ (`align train reward_model`)."}
    )
    hallucination_weight: float = field(
        default=1.0, metadata={"help": "Oracle reward: weight of each hallucinated object mention (subtracted)."}
    )
    recall_weight: float = field(default=1.0, metadata={"help": "Oracle reward: weight of the recall (added)."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Hallucination eval of the result."})

    def __post_init__(self):
        if self.model.name_or_path is None:
            raise ValueError("model.name_or_path: GRPO starts from a trained base policy (run `align demo` first)")
        if self.num_generations < 2 or self.optim.batch_size % self.num_generations:
            raise ValueError("num_generations must be >= 2 and divide optim.batch_size (whole groups per batch)")
        if self.beta < 0 or self.temperature <= 0 or self.max_completion_length < 1:
            raise ValueError("need beta >= 0, temperature > 0 and max_completion_length >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")
        if self.data.packing:
            raise ValueError("data.packing: GRPO samples whole prompts; set data.packing: false")
        if (self.reward == "reward_model") != (self.reward_model_path is not None):
            raise ValueError("reward: reward_model needs reward_model_path, and reward_model_path needs it")
