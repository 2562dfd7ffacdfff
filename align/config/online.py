"""The online RL recipes' configs, torch-free: `recipe: grpo` (GRPO or RLOO through TRL's trainers) and `recipe: ppo`
(our PPO with a value model)."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal

from align.config.recipes import preference_policy
from align.config.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig
from data_builders.configs import RolloutSettings
from data_builders.endpoint import ServedPolicyConfig


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
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "A preference dataset folder (`align build-data` output) whose distinct (image, prompt) records "
            "are the prompts, their meta.facts the facts; null = ToyWorld's training images (data.world)."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Prompts used (null = all)."})
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
        if self.reward == "oracle" and self.prompts is not None:
            raise ValueError("reward: oracle scores from ToyWorld's ground truth; a prompts dataset has none")
        if (self.reward == "reward_model") != (self.reward_model_path is not None):
            raise ValueError("reward: reward_model needs reward_model_path, and reward_model_path needs it")


def ppo_optim() -> OptimConfig:
    return OptimConfig(lr=1e-4, warmup_steps=5, max_steps=100, batch_size=16)


@dataclasses.dataclass
class PPORecipeConfig:
    """PPO with a value model (LLaVA-RLHF's Fact-RLHF, research/methods.md §3.3). A step is one rollout batch
    and its PPO epochs; optim.max_steps and optim.warmup_steps count steps; a minibatch (one optimiser step) is
    optim.batch_size × optim.grad_accum rows."""

    recipe: Literal["ppo"] = field(default="ppo", metadata={"help": "Selects this recipe."})
    run: RunConfig = field(
        default_factory=lambda: RunConfig(output_dir="runs/ppo"),
        metadata={"help": "Run directory, seed (LoRA init, prompt order, sampling), logging, checkpoints."},
    )
    model: ModelConfig = field(
        default_factory=preference_policy,
        metadata={"help": "The start policy (a full model) and its LoRA; the adapter-free model is the KL anchor."},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "The ToyWorld whose train images prompt."})
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "A preference dataset folder (`align build-data` output) whose distinct (image, prompt) records "
            "are the prompts, their meta.facts the facts; null = ToyWorld's training images (data.world)."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Prompts used (null = all)."})
    optim: OptimConfig = field(
        default_factory=ppo_optim,
        metadata={"help": "Optimiser (policy LoRA and value model together); steps are rollout steps."},
    )
    rollout: RolloutSettings = field(
        default_factory=lambda: RolloutSettings(temperature=1.0, top_p=1.0, max_new_tokens=64),
        metadata={"help": "Sampling of the rollouts (LLaVA-RLHF: T = 1.0)."},
    )
    rollout_batch_size: int = field(default=32, metadata={"help": "Prompts sampled per step (one caption each)."})
    served: ServedPolicyConfig | None = field(
        default=None,
        metadata={
            "help": "Sample the rollouts from a vLLM server ({base_url, model, concurrency}) serving the start "
            "policy as `model`: each step's LoRA is saved and loaded into it by path. null = sample here."
        },
    )
    ppo_epochs: int = field(default=2, metadata={"help": "Passes over each rollout batch (LLaVA-RLHF: 2)."})
    reward: Literal["reward_model", "oracle"] = field(
        default="reward_model",
        metadata={
            "help": "reward_model: the saved reward model at reward_model_path (with the image's facts when it "
            "was trained with them); oracle: ToyWorld's ground truth (recall minus hallucinated mentions)."
        },
    )
    reward_model_path: str | None = field(
        default=None, metadata={"help": "A reward model's final/ (`align train reward_model`)."}
    )
    value_model_path: str | None = field(
        default=None,
        metadata={
            "help": "The reward model the value model starts from (LLaVA-RLHF); null: reward_model_path, or with "
            "reward: oracle a fresh LoRA and head on the start policy."
        },
    )
    kl_coef: float = field(
        default=0.1, metadata={"help": "Per-token KL penalty to the start policy (LLaVA-RLHF: 0.1)."}
    )
    gamma: float = field(default=1.0, metadata={"help": "GAE discount (LLaVA-RLHF: 1)."})
    lam: float = field(default=1.0, metadata={"help": "GAE lambda (LLaVA-RLHF: 1)."})
    clip_range: float = field(default=0.2, metadata={"help": "Policy ratio clip (LLaVA-RLHF: 0.2)."})
    value_clip: float = field(default=0.2, metadata={"help": "Value clip around the rollout's values (0.2)."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss (LLaVA-RLHF: 0.1)."})
    reward_scale: float = field(
        default=1.0, metadata={"help": "Factor on the shaped rewards before GAE (LLaVA-RLHF: 10, unwhitened)."}
    )
    truncation_penalty: float = field(
        default=-8.0, metadata={"help": "Added to the score of a reply cut before its end token (LLaVA-RLHF: −8)."}
    )
    hallucination_weight: float = field(default=1.0, metadata={"help": "reward: oracle: per hallucinated mention."})
    recall_weight: float = field(default=1.0, metadata={"help": "reward: oracle: weight of the recall."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Hallucination eval of the result."})

    def __post_init__(self):
        if self.model.name_or_path is None:
            raise ValueError("model.name_or_path: PPO starts from a trained base policy (run `align demo` first)")
        if self.model.finetune != "lora":
            raise ValueError("model.finetune: PPO trains a LoRA (the adapter-free model is its KL reference)")
        if self.rollout_batch_size % (self.optim.batch_size * self.optim.grad_accum):
            raise ValueError("optim.batch_size × optim.grad_accum (the minibatch) must divide rollout_batch_size")
        if self.ppo_epochs < 1 or self.kl_coef < 0 or self.clip_range <= 0 or self.value_clip <= 0:
            raise ValueError("need ppo_epochs >= 1, kl_coef >= 0, clip_range > 0 and value_clip > 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1) or self.reward_scale <= 0:
            raise ValueError("need gamma and lam in [0, 1] and reward_scale > 0")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")
        if self.data.packing:
            raise ValueError("data.packing: PPO scores whole replies; set data.packing: false")
        if self.reward == "oracle" and self.prompts is not None:
            raise ValueError("reward: oracle scores from ToyWorld's ground truth; a prompts dataset has none")
        if self.reward == "reward_model" and not self.reward_model_path:
            raise ValueError("reward: reward_model needs reward_model_path (`align train reward_model` makes one)")
        if self.run.report_to != "none":
            raise ValueError(
                "run.report_to: PPO logs to train.log and train_summary.json only; trackers (tensorboard, wandb) "
                "are not wired into its loop yet: set run.report_to: none"
            )
