"""OPA-DPO: the OPA step (LoRA SFT on reference answers + expert revisions), then DPO with OPA-DPO's four pairs.

    align build-data configs/toy/opa_dpo_data.yaml    # rollouts + oracle corrections → runs/opa_data/dataset
    align train configs/toy/opa_dpo.yaml              # OPA step → OPA-DPO → eval

Per record (image I, reference y_gt, rollout y_o, revision y_r, expert report) the loss is, as OPA-DPO's code:
  L = c_std·L(y_gt ≻ y_o | I) + c_AI·L(y_r ≻ y_o | I; sentence-score weights)
    + c_CoPO·(c_std·L(y_gt|I ≻ y_gt|I_m) + c_AI·L(y_r|I ≻ y_r|I_m; error-type weights)) + c_anc·L_anchor
with I_m the image with `mask_ratio` of its pixels replaced by the mean, and the anchor pushing the reference's
reward above δ and the revision's below δ (pure functions in align/losses.py).

The OPA step's LoRA is merged into the base weights; DPO then trains a fresh LoRA on top, and the reference is
the same model with adapters disabled, so start and reference are both the OPA policy (OPA-DPO keeps training
the OPA adapter itself; merged-then-new-LoRA is the same start point). `baseline: offpolicy` instead trains
plain sequence-level DPO of y_gt over a hallucinated caption the policy did not write (the off-policy baseline).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import field
from pathlib import Path
from typing import Literal

import torch
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from align import losses
from align.config import save_config
from align.data import RowsDataset, VisionSFTCollator, encode_dataset, encode_row, image_seq_length, pad_right, to_pil
from align.masking import mask_blocks, mask_random
from align.models import build_model, save_policy
from align.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig
from align.sft import training_arguments
from align.trainer_utils import ResumableTrainer, train_merge_and_save
from data_builders.opa_dpo import load_opa_dataset

VIEWS = ("reference", "rollout", "revision", "reference_masked", "revision_masked")


@dataclasses.dataclass
class OPAStepConfig:
    steps: int = field(default=1200, metadata={"help": "OPA step: LoRA SFT steps on reference + revision (0 = skip)."})
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
    output_dir: str = field(default="runs/opa_dpo", metadata={"help": "Run directory."})
    seed: int = field(default=0, metadata={"help": "Seed for LoRA init, data order and image masks."})
    dataset: str = field(default="runs/opa_data/dataset", metadata={"help": "OPA dataset from `align build-data`."})
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(
            name_or_path="runs/demo/sft_base/final",
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            lora_vision=True,  # OPA-DPO adapts the vision tower and projector too
            lora_projector=True,
        ),
        metadata={"help": "The base policy (a full model) and the LoRA settings of both stages."},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "World used for eval; max_length."})
    opa: OPAStepConfig = field(default_factory=OPAStepConfig, metadata={"help": "The OPA step."})
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=10, max_steps=100, batch_size=8),
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
    mask: Literal["random", "blocks"] = field(default="random", metadata={"help": "Image masking for I_m."})
    mask_ratio: float = field(default=0.3, metadata={"help": "Share of the image masked."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Hallucination eval of the result."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept."})
    report_to: str = field(default="none", metadata={"help": "Trainer loggers."})
    eval_at_end: bool = field(default=True, metadata={"help": "Evaluate the final model."})
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint."})

    def __post_init__(self):
        if self.model.name_or_path is None:
            raise ValueError("model.name_or_path: OPA-DPO starts from a trained base policy (run `align demo` first)")
        if self.model.finetune != "lora":
            raise ValueError("model.finetune: OPA-DPO trains LoRA adapters; the reference is the adapter-free model")
        if self.beta <= 0 or not 0 <= self.mask_ratio < 1:
            raise ValueError("need beta > 0 and 0 <= mask_ratio < 1")


# ---------------------------------------------------------------- the OPA step


def opa_rows(dataset, answers: str = "both") -> list[dict]:
    """SFT rows of the OPA step: each record's reference answer and its revision (or the reference alone)."""
    kinds = ("reference", "revision") if answers == "both" else ("reference",)
    return [
        {"id": f"{r['id']}/{kind}", "image": r["image"], "prompt": r["prompt"], "response": r[kind]}
        for r in dataset
        for kind in kinds
    ]


def opa_step(cfg: OPADPOConfig, dataset) -> Path:
    """LoRA SFT of the base policy on the reference answers and the revisions (or, as an ablation, the references
    alone); merged and saved."""
    out = Path(cfg.output_dir) / "opa"
    final = out / "final"
    if (final / "config.json").is_file():
        return final
    model, processor = build_model(cfg.model, cfg.seed)
    rows = opa_rows(dataset, cfg.opa.answers)
    encoded, stats = encode_dataset(rows, processor, cfg.data.max_length, image_seq_length(model.config))
    print(f"[opa] {stats.summary()}")
    sft_like = dataclasses.replace(
        cfg,
        output_dir=str(out),
        optim=OptimConfig(
            lr=cfg.opa.lr,
            warmup_steps=min(10, cfg.opa.steps),
            max_steps=cfg.opa.steps,
            batch_size=cfg.opa.batch_size,
            grad_accum=cfg.opa.grad_accum,
        ),
    )
    trainer = ResumableTrainer(
        model=model,
        args=training_arguments(sft_like),
        train_dataset=RowsDataset(encoded),
        data_collator=VisionSFTCollator(processor),
        processing_class=processor,
    )
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(out)) if cfg.resume else None)
    return save_policy(trainer.model.merge_and_unload(), processor, final)


# ---------------------------------------------------------------- preference data


def _offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


def _token_weights(offsets: list, spans: list, n: int) -> list[float]:
    return (losses.span_token_weights(offsets, spans) + [1.0])[:n]  # + the EOS token; cut like the response


def encode_record(
    processor, record: dict, cfg: OPADPOConfig, n_image_tokens: int, prompt_cache: dict | None = None
) -> dict | None:
    """Token ids, labels and per-token weights of each response of one record (None if a prompt is too long, or
    if the off-policy baseline has no rejected answer for it). Pass one `prompt_cache` dict for all records so a
    prompt is run through the processor once, not once per response.

    The rollout and revision texts are rebuilt from the report's sentences so the weighted spans line up."""
    if cfg.baseline == "offpolicy" and not record.get("offpolicy"):
        return None  # a public row without a rejected answer has nothing to prefer against
    image = to_pil(record["image"], record["id"])
    if cfg.baseline == "offpolicy":
        texts = {"reference": (record["reference"], []), "rollout": (record["offpolicy"], [])}
    else:
        report = json.loads(record["report"])
        texts = {
            "reference": (record["reference"], []),
            "rollout": losses.report_spans(report, "rollout"),
            "revision": losses.report_spans(report, "revision"),
        }
    cache = {} if prompt_cache is None else prompt_cache
    out = {"id": record["id"], "image": image}
    for name, (text, spans) in texts.items():
        row = {"id": record["id"], "image": image, "prompt": record["prompt"], "response": text}
        enc = encode_row(processor, row, cfg.data.max_length, n_image_tokens, cache)
        if enc is None:
            return None
        n = sum(label != -100 for label in enc["labels"])
        offsets = _offsets(processor.tokenizer, text)
        out[name] = {
            "input_ids": enc["input_ids"],
            "labels": enc["labels"],
            "weights": _token_weights(offsets, spans, n),
        }
        if name == "revision":  # the same tokens, weighted by error type for the image-contrast pair
            _, error_spans = losses.report_spans(report, "revision", weights="error_type")
            out["revision_error_weights"] = _token_weights(offsets, error_spans, n)
    return out


@dataclasses.dataclass
class PreferenceCollator:
    """Stacks every (response, image view) a record needs into one padded batch: row v*B + b is view v of record b.

    `token_weights` are each row's response-token weights (sentence-score weights on rollout and revision);
    `revision_error_weights` are the revision's error-type weights, used by the image-contrast pair."""

    processor: object
    views: tuple[str, ...]
    mask: str = "random"
    mask_ratio: float = 0.3
    seed: int = 0
    patch_size: int = 14
    calls: int = 0

    def __call__(self, records: list[dict]) -> dict:
        pixels = self.processor.image_processor([r["image"] for r in records], return_tensors="pt")["pixel_values"]
        masked = None
        if any(v.endswith("_masked") for v in self.views):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)  # a fresh, seeded mask per batch
            if self.mask == "random":
                masked = mask_random(pixels, ratio=self.mask_ratio, generator=gen)
            else:  # blocks the size of the vision patches
                masked = mask_blocks(pixels, ratio=self.mask_ratio, block=self.patch_size, generator=gen)
        self.calls += 1
        seqs = [r[v.removesuffix("_masked")] for v in self.views for r in records]
        width = max(len(s["input_ids"]) for s in seqs)
        resp = max(len(s["weights"]) for s in seqs)
        batch = {
            "input_ids": pad_right(
                [s["input_ids"] for s in seqs], width, self.processor.tokenizer.pad_token_id, torch.long
            ),
            "attention_mask": pad_right([[1] * len(s["input_ids"]) for s in seqs], width, 0, torch.long),
            "labels": pad_right([s["labels"] for s in seqs], width, -100, torch.long),
            "pixel_values": torch.cat([masked if v.endswith("_masked") else pixels for v in self.views]),
            "token_weights": pad_right([s["weights"] for s in seqs], resp, 0.0, torch.float),
        }
        if "revision" in self.views:
            batch["revision_error_weights"] = pad_right(
                [r["revision_error_weights"] for r in records], resp, 0.0, torch.float
            )
        return batch


# ---------------------------------------------------------------- the trainer


def response_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the response tokens, left-aligned: ([N, T], mask [N, T])."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
    ).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logps = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    width = batch["token_weights"].shape[1]
    out = logps.new_zeros((len(logps), width))
    out_mask = torch.zeros((len(logps), width), dtype=torch.bool)
    for i in range(len(logps)):
        row = logps[i][mask[i]]
        out[i, : len(row)] = row
        out_mask[i, : len(row)] = True
    return out, out_mask


class OPADPOTrainer(ResumableTrainer):
    def __init__(self, *args, opa_cfg: OPADPOConfig, views: tuple[str, ...], **kwargs):
        super().__init__(*args, **kwargs)
        self.opa_cfg, self.views = opa_cfg, views

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        c = self.opa_cfg
        weights = inputs["token_weights"]
        pol, mask = response_logps(model, inputs)
        with torch.no_grad(), model.disable_adapter():
            ref, _ = response_logps(model, inputs)
        n = len(pol) // len(self.views)
        view = {v: slice(i * n, (i + 1) * n) for i, v in enumerate(self.views)}

        def pair(chosen: str, rejected: str, weighted: bool = False, w_weights=None, l_weights=None):
            w, r = view[chosen], view[rejected]
            if weighted:
                w_weights, l_weights = weights[w], weights[r]
            return losses.dpo_pair_loss(
                pol[w], ref[w], pol[r], ref[r], mask[w], mask[r], c.beta, w_weights, l_weights, form=c.loss_form
            )

        if c.baseline == "offpolicy":
            loss, r_w, r_l = pair("reference", "rollout")
            parts = {"pair_std": loss}
            rewards = {"reference": r_w, "rejected": r_l}
        else:
            error = inputs["revision_error_weights"]
            l1, r_gt, r_o = pair("reference", "rollout")
            l2, r_rev, _ = pair("revision", "rollout", weighted=True)
            l3, _, _ = pair("reference", "reference_masked")
            l4, _, _ = pair("revision", "revision_masked", w_weights=error, l_weights=error)
            # the anchor needs rewards that keep their gradient (the pair losses return detached ones for logging);
            # pairs 3 and 4 reuse the unmasked forward for their chosen side, so r3 = r1 and r4 = r2 as in OPA-DPO
            per_token = c.loss_form == "token"
            r1 = losses.policy_rewards(
                pol[view["reference"]], ref[view["reference"]], mask[view["reference"]], c.beta, per_token=per_token
            )
            r2 = losses.policy_rewards(
                pol[view["revision"]], ref[view["revision"]], mask[view["revision"]], c.beta, per_token=per_token
            )
            if c.loss_form == "mean":  # rewards on the same per-token scale as the pairs
                r1 = r1 / mask[view["reference"]].sum(-1).clamp(min=1)
                r2 = r2 / mask[view["revision"]].sum(-1).clamp(min=1)
            anchor = losses.anchor_loss([r1, r1], [r2, r2], c.delta)
            loss, parts = losses.opa_dpo_loss(
                {"pair_std": l1, "pair_ai": l2, "copo_std": l3, "copo_ai": l4, "anchor": anchor},
                c_std=c.c_std,
                c_ai=c.c_ai,
                c_copo=c.c_copo,
                c_anc=c.c_anc,
            )
            rewards = {"reference": r_gt, "rollout": r_o, "revision": r_rev}
        if c.c_sft > 0:  # mean token NLL of the chosen answers under the policy
            chosen = [view["reference"]] + ([view["revision"]] if "revision" in view else [])
            nll = torch.stack([-(pol[v] * mask[v]).sum() / mask[v].sum().clamp(min=1) for v in chosen]).mean()
            parts["sft"] = nll.detach()
            loss = loss + c.c_sft * nll
        if self.logs_this_step(model):
            logs = {k: float(v.detach()) for k, v in parts.items()}
            logs.update({f"rewards/{k}": float(v.mean()) for k, v in rewards.items()})
            if "rollout" in rewards or "rejected" in rewards:
                rejected = rewards.get("rollout", rewards.get("rejected"))
                logs["rewards/accuracy"] = float((rewards["reference"] > rejected).float().mean())
                logs["rewards/margin"] = float((rewards["reference"] - rejected).mean())
            self.stash_step_logs(logs)
        return loss


# ---------------------------------------------------------------- the recipe


def main(cfg: OPADPOConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "align_config.yaml")
    set_seed(cfg.seed)
    t0 = time.time()
    dataset = load_opa_dataset(cfg.dataset)
    if cfg.baseline == "offpolicy" and "offpolicy" not in dataset.column_names:
        raise ValueError(f"{cfg.dataset}: no 'offpolicy' column; rebuild the data with this version of align")
    start = opa_step(cfg, dataset) if cfg.opa.steps > 0 and cfg.baseline == "none" else Path(cfg.model.name_or_path)
    model, processor = build_model(dataclasses.replace(cfg.model, name_or_path=str(start)), cfg.seed)
    n_img = image_seq_length(model.config)
    cache: dict = {}
    records = [r for r in (encode_record(processor, row, cfg, n_img, cache) for row in dataset) if r is not None]
    print(f"[opa-dpo] {len(records)}/{len(dataset)} records encoded (starting from {start})")
    if cfg.baseline == "offpolicy":
        views: tuple[str, ...] = ("reference", "rollout")
    else:
        views = VIEWS
    trainer = OPADPOTrainer(
        model=model,
        args=training_arguments(cfg),
        train_dataset=RowsDataset(records),
        data_collator=PreferenceCollator(
            processor, views, cfg.mask, cfg.mask_ratio, cfg.seed, patch_size=model.config.vision_config.patch_size
        ),
        processing_class=processor,
        opa_cfg=cfg,
        views=views,
    )
    return train_merge_and_save(trainer, cfg, processor, str(start), t0, records=len(records))
