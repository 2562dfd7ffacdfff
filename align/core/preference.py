"""DPO and RLHF-V's DDPO on PreferenceRecords: pair encoding (skips counted by reason), the trainer, and its set-up.
Shared by the dpo recipe and the rounds of iterative RLAIF-V (align/recipes/), which add evaluation around it.

Pairs that cannot train are counted by reason and left out, never fatal: an empty side, chosen == rejected,
spans that do not fit their text (ddpo only), a prompt that with its image tokens does not fit max_length.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable

from align.config.recipes import DPORecipeConfig
from align.core import ref_cache
from align.core.data import (
    DataError,
    PreferenceCollator,
    RowsDataset,
    encode_row,
    image_seq_length,
    response_offsets,
    response_weights,
    to_pil,
)
from align.core.logprobs import response_logps
from align.core.losses.dpo import ddpo_loss, weighted_logps
from align.core.models import build_model
from align.core.trainer import AlignTrainer, begin_run, train_and_save, training_arguments
from data_builders.io import load_preference_dataset
from data_builders.progress import bar
from data_builders.spans import validate_spans

VIEWS = ("chosen", "rejected")  # the collator's row v*B + b is side v of pair b
SKIP_REASONS = ("empty_response", "chosen_equals_rejected", "bad_spans", "prompt_too_long")


# ---------------------------------------------------------------- preference pairs → token ids and weights


def skip_reason(record: dict, weighted: bool) -> str | None:
    """Why a pair cannot train (None = it can). Spans are checked only when they are used (`weighted`)."""
    chosen, rejected = (record["chosen"] or "").strip(), (record["rejected"] or "").strip()
    if not chosen or not rejected:
        return "empty_response"
    if chosen == rejected:
        return "chosen_equals_rejected"  # every logit would be 0: log 2 with no gradient
    for side in VIEWS if weighted else ():
        try:
            validate_spans(record[side], record[f"{side}_spans"] or [])
        except ValueError:
            return "bad_spans"
    return None


def side_spans(record: dict, side: str, cfg: DPORecipeConfig) -> list:
    """The weighted character spans one side trains with: none for plain DPO, the stored ones (or re-weighted to
    cfg.gamma) for DDPO."""
    if cfg.loss == "dpo":
        return []
    spans = record[f"{side}_spans"] or []
    return spans if cfg.gamma is None else [[start, end, cfg.gamma] for start, end, _ in spans]


def encode_pair(processor, record: dict, cfg: DPORecipeConfig, n_image_tokens: int, prompt_cache: dict) -> dict | None:
    """{id, image, truncated, chosen/rejected: {input_ids, labels, weights}}, the layout PreferenceCollator stacks;
    None if the prompt with its image tokens does not fit max_length."""
    image = to_pil(record["image"], record["id"])
    out = {"id": record["id"], "image": image, "truncated": False}
    for side in VIEWS:
        row = {"id": record["id"], "image": image, "prompt": record["prompt"], "response": record[side]}
        enc = encode_row(processor, row, cfg.data.max_length, n_image_tokens, prompt_cache)
        if enc is None:
            return None
        n = sum(label != -100 for label in enc["labels"])
        spans = side_spans(record, side, cfg)
        weights = response_weights(response_offsets(processor.tokenizer, record[side]), spans, n)
        out[side] = {"input_ids": enc["input_ids"], "labels": enc["labels"], "weights": weights}
        out["truncated"] |= enc["truncated"]
    return out


def encode_pairs(dataset, processor, cfg: DPORecipeConfig, n_image_tokens: int) -> tuple[list[dict], dict]:
    """Encode every pair that can train; the rest are counted by reason (SKIP_REASONS), never raised."""
    records, skipped, truncated, cache = [], Counter(), 0, {}
    for record in bar(dataset, desc="encode pairs"):
        reason = skip_reason(record, weighted=cfg.loss == "ddpo")
        encoded = None if reason else encode_pair(processor, record, cfg, n_image_tokens, cache)
        if encoded is None:
            skipped[reason or "prompt_too_long"] += 1
            continue
        truncated += encoded.pop("truncated")
        records.append(encoded)
    counts = {
        "rows": len(dataset),
        "kept": len(records),
        "truncated": truncated,
        "skipped": {reason: skipped[reason] for reason in SKIP_REASONS},
    }
    return records, counts


# ---------------------------------------------------------------- the trainer


class DDPOTrainer(AlignTrainer):
    """Loss `ddpo_loss` (plain sequence DPO when loss: dpo) against the reference (ReferenceMixin); loss: sft is
    the SFT-on-chosen baseline (the rejected rows are encoded too, so both read the same batches, and ignored)."""

    # compute_loss returns a batch mean, not a sum over the batch's tokens: Trainer must divide it by the
    # accumulation steps (left to decide, it assumes a LLaVA's loss is already scaled and sums the microbatches)
    loss_is_scaled_for_ga = False

    def __init__(self, *args, dpo_cfg: DPORecipeConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo_cfg = dpo_cfg

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        c = self.dpo_cfg
        pol, mask = response_logps(model, inputs, inputs["token_weights"].shape[1])
        n = len(pol) // len(VIEWS)
        ch, rj = slice(0, n), slice(n, 2 * n)  # chosen rows, rejected rows
        if c.loss == "sft":  # the baseline: what the chosen answers teach without a preference
            loss = -weighted_logps(pol[ch], mask[ch], None, average=True).mean()
            if self.logs_this_step(model):
                self.stash_step_logs({"sft": float(loss.detach())})
            return loss
        ref = inputs["ref_logps"] if "ref_logps" in inputs else self.reference_logps(model, inputs, pol.shape[1])
        weights = inputs["token_weights"] if c.loss == "ddpo" else None
        w_ch, w_rj = (None, None) if weights is None else (weights[ch], weights[rj])
        loss, r_w, r_l = ddpo_loss(
            pol[ch], ref[ch], pol[rj], ref[rj], mask[ch], mask[rj], w_ch, w_rj, c.beta, c.average, c.sft_weight
        )
        if self.logs_this_step(model):
            logs = {
                "rewards/chosen": float(r_w.mean()),
                "rewards/rejected": float(r_l.mean()),
                "rewards/accuracy": float((r_w > r_l).float().mean()),
                "rewards/margin": float((r_w - r_l).mean()),
            }
            sft = 0.0
            if c.sft_weight:  # the term ddpo_loss adds, recomputed (detached) only to log it apart
                sft = float(-weighted_logps(pol[ch].detach(), mask[ch], w_ch, average=True).mean())
                logs["sft"] = sft
            logs["pair"] = float(loss.detach()) - c.sft_weight * sft
            self.stash_step_logs(logs)
        return loss


def build_dpo_trainer(cfg: DPORecipeConfig) -> tuple[DDPOTrainer, object, dict]:
    """The start model (LoRA on it, or every weight with a frozen copy as reference), the encoded pairs and the
    trainer; returns (trainer, processor, pair counts)."""
    dataset = load_preference_dataset(cfg.dataset)
    model, processor = build_model(cfg.model, cfg.run.seed)
    records, counts = encode_pairs(dataset, processor, cfg, image_seq_length(model.config))
    kept, rows, truncated = counts["kept"], counts["rows"], counts["truncated"]
    print(f"[{cfg.loss}] {kept}/{rows} pairs encoded, {truncated} truncated; skipped {counts['skipped']}")
    if not records:
        raise DataError(f"{cfg.dataset}: no pair can train (skipped: {counts['skipped']})")
    trainer = DDPOTrainer(
        model=model,
        args=training_arguments(cfg.run, cfg.optim, cfg.model.dtype),
        train_dataset=RowsDataset(records),
        data_collator=PreferenceCollator(processor, VIEWS, seed=cfg.run.seed),
        processing_class=processor,
        ref_model=copy.deepcopy(model) if cfg.model.finetune == "full" else None,
        dpo_cfg=cfg,
    )
    if cfg.precompute_ref_logps and cfg.loss != "sft":  # the SFT baseline has no reference
        ref_cache.attach_reference_logps(
            trainer, records, processor, VIEWS, dataset, cfg.dataset, cfg.model, cfg.data.max_length, tag=cfg.loss
        )
    return trainer, processor, counts


def train_dpo(cfg: DPORecipeConfig, prepare: Callable | None = None, keep_adapter: bool = False) -> dict:
    """A whole DPO run up to its saved `final/`: `prepare(trainer, cfg)` runs before training (the recipes attach the
    checkpoint evals with it); a LoRA's adapter is also kept in `adapter/` beside `final/` with `keep_adapter`.
    Returns the run summary; evaluating the result is the caller's. A run already finished with this config returns
    its stored summary with `"finished": True` and trains nothing."""
    run = cfg.run
    t0 = time.time()
    finished = begin_run(cfg, tag=cfg.loss)
    if finished is not None:
        return {**finished, "finished": True}
    trainer, processor, counts = build_dpo_trainer(cfg)
    if prepare is not None:
        prepare(trainer, cfg)
    result, final = train_and_save(trainer, run, processor, cfg, tag=cfg.loss, keep_adapter=keep_adapter)
    return {
        "final": str(final),
        "start": cfg.model.name_or_path,
        "train": result.metrics,
        "pairs": counts,
        "log_history": trainer.state.log_history,
        "seconds": round(time.time() - t0, 1),
    }
