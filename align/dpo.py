"""DPO and RLHF-V's dense DPO (DDPO) on a PreferenceRecord dataset: LoRA on a trained base policy.

    align build-data configs/toy/preference_data.yaml   # OPA-DPO data → RLHF-V pairs (revision ≻ rollout)
    align train configs/toy/dpo.yaml                    # plain sigmoid DPO
    align train configs/toy/ddpo.yaml                   # DDPO: corrected tokens weighted by γ

Per pair (image I, prompt x, chosen y_w, rejected y_l) the loss is `losses.ddpo_loss`:
    L = -log σ(β (h(y_w) - h(y_l)))  +  sft_weight · NLL(y_w),   h(y) = Σ_t w_t (log π(y_t|x,I) - log π_ref(y_t|x,I))
loss: dpo sets every w_t = 1 (plain DPO, the spans are ignored); loss: ddpo gives each token the weight of the
character span it falls in (γ on corrected text, 1 elsewhere and on EOS), as RLHF-V's Muffin code
(`compute_weighted_logp`); `average: true` divides h by Σ_t w_t, the paper's 1/N form.

The policy is a fresh LoRA on the start model and the reference is the same model with adapters disabled (as the
DPO stage of align/opa_dpo.py), so policy == reference at the first step and the first loss is exactly log 2.
Pairs that cannot train are counted by reason and left out, never fatal: an empty side, chosen == rejected,
spans that do not fit their text (ddpo only), a prompt that with its image tokens does not fit max_length.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import field
from pathlib import Path
from typing import Literal

import torch
from datasets import load_from_disk
from tqdm.auto import tqdm
from transformers import set_seed

from align import losses
from align.config import save_config
from align.data import DataError, RowsDataset, encode_row, image_seq_length, to_pil
from align.models import build_model
from align.opa_dpo import PreferenceCollator, response_logps
from align.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig
from align.sft import training_arguments
from align.trainer_utils import ResumableTrainer, train_merge_and_save
from data_builders.rlhf_v import validate_spans
from data_builders.schema import PREFERENCE_FEATURES

VIEWS = ("chosen", "rejected")  # the collator's row v*B + b is side v of pair b
SKIP_REASONS = ("empty_response", "chosen_equals_rejected", "bad_spans", "prompt_too_long")


@dataclasses.dataclass
class DPORecipeConfig:
    recipe: Literal["dpo"] = field(default="dpo", metadata={"help": "Selects this recipe."})
    output_dir: str = field(default="runs/dpo", metadata={"help": "Run directory."})
    seed: int = field(default=0, metadata={"help": "Seed for LoRA init and data order."})
    dataset: str = field(
        default="runs/pref_data/dataset",
        metadata={"help": "PreferenceRecord dataset (save_to_disk folder), e.g. from `align build-data`."},
    )
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(
            name_or_path="runs/demo/sft_base/final",
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            lora_vision=True,  # as the OPA-DPO recipe, so the two compare on the same trainable weights
            lora_projector=True,
        ),
        metadata={"help": "The start policy (a full model; also the reference) and the LoRA settings."},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "World used for eval; max_length."})
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=10, max_steps=100, batch_size=8),
        metadata={"help": "Optimiser and schedule (batch_size counts pairs)."},
    )
    loss: Literal["dpo", "ddpo"] = field(
        default="dpo",
        metadata={"help": "dpo: sigmoid DPO, spans ignored; ddpo: RLHF-V's token-weighted DPO from the spans."},
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
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Hallucination eval of the result."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    report_to: str = field(default="none", metadata={"help": "Trainer loggers."})
    eval_at_end: bool = field(default=True, metadata={"help": "Evaluate the final model."})
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint."})

    def __post_init__(self):
        if self.model.name_or_path is None:
            raise ValueError("model.name_or_path: DPO starts from a trained base policy (run `align demo` first)")
        if self.model.finetune != "lora":
            raise ValueError("model.finetune: this recipe trains LoRA; the reference is the adapter-free model")
        if not self.beta > 0 or (self.gamma is not None and not self.gamma > 0) or self.sft_weight < 0:
            raise ValueError("need beta > 0, gamma > 0 or null, and sft_weight >= 0")
        if self.save_steps < 1 or self.logging_steps < 1:
            raise ValueError("save_steps and logging_steps must be >= 1")


# ---------------------------------------------------------------- preference pairs → token ids and weights


def load_preference_dataset(path: str | Path):
    path = Path(path)
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{path} is not a preference dataset: build it with `align build-data <config>`")
    dataset = load_from_disk(str(path))
    missing = [name for name in PREFERENCE_FEATURES if name not in dataset.column_names]
    if missing:
        raise ValueError(f"{path}: no column(s) {', '.join(missing)}; expected PreferenceRecords")
    return dataset


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


def response_weights(tokenizer, text: str, spans: list, n: int) -> list[float]:
    """Weights of the n trained response tokens: each token its span's weight, EOS 1, cut like the response."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return (losses.span_token_weights(offsets, spans) + [1.0])[:n]


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
        weights = response_weights(processor.tokenizer, record[side], spans, n)
        out[side] = {"input_ids": enc["input_ids"], "labels": enc["labels"], "weights": weights}
        out["truncated"] |= enc["truncated"]
    return out


def encode_pairs(dataset, processor, cfg: DPORecipeConfig, n_image_tokens: int) -> tuple[list[dict], dict]:
    """Encode every pair that can train; the rest are counted by reason (SKIP_REASONS), never raised."""
    records, skipped, truncated, cache = [], Counter(), 0, {}
    for record in tqdm(dataset, desc="encode pairs", leave=False):
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


class DDPOTrainer(ResumableTrainer):
    """Loss `losses.ddpo_loss` (plain sequence DPO when loss: dpo) against the adapter-free reference."""

    def __init__(self, *args, dpo_cfg: DPORecipeConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.dpo_cfg = dpo_cfg

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        c = self.dpo_cfg
        pol, mask = response_logps(model, inputs)
        with torch.no_grad(), model.disable_adapter():
            ref, _ = response_logps(model, inputs)
        n = len(pol) // len(VIEWS)
        ch, rj = slice(0, n), slice(n, 2 * n)  # chosen rows, rejected rows
        weights = inputs["token_weights"] if c.loss == "ddpo" else None
        w_ch, w_rj = (None, None) if weights is None else (weights[ch], weights[rj])
        loss, r_w, r_l = losses.ddpo_loss(
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
                sft = float(-losses.weighted_logps(pol[ch].detach(), mask[ch], w_ch, average=True).mean())
                logs["sft"] = sft
            logs["pair"] = float(loss.detach()) - c.sft_weight * sft
            self.stash_step_logs(logs)
        return loss


# ---------------------------------------------------------------- the recipe


def main(cfg: DPORecipeConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "align_config.yaml")
    set_seed(cfg.seed)
    t0 = time.time()
    dataset = load_preference_dataset(cfg.dataset)
    model, processor = build_model(cfg.model, cfg.seed)
    records, counts = encode_pairs(dataset, processor, cfg, image_seq_length(model.config))
    kept, rows, truncated = counts["kept"], counts["rows"], counts["truncated"]
    print(f"[{cfg.loss}] {kept}/{rows} pairs encoded, {truncated} truncated; skipped {counts['skipped']}")
    if not records:
        raise DataError(f"{cfg.dataset}: no pair can train (skipped: {counts['skipped']})")
    trainer = DDPOTrainer(
        model=model,
        args=training_arguments(cfg),
        train_dataset=RowsDataset(records),
        data_collator=PreferenceCollator(processor, VIEWS, seed=cfg.seed),
        processing_class=processor,
        dpo_cfg=cfg,
    )
    return train_merge_and_save(trainer, cfg, processor, cfg.model.name_or_path, t0, pairs=counts)
