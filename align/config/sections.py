"""Config sections shared by the recipes (run, model, data, optimiser, generation, eval). Each field carries help
text. Torch-free: `align validate` checks every YAML without importing torch, transformers, peft or datasets."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import field
from typing import Literal

from align.config.loggers import normalize_report_to
from data_builders.endpoint import JudgeConfig
from data_builders.toyworld import WorldConfig


@dataclasses.dataclass
class RunConfig:
    """Where a training run writes, how it is seeded, logged and checkpointed: the same fields for every recipe."""

    output_dir: str = field(default="runs/run", metadata={"help": "Run directory (checkpoints, final/, logs)."})
    seed: int = field(default=0, metadata={"help": "Seed of model init, LoRA init, data order and sampling."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    report_to: str = field(
        default="none",
        metadata={
            "help": "Trainer loggers: none, tensorboard, wandb, or a comma list (tensorboard,wandb); logs go to "
            "output_dir/runs (tensorboard) or the wandb project in $WANDB_PROJECT. Needs the logger's package: "
            "pip install 'align-vlm[tensorboard]' / 'align-vlm[wandb]' (checked before a run, not by validate)."
        },
    )
    eval_at_end: bool = field(default=True, metadata={"help": "Evaluate the final model."})
    existing: Literal["auto", "resume", "overwrite"] = field(
        default="auto",
        metadata={
            "help": "What to do with a run already in output_dir (align/core/run_dir.py): auto = resume it (or "
            "report it finished) when its config matches, refuse a changed config; resume = continue from its last "
            "checkpoint under this config (--resume); overwrite = delete it and train afresh (--overwrite)."
        },
    )

    def __post_init__(self):
        if self.save_steps < 1 or self.logging_steps < 1:
            raise ValueError("save_steps and logging_steps must be >= 1")
        self.report_to = normalize_report_to(self.report_to)  # an unknown logger fails here, naming the choices


@dataclasses.dataclass
class TinyModelSpec:
    """A tiny LLaVA built in-process (no download): CLIP tower + projector + Llama LM with GQA."""

    image_size: int = field(default=48, metadata={"help": "Input image side in pixels (ToyWorld renders 48)."})
    patch_size: int = field(default=16, metadata={"help": "Vision patch side; image tokens = (image/patch)^2."})
    vision_hidden: int = field(default=128, metadata={"help": "CLIP hidden size."})
    vision_layers: int = field(default=2, metadata={"help": "CLIP encoder layers."})
    vision_heads: int = field(default=4, metadata={"help": "CLIP attention heads."})
    vision_mlp: int = field(default=256, metadata={"help": "CLIP MLP size."})
    text_hidden: int = field(default=128, metadata={"help": "Llama hidden size."})
    text_layers: int = field(default=2, metadata={"help": "Llama decoder layers."})
    text_heads: int = field(default=4, metadata={"help": "Llama query heads."})
    text_kv_heads: int = field(default=2, metadata={"help": "Llama key/value heads (GQA when < text_heads)."})
    text_mlp: int = field(default=384, metadata={"help": "Llama MLP size."})
    max_positions: int = field(default=256, metadata={"help": "Llama max position embeddings."})

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.text_hidden % self.text_heads or self.text_heads % self.text_kv_heads:
            raise ValueError("text_hidden must divide by text_heads, and text_heads by text_kv_heads")
        if self.vision_hidden % self.vision_heads:
            raise ValueError("vision_hidden must divide by vision_heads")


SUB_MODEL_KEYS = {"text": "text_config", "vision": "vision_config", "text_config": "text_config",
                  "vision_config": "vision_config"}  # fmt: skip


@dataclasses.dataclass
class ModelConfig:
    name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Local directory or hub id of a LLaVA-type model or LoRA adapter; null builds the tiny spec."
        },
    )
    tiny: TinyModelSpec = field(default_factory=TinyModelSpec, metadata={"help": "Used when name_or_path is null."})
    finetune: Literal["lora", "full"] = field(default="lora", metadata={"help": "LoRA adapters or full fine-tune."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_vision: bool = field(default=False, metadata={"help": "Also put LoRA on the vision tower."})
    lora_projector: bool = field(default=False, metadata={"help": "Also put LoRA on the multimodal projector."})
    attn_implementation: str | dict[str, str] = field(
        default="sdpa",
        metadata={
            "help": "Attention backend: sdpa, eager or triton_fused (this project's Triton kernel), for the whole "
            "model, or per sub-model as {text: triton_fused, vision: sdpa}."
        },
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={"help": "Weights dtype."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with a hub model (unsafe)."})

    def __post_init__(self):
        if self.finetune == "lora" and self.lora_r < 1:
            raise ValueError("lora_r must be >= 1")
        if isinstance(self.attn_implementation, dict):
            unknown = set(self.attn_implementation) - set(SUB_MODEL_KEYS)
            if unknown:
                raise ValueError(
                    f"attn_implementation: unknown sub-model {sorted(unknown)}; use keys {', '.join(SUB_MODEL_KEYS)}"
                )

    def text_attention(self) -> str:
        """The language model's attention implementation."""
        impl = self.attn_implementation
        return impl.get("text", impl.get("text_config", "sdpa")) if isinstance(impl, dict) else impl

    def hf_attn_implementation(self) -> str | dict[str, str]:
        """The value transformers takes: per-sub-model keys become its sub-config names (text -> text_config)."""
        impl = self.attn_implementation
        return {SUB_MODEL_KEYS[k]: v for k, v in impl.items()} if isinstance(impl, dict) else impl


@dataclasses.dataclass
class DataConfig:
    world: WorldConfig = field(default_factory=WorldConfig, metadata={"help": "The ToyWorld to train/evaluate on."})
    cache_dir: str | None = field(default=None, metadata={"help": "Dataset cache; default $ALIGN_CACHE or ~/.cache."})
    max_length: int = field(
        default=160,
        metadata={
            "help": "Max tokens per row. Responses are cut from the end; rows whose prompt+image exceed it "
            "are skipped and counted (image tokens are never cut)."
        },
    )

    packing: bool = field(
        default=False,
        metadata={
            "help": "SFT-style training (sft, the OPA step): pack each batch's rows into as few rows of max_length "
            "as fit (first-fit decreasing), each row attending only to itself (position ids restart per row), "
            "instead of padding every row to the longest. Same loss per batch; the demo's SFT took 119 s, not 137. "
            "Needs attn_implementation sdpa, eager or flash_attention_2."
        },
    )

    def __post_init__(self):
        if self.max_length < 2:
            raise ValueError("max_length must be >= 2")


@dataclasses.dataclass
class OptimConfig:
    lr: float = field(default=6e-4, metadata={"help": "Peak learning rate."})
    projector_lr: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate of the multimodal projector (LLaVA's mm_projector_lr); null = lr."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = field(
        default="cosine", metadata={"help": "LR schedule."}
    )
    max_steps: int = field(default=1500, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=32, metadata={"help": "Rows per device per step."})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})

    def __post_init__(self):
        if self.projector_lr is not None and self.projector_lr <= 0:
            raise ValueError(f"projector_lr must be > 0 or null, got {self.projector_lr}")
        if self.lr <= 0 or self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("lr must be > 0 and max_steps, batch_size, grad_accum >= 1")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")


@dataclasses.dataclass
class GenerationConfig:
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens to generate for a caption."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per generate call."})

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when do_sample is true")


@dataclasses.dataclass
class BenchmarkSource:
    """A public benchmark to generate on from a checkpoint: its annotation files and its images."""

    name: str = field(metadata={"help": "Benchmark name: pope, amber, chair, objhal, objhal_llm, mmhal, cceval."})
    data: str = field(metadata={"help": "Annotation files, as `align eval score --data` takes them."})
    images: str = field(metadata={"help": "Directory holding the image files the benchmark's items name."})
    split: str | None = field(default=None, metadata={"help": "Benchmark split (null = the benchmark's default)."})
    limit: int | None = field(
        default=None, metadata={"help": "First N items of each split (null = eval.limit, then all)."}
    )
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Override the benchmark's protocol length (null = the protocol's)."}
    )

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"{self.name}: limit must be >= 1 or null")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"{self.name}: max_new_tokens must be >= 1 or null")


@dataclasses.dataclass
class EvalConfig:
    limit: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate on the first N ToyWorld test images, and the first N items per split of each source "
            "without its own limit (null = all)."
        },
    )
    pope: bool = field(default=True, metadata={"help": "Also run the ToyWorld POPE questions."})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": "Caption decoding."})
    benchmarks: list[str] = field(
        default_factory=lambda: ["toyworld"],
        metadata={
            "help": "Generation evals to run: toyworld (CHAIR on captions + POPE on the ToyWorld test split), and "
            "any public benchmark that has an entry in `sources`."
        },
    )
    sources: list[BenchmarkSource] = field(
        default_factory=list,
        metadata={"help": "Where the public benchmarks' annotation files and images are (one entry per name)."},
    )
    judge: JudgeConfig | None = field(
        default=None,
        metadata={"help": "LLM judge for judge-scored benchmarks (mmhal, objhal_llm, cceval); key from the env."},
    )
    at_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "Also evaluate every checkpoint as training saves it: metrics go to the trainer's log, "
            "<output_dir>/eval/step-N.json and eval/training_metrics.png (align/eval/callback.py)."
        },
    )
    checkpoint_limit: int | None = field(
        default=None,
        metadata={"help": "`limit` for the checkpoint evals (null = limit); a small subset keeps training fast."},
    )
    switch: float | None = field(
        default=None,
        metadata={
            "help": "HallE switch value ε in [-1, 1] for a model trained with recipe halle_switch (-1: grounded "
            "objects only, +1: imagine freely; control tokens follow its sign); null = 0, the base behaviour."
        },
    )

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")
        if self.switch is not None and not -1.0 <= self.switch <= 1.0:
            raise ValueError(f"switch must be in [-1, 1] or null, got {self.switch}")
        if self.checkpoint_limit is not None and self.checkpoint_limit < 1:
            raise ValueError("checkpoint_limit must be >= 1 or null")
        check_benchmarks(self.benchmarks, self.sources, self.judge)


# What a config may name, kept here so checking it needs no scorer import; tests/align/test_layers.py pins these to
# align.eval (EVAL_SUITES in runner.py, BENCHMARKS and each one's needs_judge in benchmarks/).
EVAL_SUITES = ("toyworld",)
PUBLIC_BENCHMARKS = {  # name -> scored by an LLM judge
    "pope": False,
    "amber": False,
    "chair": False,
    "objhal": False,
    "objhal_llm": True,
    "mmhal": True,
    "cceval": True,
}


def check_benchmark_name(name: str, where: str = "eval.sources") -> None:
    if name not in PUBLIC_BENCHMARKS:
        close = difflib.get_close_matches(name, list(PUBLIC_BENCHMARKS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{where}: unknown benchmark {name!r}; known: {', '.join(PUBLIC_BENCHMARKS)}{hint}")


def check_benchmarks(names: list[str], sources: list | None = None, judge=None) -> None:
    """Fail when the config is built, not after hours of training: every name is a suite or a public benchmark
    with a source, sources are not doubled, and judge-scored benchmarks have a judge."""
    if not names:
        raise ValueError("eval.benchmarks: name at least one benchmark")
    sourced = [s.name for s in sources or []]
    doubled = sorted({n for n in sourced if sourced.count(n) > 1})
    if doubled:
        raise ValueError(f"eval.sources: one entry per benchmark, {doubled} appear more than once")
    for name in sourced:
        check_benchmark_name(name)
    for name in names:
        if name in EVAL_SUITES or name in sourced:
            continue
        if name not in PUBLIC_BENCHMARKS:
            raise ValueError(
                f"eval.benchmarks: unknown {name!r}; suites: {', '.join(EVAL_SUITES)}, public: "
                f"{', '.join(PUBLIC_BENCHMARKS)} (with an eval.sources entry)"
            )
        raise ValueError(f"eval.benchmarks: {name!r} needs an eval.sources entry (name, data, images)")
    judged = [n for n in names if n in sourced and PUBLIC_BENCHMARKS[n]]
    if judged and judge is None:
        raise ValueError(f"eval.benchmarks: {judged} are graded by an LLM judge; set eval.judge (model, base_url)")


PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def check_packing(model: ModelConfig, data: DataConfig) -> None:
    """data.packing needs an attention that reads packed rows from position ids (transformers' packed-sequence
    masks, or flash attention's variable-length path); the fused Triton kernel takes padding masks only."""
    if data.packing and model.text_attention() not in PACKING_ATTENTION:
        raise ValueError(
            f"data.packing: the language model's attention {model.text_attention()!r} cannot keep packed rows "
            f"apart; use model.attn_implementation one of {', '.join(PACKING_ATTENTION)}, or data.packing: false"
        )
