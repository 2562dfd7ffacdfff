"""HallE-Switch's config (`recipe: halle_switch`, align/recipes/halle_switch.py): typed dataclasses, torch-free."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal

from align.config.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig

VARIANTS = ("controller", "control_tokens", "indication")


@dataclasses.dataclass
class SwitchDataConfig(DataConfig):
    """Where the ε-labelled captions come from (data_builders/halle.py); world, cache_dir and max_length as every
    recipe's data section (the world is also the ToyWorld eval's)."""

    source: Literal["toyworld", "hall_factor", "annotations"] = field(
        default="toyworld",
        metadata={
            "help": "toyworld: each training image's caption restricted to its objects (ε = -1) and with an object "
            "it does not show (ε = +1), from the ground truth; hall_factor: HallE's detail_switch_23k.json (LLaVA "
            "format + hall_factor); annotations: LLaVA-format captions + an object list per image (`objects`)."
        },
    )
    path: str | None = field(default=None, metadata={"help": "hall_factor / annotations: the LLaVA-format JSON."})
    objects: str | None = field(
        default=None,
        metadata={"help": "annotations: COCO instances JSON, or {image file: [object names]} (a detector's output)."},
    )
    image_root: str | None = field(
        default=None, metadata={"help": "Folder relative image paths are resolved against (null = the JSON's)."}
    )
    limit: int | None = field(default=None, metadata={"help": "Read the first N items only (null = all)."})

    def __post_init__(self):
        super().__post_init__()
        if self.source == "toyworld" and (self.path or self.objects):
            raise ValueError("path / objects: read only with source hall_factor or annotations")
        if self.source != "toyworld" and not self.path:
            raise ValueError(f"path: source {self.source} needs data.path (the LLaVA-format JSON)")
        if self.source == "annotations" and not self.objects:
            raise ValueError("objects: source annotations needs data.objects (COCO instances or a detector's file)")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: must be >= 1 or null")
        if self.packing:
            raise ValueError("packing: each row keeps its own ε, so rows are not packed together")


@dataclasses.dataclass
class HalleSwitchConfig:
    recipe: Literal["halle_switch"] = field(default="halle_switch", metadata={"help": "Selects this recipe."})
    run: RunConfig = field(
        default_factory=lambda: RunConfig(output_dir="runs/halle_switch", logging_steps=20, save_steps=100),
        metadata={"help": "Run directory, seed, logging, checkpoints, resume."},
    )
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(name_or_path="runs/demo/sft_base/final"),
        metadata={"help": "The trained policy the switch is put on; lora_* settings apply when `lora` is true."},
    )
    data: SwitchDataConfig = field(default_factory=SwitchDataConfig, metadata={"help": "The ε-labelled captions."})
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=2e-5, warmup_steps=6, max_steps=188, batch_size=32),
        metadata={"help": "Optimiser and schedule (HallE-Control: lr 2e-5, one epoch, cosine, warm-up 3%)."},
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Hallucination eval of the final model."})
    variant: Literal["controller", "control_tokens", "indication"] = field(
        default="controller",
        metadata={
            "help": "controller: h + ε·W·h before the output head, W trained; control_tokens: <grounded> / <imagine> "
            "before the prompt, their embeddings trained; indication: captions with parametric objects written "
            "[object], no switch."
        },
    )
    lora: bool = field(
        default=False,
        metadata={
            "help": "Also train a LoRA on the policy (model.lora_*). HallE trains W alone; indication needs it."
        },
    )
    grounded_token: str = field(default="<grounded>", metadata={"help": "control_tokens: the ε < 0 token."})
    imagine_token: str = field(default="<imagine>", metadata={"help": "control_tokens: the ε > 0 token."})
    sweep: list[float] = field(
        default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0],
        metadata={
            "help": "Switch values the final model is evaluated at (run.eval_at_end): switch_sweep.{json,md,png}. "
            "Control tokens follow the sign; indication is evaluated once."
        },
    )

    def __post_init__(self):
        if self.model.name_or_path is None:
            raise ValueError(
                "model.name_or_path: the switch goes on a trained policy (`align demo --base-only` first)"
            )
        if self.variant == "indication" and not self.lora:
            raise ValueError("lora: the indication variant trains the policy itself; set lora: true")
        if any(not -1.0 <= e <= 1.0 for e in self.sweep):
            raise ValueError(f"sweep: switch values must be in [-1, 1], got {self.sweep}")
        if self.grounded_token == self.imagine_token or not self.grounded_token or not self.imagine_token:
            raise ValueError("grounded_token / imagine_token: two different, non-empty tokens")
