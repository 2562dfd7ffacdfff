"""Supervised fine-tuning of a LLaVA-type policy on ToyWorld captions + QA (the base policy of every toy run), or
on the user's data: LLaVA-format conversations or an HF dataset of {image, prompt, response} (`data.source`).

    align train configs/toy/sft_base.yaml                      # CPU, ~3 minutes
    align train configs/toy/sft_base.yaml optim.max_steps=200  # dotted overrides
    align train configs/toy/sft_llava_json.yaml data.path=my/llava.json

On user data (data_builders/sft_import.py: bad items skipped and counted in train_summary.json's `data`), the
tiny model's vision pretraining is skipped (it needs ToyWorld's patch labels), and so is the ToyWorld suite of the
final eval (public benchmarks in eval.benchmarks still run; `align eval <run dir>` scores ToyWorld on request).

Why not TRL's SFTTrainer: its vision collator truncates the joined sequence, which can cut image tokens and
train on rows whose image no longer matches the text; here rows are encoded once up front (align/core/data.py) so
over-long responses are cut from the end, and rows whose prompt+image cannot fit are skipped and counted.
The loop itself is `transformers.Trainer` (checkpoints, resume, logging, accelerate launch).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from align.config.recipes import SFTConfig
from align.config.sections import EvalConfig
from align.core.data import RowsDataset, VisionSFTCollator, encode_dataset, image_seq_length
from align.core.logprobs import IGNORE, response_logps
from align.core.models import build_model, vision_tower
from align.core.run_dir import last_checkpoint
from align.core.trainer import AlignTrainer, begin_run, train_and_save, training_arguments, write_summary
from align.core.vision_pretrain import pretrain_vision
from align.eval.callback import attach_checkpoint_eval
from align.eval.runner import evaluate_checkpoint
from data_builders.sft_import import import_sft, skipped_line
from data_builders.toyworld_data import build_toyworld, sft_rows


def training_rows(cfg: SFTConfig):
    """(rows, ToyWorld's train split or None, the import report or None): ToyWorld's SFT rows, or the user's data
    (data.source llava_json / hf, read by data_builders/sft_import.py) with one line of what was kept."""
    if cfg.data.source == "toyworld":
        train = build_toyworld(cfg.data.world, cfg.data.cache_dir)["train"]
        return sft_rows(train, seed=cfg.run.seed, yes_no=cfg.data.world.yes_no_questions), train, None
    d = cfg.data
    fields = (d.prompt_field, d.response_field, d.image_field)
    rows, report = import_sft(d.path, d.source, d.image_root, fields, d.limit)
    print(
        f"[sft] data: {d.source} {d.path}: {report['items_kept']}/{report['items_read']} items kept -> "
        f"{report['rows']} rows, {skipped_line(report)}; details in train_summary.json (data)"
    )
    return rows, None, report


def row_token_counts(
    labels: torch.Tensor, position_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n, the scored tokens (label != -100, after the one-token shift) of each training row, and for a packed batch
    the row of each scored token in row-major order (None when batch row i is row i). A packed row holds several
    rows: each starts where its position ids restart at 0."""
    mask = labels[:, 1:] != IGNORE
    if position_ids is None:
        return mask.sum(1).clamp(min=1).float(), None
    stride = mask.shape[1] + 2  # a packed row's segment ids run from 0 to mask.shape[1] + 1
    segment = (position_ids == 0).long().cumsum(1)[:, 1:]  # a label at t + 1 belongs to the row of token t + 1
    keys = (segment + torch.arange(len(mask), device=mask.device).unsqueeze(1) * stride)[mask]
    _, index = torch.unique(keys, return_inverse=True)
    n = torch.zeros(int(index.max()) + 1 if len(index) else 0, device=mask.device)
    return n.index_add_(0, index, torch.ones(len(index), device=mask.device)), index


class RowWeightedSFTTrainer(AlignTrainer):
    """`row_weight_power: p`: Σ_rows n^-p Σ_t NLL / Σ_rows n^(1-p) over the batch's rows of n response tokens each
    (p = 0 is the token mean, p = 1 the mean of the rows' means); rows packed together are weighed apart.

    Under gradient accumulation the denominator is that of the whole accumulated batch, as Trainer does for the
    token mean with `num_items_in_batch`: batch b × accumulation k trains as batch k·b."""

    loss_is_scaled_for_ga = True  # each microbatch's loss is divided by the accumulated batch's Σ n^(1-p)

    def __init__(self, *args, row_weight_power: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.row_weight_power = row_weight_power

    def _get_num_items_in_batch(self, batch_samples: list, device) -> torch.Tensor:
        total = 0
        for batch in batch_samples:
            n, _ = row_token_counts(batch["labels"], batch.get("position_ids"))
            total = total + (n.pow(-self.row_weight_power) * n).sum()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total.to(device)).sum()
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, mask = response_logps(model, inputs)
        n, index = row_token_counts(inputs["labels"], inputs.get("position_ids"))
        nll = -(logps * mask).sum(1) if index is None else torch.zeros_like(n).index_add_(0, index, -logps[mask])
        weights = n.pow(-self.row_weight_power)
        total = (weights * n).sum() if num_items_in_batch is None else num_items_in_batch
        loss = (weights * nll).sum() / total
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.args.world_size  # the denominator covers every process; DDP averages gradients
        return loss


def run_eval(cfg: SFTConfig) -> EvalConfig | None:
    """What the final model (and, with eval.at_checkpoints, each checkpoint) is scored on: cfg.eval, less the
    ToyWorld suite when training on user data (its world has nothing to do with that data; `align eval <run dir>`
    still scores it on request); None when nothing is left."""
    if cfg.data.source == "toyworld" or "toyworld" not in cfg.eval.benchmarks:
        return cfg.eval
    others = [name for name in cfg.eval.benchmarks if name != "toyworld"]
    if cfg.run.eval_at_end or cfg.eval.at_checkpoints:
        then = f"scoring {', '.join(others)}" if others else "add public ones with eval.benchmarks + eval.sources"
        print(
            f"[sft] ToyWorld eval skipped: the training data is {cfg.data.source}, not ToyWorld "
            f"(`align eval {cfg.run.output_dir}` still scores it); {then}"
        )
    return dataclasses.replace(cfg.eval, benchmarks=others) if others else None


def main(cfg: SFTConfig) -> dict:
    run = cfg.run
    t0 = time.time()
    finished = begin_run(cfg, tag="sft")
    if finished is not None:  # trained to its end with this config: its summary, nothing redone
        return finished

    rows, toy_train, imported = training_rows(cfg)
    model, processor = build_model(cfg.model, seed=run.seed)
    resuming = last_checkpoint(run.output_dir) is not None
    vision = None
    pretrain = cfg.model.name_or_path is None and cfg.vision_pretrain_steps > 0 and not resuming
    if pretrain and toy_train is None:
        print(f"[sft] vision pretraining skipped: {cfg.data.source} data has no ToyWorld per-patch labels")
    elif pretrain:
        vision = pretrain_vision(
            model, processor, toy_train, cfg.vision_pretrain_steps, seed=run.seed, align_words=cfg.vision_align_words
        )
        print(
            f"[sft] vision tower + projector pretrained: patch class acc {vision['class_acc']:.3f}, colour acc "
            f"{vision['color_acc']:.3f}, position acc {vision['position_acc']:.3f}"
        )
    if cfg.freeze_vision:
        vision_tower(model).requires_grad_(False)
    encoded, stats = encode_dataset(rows, processor, cfg.data.max_length, image_seq_length(model.config))
    print(f"[sft] {stats.summary()}")

    weighted = {"row_weight_power": cfg.row_weight_power} if cfg.row_weight_power else {}
    trainer = (RowWeightedSFTTrainer if weighted else AlignTrainer)(
        model=model,
        args=training_arguments(run, cfg.optim, cfg.model.dtype),
        train_dataset=RowsDataset(encoded),
        data_collator=VisionSFTCollator(processor, cfg.data.packing, cfg.data.max_length),
        processing_class=processor,
        projector_lr=cfg.optim.projector_lr,
        **weighted,
    )
    eval_cfg = run_eval(cfg)
    if eval_cfg is not None:
        attach_checkpoint_eval(trainer, dataclasses.replace(cfg, eval=eval_cfg))
    result, final = train_and_save(trainer, run, processor, cfg, tag="sft", merge=False)  # LoRA: the adapter
    summary = {
        "final": str(final),
        "train": result.metrics,
        "vision_pretrain": vision,
        "data": imported or {"source": "toyworld"},
        "encode": {
            "rows": stats.rows,
            "kept": stats.kept,
            "truncated": stats.truncated,
            "skipped_too_long": stats.skipped_too_long,
        },
        "loss_history": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "seconds": round(time.time() - t0, 1),
    }
    if run.eval_at_end and eval_cfg is not None:
        summary["eval"] = evaluate_checkpoint(final, eval_cfg, model=trainer.model, processor=processor)
    return write_summary(run, summary)
