"""Supervised fine-tuning of a LLaVA-type policy on ToyWorld captions + QA (the base policy of every toy run).

    align train configs/toy/sft_base.yaml                      # CPU, ~3 minutes
    align train configs/toy/sft_base.yaml optim.max_steps=200  # dotted overrides

Why not TRL's SFTTrainer: its vision collator truncates the joined sequence, which can cut image tokens and
train on rows whose image no longer matches the text; here rows are encoded once up front (align/data.py) so
over-long responses are cut from the end, and rows whose prompt+image cannot fit are skipped and counted.
The loop itself is `transformers.Trainer` (checkpoints, resume, logging, accelerate launch).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import field
from pathlib import Path
from typing import Literal

import torch
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from align.config import save_config
from align.data import RowsDataset, VisionSFTCollator, encode_dataset, image_seq_length
from align.models import build_model, save_policy, vision_tower
from align.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig
from align.trainer_utils import ResumableTrainer, attach_checkpoint_eval
from align.vision_pretrain import pretrain_vision
from data_builders.toyworld_data import build_toyworld, sft_rows


@dataclasses.dataclass
class SFTConfig:
    recipe: Literal["sft"] = field(default="sft", metadata={"help": "Selects this recipe."})
    output_dir: str = field(default="runs/sft_base", metadata={"help": "Run directory (checkpoints, final/, logs)."})
    seed: int = field(default=0, metadata={"help": "Seed for model init, data order and sampling."})
    model: ModelConfig = field(default_factory=lambda: ModelConfig(finetune="full"), metadata={"help": "Policy."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training data."})
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(projector_lr=6e-5), metadata={"help": "Optimiser and schedule."}
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Hallucination eval of the final model."})
    logging_steps: int = field(default=50, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    report_to: str = field(default="none", metadata={"help": "Trainer loggers: none, tensorboard, wandb, ..."})
    vision_pretrain_steps: int = field(
        default=500,
        metadata={
            "help": "Tiny model only: first pretrain the vision tower and projector on per-patch ToyWorld labels "
            "(0 = off; see align/vision_pretrain.py)."
        },
    )
    freeze_vision: bool = field(
        default=True, metadata={"help": "Keep the vision tower frozen during SFT (LLaVA-1.5)."}
    )
    eval_at_end: bool = field(default=True, metadata={"help": "Evaluate the final model on the ToyWorld test split."})
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint in output_dir if any."})

    def __post_init__(self):
        if self.model.name_or_path is None and self.model.finetune == "lora":
            raise ValueError("model: the tiny model is built from scratch, so it needs finetune: full, not lora")
        if self.save_steps < 1 or self.logging_steps < 1:
            raise ValueError("save_steps and logging_steps must be >= 1")


def training_arguments(cfg: SFTConfig) -> TrainingArguments:
    o = cfg.optim
    return TrainingArguments(
        output_dir=cfg.output_dir,
        max_steps=o.max_steps,
        per_device_train_batch_size=o.batch_size,
        gradient_accumulation_steps=o.grad_accum,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        warmup_steps=o.warmup_steps,
        lr_scheduler_type=o.scheduler,
        max_grad_norm=o.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=cfg.report_to,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=cfg.model.dtype == "bfloat16",
    )


def main(cfg: SFTConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "align_config.yaml")
    set_seed(cfg.seed)
    t0 = time.time()

    data = build_toyworld(cfg.data.world, cfg.data.cache_dir)
    model, processor = build_model(cfg.model, seed=cfg.seed)
    last = get_last_checkpoint(str(out)) if cfg.resume else None
    vision = None
    if cfg.model.name_or_path is None and cfg.vision_pretrain_steps > 0 and last is None:
        vision = pretrain_vision(model, processor, data["train"], cfg.vision_pretrain_steps, seed=cfg.seed)
        print(
            f"[sft] vision tower + projector pretrained: patch class acc {vision['class_acc']:.3f}, colour acc "
            f"{vision['color_acc']:.3f}, position acc {vision['position_acc']:.3f}"
        )
    if cfg.freeze_vision:
        vision_tower(model).requires_grad_(False)
    rows = sft_rows(data["train"], seed=cfg.seed)
    encoded, stats = encode_dataset(rows, processor, cfg.data.max_length, image_seq_length(model.config))
    print(f"[sft] {stats.summary()}")

    trainer = ResumableTrainer(
        model=model,
        args=training_arguments(cfg),
        train_dataset=RowsDataset(encoded),
        data_collator=VisionSFTCollator(processor),
        processing_class=processor,
        projector_lr=cfg.optim.projector_lr,
    )
    attach_checkpoint_eval(trainer, cfg)
    if last:
        print(f"[sft] resuming from {last}")
    result = trainer.train(resume_from_checkpoint=last)
    final = save_policy(trainer.model, processor, out / "final")
    save_config(cfg, final / "align_config.yaml")

    summary = {
        "final": str(final),
        "train": result.metrics,
        "vision_pretrain": vision,
        "encode": {
            "rows": stats.rows,
            "kept": stats.kept,
            "truncated": stats.truncated,
            "skipped_too_long": stats.skipped_too_long,
        },
        "loss_history": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "seconds": round(time.time() - t0, 1),
    }
    if cfg.eval_at_end:
        from align.eval.runner import evaluate_checkpoint

        summary["eval"] = evaluate_checkpoint(final, cfg.eval, model=trainer.model, processor=processor)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
