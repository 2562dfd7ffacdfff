"""The training recipes' configs (`recipe:` sft, dpo, opa_dpo, rlaif_v): typed dataclasses with help text, torch-free.

Each recipe's code is in align/recipes/<name>.py; align/config/registry.py maps the `recipe:` key to both.
`model.finetune: lora` trains a fresh LoRA whose adapter-free model is the reference; `full` trains every weight
against a frozen copy of the start model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal

from align.config.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig, check_packing
from data_builders.configs import RLAIFVDataConfig


@dataclasses.dataclass
class SFTDataConfig(DataConfig):
    """SFT's data section: DataConfig (world, cache_dir, max_length; the world is also the ToyWorld eval's) plus
    where the training rows come from. A subclass, not new DataConfig fields: only SFT reads user data, and every
    other recipe keeps a data section that cannot name a source it would ignore. The path is checked when the
    recipe runs, not here, so a shipped config can name a file the user makes (data_builders/sft_import.py)."""

    source: Literal["toyworld", "llava_json", "hf"] = field(
        default="toyworld",
        metadata={
            "help": "toyworld: captions + QA of data.world; llava_json: a LLaVA-format JSON list (id, image, "
            "conversations); hf: a save_to_disk folder, .parquet, .jsonl or .json of {image, prompt, response}."
        },
    )
    path: str | None = field(default=None, metadata={"help": "llava_json / hf: the file or folder to read."})
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder that relative image paths are resolved against (null = the data file's folder)."},
    )
    prompt_field: str = field(default="prompt", metadata={"help": "hf: the column holding the prompt."})
    response_field: str = field(default="response", metadata={"help": "hf: the column holding the reply."})
    image_field: str = field(default="image", metadata={"help": "hf: the column holding image bytes or a path."})
    limit: int | None = field(
        default=None, metadata={"help": "llava_json / hf: read the first N items only (null = all)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.source == "toyworld":
            if self.path is not None or self.image_root is not None:
                raise ValueError("path / image_root: only read with source llava_json or hf, not toyworld")
        elif not self.path:
            raise ValueError(f"path: source {self.source} needs data.path (the file or folder to read)")
        for name in ("prompt_field", "response_field", "image_field"):
            if not getattr(self, name):
                raise ValueError(f"{name}: must name a column")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: must be >= 1 or null")

    def shared(self) -> DataConfig:
        """The DataConfig part (world, cache_dir, max_length): what the other recipes' data sections take."""
        return DataConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)})


@dataclasses.dataclass
class SFTConfig:
    recipe: Literal["sft"] = field(default="sft", metadata={"help": "Selects this recipe."})
    run: RunConfig = field(
        default_factory=lambda: RunConfig(output_dir="runs/sft_base", logging_steps=50, save_steps=500),
        metadata={"help": "Run directory, seed, logging, checkpoints, resume."},
    )
    model: ModelConfig = field(default_factory=lambda: ModelConfig(finetune="full"), metadata={"help": "Policy."})
    data: SFTDataConfig = field(
        default_factory=SFTDataConfig, metadata={"help": "Training data: ToyWorld or the user's (data.source)."}
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(projector_lr=6e-5, max_steps=2000),
        metadata={"help": "Optimiser and schedule."},
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Hallucination eval of the final model."})
    vision_pretrain_steps: int = field(
        default=1000,
        metadata={
            "help": "Tiny model on ToyWorld data only: first pretrain the vision tower and projector on per-patch "
            "ToyWorld labels (0 = off; skipped for user data, which has none; see align/core/vision_pretrain.py)."
        },
    )
    vision_align_words: bool = field(
        default=True,
        metadata={
            "help": "In that pretraining, read each image token's class through the LM's embedding of the class "
            "word (cosine, learned scale), so image tokens start out looking like the words for what they show."
        },
    )
    freeze_vision: bool = field(
        default=True, metadata={"help": "Keep the vision tower frozen during SFT (LLaVA-1.5)."}
    )
    row_weight_power: float = field(
        default=0.35,
        metadata={
            "help": "Each row's response tokens weigh n^-p in the loss (n: that row's tokens). 0: the mean over "
            "the batch's tokens (LLaVA's; use it on your own data); 1: the mean of the rows' means, so a 2-token "
            "yes/no answer weighs as much as a 35-token caption. 0.35 (ToyWorld's base policy) lets the tiny LM "
            "learn POPE's yes/no lookup without costing the captions (README, settings rows u-x)."
        },
    )

    def __post_init__(self):
        if not 0.0 <= self.row_weight_power <= 1.0:
            raise ValueError(f"row_weight_power must be in [0, 1], got {self.row_weight_power}")
        if type(self.data) is DataConfig:  # a plain data section (code, not YAML): ToyWorld, as before
            self.data = SFTDataConfig(**{f.name: getattr(self.data, f.name) for f in dataclasses.fields(DataConfig)})
        if self.model.name_or_path is None and self.model.finetune == "lora":
            raise ValueError("model: the tiny model is built from scratch, so it needs finetune: full, not lora")
        check_packing(self.model, self.data)


def preference_policy() -> ModelConfig:
    """The default start of the DPO-family recipes: the demo's base policy with a fresh LoRA on the language model,
    the vision tower and the projector (OPA-DPO adapts all three; DPO does too, so the two compare on the same
    trainable weights)."""
    return ModelConfig(
        name_or_path="runs/demo/sft_base/final",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_vision=True,
        lora_projector=True,
    )


def preference_optim() -> OptimConfig:
    """The DPO-family default schedule: OPA-DPO's DPO-stage learning rate, 100 steps of 8 pairs."""
    return OptimConfig(lr=1e-5, warmup_steps=10, max_steps=100, batch_size=8)


@dataclasses.dataclass
class DPORecipeConfig:
    recipe: Literal["dpo"] = field(default="dpo", metadata={"help": "Selects this recipe."})
    run: RunConfig = field(
        default_factory=lambda: RunConfig(output_dir="runs/dpo"),
        metadata={"help": "Run directory, seed (LoRA init, data order), logging, checkpoints, resume."},
    )
    dataset: str = field(
        default="runs/pref_data/dataset",
        metadata={"help": "PreferenceRecord dataset (save_to_disk folder), e.g. from `align build-data`."},
    )
    model: ModelConfig = field(
        default_factory=preference_policy,
        metadata={"help": "The start policy (a full model; also the reference) and the LoRA settings."},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "World used for eval; max_length."})
    optim: OptimConfig = field(
        default_factory=preference_optim,
        metadata={"help": "Optimiser and schedule (batch_size counts pairs)."},
    )
    loss: Literal["dpo", "ddpo", "sft"] = field(
        default="dpo",
        metadata={
            "help": "dpo: sigmoid DPO, spans ignored; ddpo: RLHF-V's token-weighted DPO from the spans; sft: the "
            "SFT-on-chosen baseline, mean token NLL of the chosen answers of the same pairs (no rejected, no "
            "reference)."
        },
    )
    beta: float = field(default=0.1, metadata={"help": "DPO temperature β."})
    gamma: float | None = field(
        default=None,
        metadata={
            "help": "ddpo: weight of the corrected tokens. null: each span's stored weight (the γ the data was "
            "built with); a number: every span re-weighted to it, so one dataset serves a γ sweep."
        },
    )
    average: bool = field(
        default=False,
        metadata={
            "help": "ddpo: divide each side's weighted log-ratio by Σ w_t (the paper's 1/N; Muffin's "
            "dpo_use_average). false: the weighted sum, as RLHF-V's current script."
        },
    )
    sft_weight: float = field(
        default=0.0, metadata={"help": "Weight of an NLL term on the chosen answer (Muffin's SFT_weight; 0 = off)."}
    )
    precompute_ref_logps: bool = field(
        default=False,
        metadata={
            "help": "Compute the reference's log-probs of every pair once before training and skip the reference "
            "forward at every step (stored beside the dataset in ref_logps/, reused by runs with the same data, "
            "start model and tokenisation). Same losses; each step runs the policy alone."
        },
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Hallucination eval of the result."})

    def __post_init__(self):
        if self.model.name_or_path is None:
            raise ValueError("model.name_or_path: DPO starts from a trained base policy (run `align demo` first)")
        if not self.beta > 0 or (self.gamma is not None and not self.gamma > 0) or self.sft_weight < 0:
            raise ValueError("need beta > 0, gamma > 0 or null, and sft_weight >= 0")
        if self.data.packing:
            raise ValueError("data.packing: packs SFT rows (sft, the OPA step); a DPO batch stays one row per answer")


@dataclasses.dataclass
class OPAStepConfig:
    steps: int = field(default=800, metadata={"help": "OPA step: LoRA SFT steps on reference + revision (0 = skip)."})
    lr: float = field(default=2e-4, metadata={"help": "OPA step learning rate."})
    batch_size: int = field(default=32, metadata={"help": "OPA step batch size per device."})
    grad_accum: int = field(default=1, metadata={"help": "OPA step gradient accumulation steps."})
    answers: Literal["both", "reference"] = field(
        default="both",
        metadata={
            "help": "both: reference answers + expert revisions (OPA-DPO); reference: the references alone, an "
            "ablation that is plain continued SFT on ground truth, without the on-policy corrections."
        },
    )


@dataclasses.dataclass
class OPADPOConfig:
    recipe: Literal["opa_dpo"] = field(default="opa_dpo", metadata={"help": "Selects this recipe."})
    run: RunConfig = field(
        default_factory=lambda: RunConfig(output_dir="runs/opa_dpo"),
        metadata={"help": "Run directory, seed (LoRA init, data order, image masks), logging, checkpoints, resume."},
    )
    dataset: str = field(default="runs/opa_data/dataset", metadata={"help": "OPA dataset from `align build-data`."})
    model: ModelConfig = field(
        default_factory=preference_policy,
        metadata={"help": "The base policy (a full model) and the LoRA settings of both stages."},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "World used for eval; max_length."})
    opa: OPAStepConfig = field(default_factory=OPAStepConfig, metadata={"help": "The OPA step."})
    optim: OptimConfig = field(
        default_factory=preference_optim,
        metadata={"help": "OPA-DPO optimiser and schedule."},
    )
    baseline: Literal["none", "offpolicy"] = field(
        default="none", metadata={"help": "offpolicy: plain DPO of the reference over an off-policy hallucination."}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO temperature."})
    loss_form: Literal["token", "sequence", "mean"] = field(
        default="sequence",
        metadata={
            "help": "token: OPA-DPO's position-paired per-token form; sequence: plain DPO; mean: length-normalised "
            "DPO (not in OPA-DPO; use a larger beta)."
        },
    )
    c_std: float = field(default=1.0, metadata={"help": "Weight of the reference-answer pairs."})
    c_ai: float = field(default=1.0, metadata={"help": "Weight of the expert-revision pairs."})
    c_copo: float = field(default=0.2, metadata={"help": "Weight of the image-contrast (masked image) pairs."})
    c_anc: float = field(default=1.0, metadata={"help": "Weight of the anchor term (0 = off)."})
    delta: float = field(default=0.0, metadata={"help": "Anchor threshold δ."})
    c_sft: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an NLL term on the chosen answers (reference and revision; RPO-style). Not in "
            "OPA-DPO; counters the DPO stage's drift to shorter answers."
        },
    )
    precompute_ref_logps: bool = field(
        default=False,
        metadata={
            "help": "Compute the reference's log-probs of the reference answer, rollout and revision once before "
            "the DPO stage (stored beside the dataset in ref_logps/); the reference forward then runs on the two "
            "masked-image views alone, whose masks are drawn per batch. Same losses."
        },
    )
    mask: Literal["random", "blocks"] = field(default="random", metadata={"help": "Image masking for I_m."})
    mask_ratio: float = field(default=0.3, metadata={"help": "Share of the image masked."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Hallucination eval of the result."})

    def __post_init__(self):
        if self.model.name_or_path is None:
            raise ValueError("model.name_or_path: OPA-DPO starts from a trained base policy (run `align demo` first)")
        if self.beta <= 0 or not 0 <= self.mask_ratio < 1:
            raise ValueError("need beta > 0 and 0 <= mask_ratio < 1")
        check_packing(self.model, self.data)


@dataclasses.dataclass
class RLAIFVConfig:
    recipe: Literal["rlaif_v"] = field(default="rlaif_v", metadata={"help": "Selects this recipe."})
    output_dir: str = field(default="runs/rlaif_v", metadata={"help": "Run directory (round-N/ inside)."})
    seed: int = field(default=0, metadata={"help": "Seed of prompts, sampling, LoRA init and data order."})
    policy: str = field(default="runs/demo/sft_base/final", metadata={"help": "The start policy (a full model)."})
    rounds: int = field(default=2, metadata={"help": "Iterations (the RLAIF-V paper: 4)."})
    data: RLAIFVDataConfig = field(
        default_factory=RLAIFVDataConfig,
        metadata={"help": "Feedback data of each round (policy, output_dir, seed and round are set per round)."},
    )
    train: DPORecipeConfig = field(
        default_factory=DPORecipeConfig,
        metadata={"help": "DPO of each round (model.name_or_path, dataset, output_dir and seed are set per round)."},
    )
    eval_start: bool = field(default=True, metadata={"help": "Also evaluate the start policy (round 0's input)."})

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.data.served is not None and self.rounds > 1 and self.train.model.finetune != "lora":
            raise ValueError(
                "data.served with rounds > 1 needs train.model.finetune: lora: each round's policy is pushed to the "
                "server as a LoRA adapter over its base (a fully fine-tuned policy would need a server restart)"
            )


@dataclasses.dataclass
class RewardModelConfig:
    recipe: Literal["reward_model"] = field(default="reward_model", metadata={"help": "Selects this recipe."})
    run: RunConfig = field(
        default_factory=lambda: RunConfig(output_dir="runs/reward_model"),
        metadata={"help": "Run directory, seed (LoRA and head init, data order, the held-out split), checkpoints."},
    )
    dataset: str = field(
        default="runs/reward_pairs/dataset",
        metadata={"help": "PreferenceRecord dataset; each record's meta.facts (a list of strings) are its facts."},
    )
    model: ModelConfig = field(
        default_factory=preference_policy,
        metadata={"help": "The backbone: a trained policy with a fresh LoRA (LLaVA-RLHF: LoRA on its SFT model)."},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "max_length of a prompt + response."})
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=10, max_steps=600, batch_size=8),
        metadata={"help": "Optimiser and schedule (batch_size counts pairs)."},
    )
    facts: bool = field(
        default=True,
        metadata={
            "help": "Fact augmentation: the reward model reads each record's facts before the prompt (Fact-RLHF). "
            "false: the plain reward model, facts never shown."
        },
    )
    center_coef: float = field(
        default=1e-3, metadata={"help": "Weight of |mean(r_chosen + r_rejected)| (LLaVA-RLHF: 1e-3; 0 = off)."}
    )
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Share of the pairs held out (by the run seed) to measure pair accuracy."}
    )

    def __post_init__(self):
        if self.model.name_or_path is None:
            raise ValueError("model.name_or_path: the reward model starts from a trained policy (`align demo` first)")
        if not 0.0 <= self.eval_fraction < 1.0 or self.center_coef < 0:
            raise ValueError("need 0 <= eval_fraction < 1 and center_coef >= 0")
        if self.data.packing:
            raise ValueError("data.packing: a reward model's batch stays one row per answer")
