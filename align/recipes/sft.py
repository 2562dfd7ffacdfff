"""Supervised fine-tuning of a LLaVA-type policy on ToyWorld captions + QA (the base policy of every toy run).

    align train configs/toy/sft_base.yaml                      # CPU, ~3 minutes
    align train configs/toy/sft_base.yaml optim.max_steps=200  # dotted overrides

Why not TRL's SFTTrainer: its vision collator truncates the joined sequence, which can cut image tokens and
train on rows whose image no longer matches the text; here rows are encoded once up front (align/core/data.py) so
over-long responses are cut from the end, and rows whose prompt+image cannot fit are skipped and counted.
The loop itself is `transformers.Trainer` (checkpoints, resume, logging, accelerate launch).
"""

from __future__ import annotations

import time

from transformers.trainer_utils import get_last_checkpoint

from align.config.recipes import SFTConfig
from align.core.data import RowsDataset, VisionSFTCollator, encode_dataset, image_seq_length
from align.core.models import build_model, vision_tower
from align.core.trainer import AlignTrainer, begin_run, train_and_save, training_arguments, write_summary
from align.core.vision_pretrain import pretrain_vision
from align.eval.callback import attach_checkpoint_eval
from align.eval.runner import evaluate_checkpoint
from data_builders.toyworld_data import build_toyworld, sft_rows


def main(cfg: SFTConfig) -> dict:
    run = cfg.run
    t0 = time.time()
    out = begin_run(cfg)

    data = build_toyworld(cfg.data.world, cfg.data.cache_dir)
    model, processor = build_model(cfg.model, seed=run.seed)
    resuming = run.resume and get_last_checkpoint(str(out)) is not None
    vision = None
    if cfg.model.name_or_path is None and cfg.vision_pretrain_steps > 0 and not resuming:
        vision = pretrain_vision(model, processor, data["train"], cfg.vision_pretrain_steps, seed=run.seed)
        print(
            f"[sft] vision tower + projector pretrained: patch class acc {vision['class_acc']:.3f}, colour acc "
            f"{vision['color_acc']:.3f}, position acc {vision['position_acc']:.3f}"
        )
    if cfg.freeze_vision:
        vision_tower(model).requires_grad_(False)
    rows = sft_rows(data["train"], seed=run.seed)
    encoded, stats = encode_dataset(rows, processor, cfg.data.max_length, image_seq_length(model.config))
    print(f"[sft] {stats.summary()}")

    trainer = AlignTrainer(
        model=model,
        args=training_arguments(run, cfg.optim, cfg.model.dtype),
        train_dataset=RowsDataset(encoded),
        data_collator=VisionSFTCollator(processor),
        processing_class=processor,
        projector_lr=cfg.optim.projector_lr,
    )
    attach_checkpoint_eval(trainer, cfg)
    result, final = train_and_save(trainer, run, processor, cfg, tag="sft", merge=False)  # LoRA: the adapter
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
    if run.eval_at_end:
        summary["eval"] = evaluate_checkpoint(final, cfg.eval, model=trainer.model, processor=processor)
    return write_summary(run, summary)
