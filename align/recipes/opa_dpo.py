"""OPA-DPO: the OPA step (LoRA SFT on reference answers + expert revisions), then DPO with OPA-DPO's four pairs.

    align build-data configs/toy/opa_dpo_data.yaml    # rollouts + oracle corrections → runs/opa_data/dataset
    align train configs/toy/opa_dpo.yaml              # OPA step → OPA-DPO → eval

Per record (image I, reference y_gt, rollout y_o, revision y_r, expert report) the loss is, as OPA-DPO's code:
  L = c_std·L(y_gt ≻ y_o | I) + c_AI·L(y_r ≻ y_o | I; sentence-score weights)
    + c_CoPO·(c_std·L(y_gt|I ≻ y_gt|I_m) + c_AI·L(y_r|I ≻ y_r|I_m; error-type weights)) + c_anc·L_anchor
with I_m the image with `mask_ratio` of its pixels replaced by the mean, and the anchor pushing the reference's
reward above δ and the revision's below δ (pure functions in align/core/losses/).

The OPA step's LoRA is merged into the base weights; DPO then trains a fresh LoRA on top, and the reference is
the same model with adapters disabled, so start and reference are both the OPA policy (OPA-DPO keeps training
the OPA adapter itself; merged-then-new-LoRA is the same start point). With `model.finetune: full` both stages
train every weight and the reference is a frozen copy of the OPA policy. `baseline: offpolicy` instead trains
plain sequence-level DPO of y_gt over a hallucinated caption the policy did not write (the off-policy baseline).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from align.config.loading import to_dict
from align.config.recipes import OPADPOConfig
from align.config.sections import OptimConfig
from align.core import ref_cache
from align.core.data import (
    PreferenceCollator,
    RowsDataset,
    VisionSFTCollator,
    encode_dataset,
    encode_row,
    image_seq_length,
    response_offsets,
    response_weights,
    to_pil,
)
from align.core.logprobs import response_logps
from align.core.losses.dpo import dpo_pair_loss, policy_rewards
from align.core.losses.opa_dpo import anchor_loss, opa_dpo_loss
from align.core.models import build_model
from align.core.trainer import AlignTrainer, begin_run, start_run, train_and_save, training_arguments, write_summary
from align.eval.callback import attach_checkpoint_eval
from align.eval.runner import evaluate_checkpoint
from data_builders.io import load_opa_dataset
from data_builders.spans import report_spans

VIEWS = ("reference", "rollout", "revision", "reference_masked", "revision_masked")


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
    """SFT of the base policy (LoRA, merged into it; or every weight) on the reference answers and the revisions
    (or, as an ablation, the references alone); saved to `output_dir/opa/final`."""
    run = dataclasses.replace(cfg.run, output_dir=str(Path(cfg.run.output_dir) / "opa"))
    finished = start_run(run, opa_step_config(cfg, run), tag="opa")
    if finished is not None:
        return Path(finished["final"])
    model, processor = build_model(cfg.model, run.seed)
    rows = opa_rows(dataset, cfg.opa.answers)
    encoded, stats = encode_dataset(rows, processor, cfg.data.max_length, image_seq_length(model.config))
    print(f"[opa] {stats.summary()}")
    optim = OptimConfig(
        lr=cfg.opa.lr,
        warmup_steps=min(10, cfg.opa.steps),
        max_steps=cfg.opa.steps,
        batch_size=cfg.opa.batch_size,
        grad_accum=cfg.opa.grad_accum,
    )
    trainer = AlignTrainer(
        model=model,
        args=training_arguments(run, optim, cfg.model.dtype),
        train_dataset=RowsDataset(encoded),
        data_collator=VisionSFTCollator(processor, cfg.data.packing, cfg.data.max_length),
        processing_class=processor,
    )
    result, final = train_and_save(trainer, run, processor, opa_step_config(cfg, run), tag="opa")
    write_summary(run, {"final": str(final), "train": result.metrics, "rows": stats.kept})
    return final


def opa_step_config(cfg: OPADPOConfig, run) -> dict:
    """What the OPA step's result depends on (its run dir holds it as align_config.yaml): a change to the DPO
    stage alone keeps the finished OPA step."""
    keep = ("recipe", "dataset", "model", "data", "opa")
    return {**{k: v for k, v in to_dict(cfg).items() if k in keep}, "run": dataclasses.asdict(run)}


# ---------------------------------------------------------------- preference data


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
            "rollout": report_spans(report, "rollout"),
            "revision": report_spans(report, "revision"),
        }
    cache = {} if prompt_cache is None else prompt_cache
    out = {"id": record["id"], "image": image}
    for name, (text, spans) in texts.items():
        row = {"id": record["id"], "image": image, "prompt": record["prompt"], "response": text}
        enc = encode_row(processor, row, cfg.data.max_length, n_image_tokens, cache)
        if enc is None:
            return None
        n = sum(label != -100 for label in enc["labels"])
        offsets = response_offsets(processor.tokenizer, text)
        out[name] = {
            "input_ids": enc["input_ids"],
            "labels": enc["labels"],
            "weights": response_weights(offsets, spans, n),
        }
        if name == "revision":  # the same tokens, weighted by error type for the image-contrast pair
            _, error_spans = report_spans(report, "revision", weights="error_type")
            out["revision_error_weights"] = response_weights(offsets, error_spans, n)
    return out


# ---------------------------------------------------------------- the trainer


class OPADPOTrainer(AlignTrainer):
    """OPA-DPO's four pairs and anchor (or, as the off-policy baseline, the reference-vs-rollout pair alone) against
    the reference (ReferenceMixin)."""

    loss_is_scaled_for_ga = False  # a batch mean: Trainer divides it by the accumulation steps (preference.py)

    def __init__(self, *args, opa_cfg: OPADPOConfig, views: tuple[str, ...], **kwargs):
        super().__init__(*args, **kwargs)
        self.opa_cfg, self.views = opa_cfg, views

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        c = self.opa_cfg
        pol, mask = response_logps(model, inputs, inputs["token_weights"].shape[1])
        n = len(pol) // len(self.views)
        ref = self.stage_reference(model, inputs, pol.shape[1], n)
        view = {v: slice(i * n, (i + 1) * n) for i, v in enumerate(self.views)}
        if c.baseline == "offpolicy":
            loss, r_w, r_l = self._pair(pol, ref, mask, view, "reference", "rollout")
            parts, rewards = {"pair_std": loss}, {"reference": r_w, "rejected": r_l}
        else:
            loss, parts, rewards = self._opa_terms(pol, ref, mask, view, inputs)
        if c.c_sft > 0:  # mean token NLL of the chosen answers under the policy
            chosen = [view["reference"]] + ([view["revision"]] if "revision" in view else [])
            nll = torch.stack([-(pol[v] * mask[v]).sum() / mask[v].sum().clamp(min=1) for v in chosen]).mean()
            parts["sft"] = nll.detach()
            loss = loss + c.c_sft * nll
        if self.logs_this_step(model):
            self.stash_step_logs(step_logs(parts, rewards))
        return loss

    def stage_reference(self, model, inputs: dict, width: int, n: int) -> torch.Tensor:
        """The reference's log-probs of every row: a forward over the whole batch, or, with precomputed ones
        (`precompute_ref_logps`), a forward over the masked-image views' rows alone."""
        if "ref_logps" not in inputs:
            return self.reference_logps(model, inputs, width)
        ref = inputs["ref_logps"].clone()
        masked = [i for i, v in enumerate(self.views) if v.endswith("_masked")]
        if masked:
            rows = torch.cat([torch.arange(i * n, (i + 1) * n) for i in masked]).to(ref.device)
            keys = ("input_ids", "attention_mask", "pixel_values", "labels")
            ref[rows] = self.reference_logps(model, {k: inputs[k][rows] for k in keys}, width)
        return ref

    def _pair(self, pol, ref, mask, view, chosen: str, rejected: str, w_weights=None, l_weights=None):
        w, r = view[chosen], view[rejected]
        return dpo_pair_loss(
            pol[w], ref[w], pol[r], ref[r], mask[w], mask[r], self.opa_cfg.beta, w_weights, l_weights,
            form=self.opa_cfg.loss_form,
        )  # fmt: skip

    def _opa_terms(self, pol, ref, mask, view, inputs):
        c, weights, error = self.opa_cfg, inputs["token_weights"], inputs["revision_error_weights"]
        l1, r_gt, r_o = self._pair(pol, ref, mask, view, "reference", "rollout")
        l2, r_rev, _ = self._pair(
            pol, ref, mask, view, "revision", "rollout", weights[view["revision"]], weights[view["rollout"]]
        )
        l3, _, _ = self._pair(pol, ref, mask, view, "reference", "reference_masked")
        l4, _, _ = self._pair(pol, ref, mask, view, "revision", "revision_masked", error, error)
        # the anchor needs rewards that keep their gradient (the pair losses return detached ones for logging);
        # pairs 3 and 4 reuse the unmasked forward for their chosen side, so r3 = r1 and r4 = r2 as in OPA-DPO
        ref_v, rev_v = view["reference"], view["revision"]
        per_token = c.loss_form == "token"
        r1 = policy_rewards(pol[ref_v], ref[ref_v], mask[ref_v], c.beta, per_token=per_token)
        r2 = policy_rewards(pol[rev_v], ref[rev_v], mask[rev_v], c.beta, per_token=per_token)
        if c.loss_form == "mean":  # rewards on the same per-token scale as the pairs
            r1 = r1 / mask[ref_v].sum(-1).clamp(min=1)
            r2 = r2 / mask[rev_v].sum(-1).clamp(min=1)
        anchor = anchor_loss([r1, r1], [r2, r2], c.delta)
        loss, parts = opa_dpo_loss(
            {"pair_std": l1, "pair_ai": l2, "copo_std": l3, "copo_ai": l4, "anchor": anchor},
            c_std=c.c_std,
            c_ai=c.c_ai,
            c_copo=c.c_copo,
            c_anc=c.c_anc,
        )
        return loss, parts, {"reference": r_gt, "rollout": r_o, "revision": r_rev}


def step_logs(parts: dict, rewards: dict) -> dict[str, float]:
    """Loss terms, mean rewards, and accuracy / margin of the reference answer over the rejected one."""
    logs = {k: float(v.detach()) for k, v in parts.items()}
    logs.update({f"rewards/{k}": float(v.mean()) for k, v in rewards.items()})
    rejected = rewards.get("rollout", rewards.get("rejected"))
    if rejected is not None:
        logs["rewards/accuracy"] = float((rewards["reference"] > rejected).float().mean())
        logs["rewards/margin"] = float((rewards["reference"] - rejected).mean())
    return logs


# ---------------------------------------------------------------- the recipe


def stage_tag(cfg: OPADPOConfig) -> str:
    """The DPO stage's name in console lines: the off-policy baseline is not OPA-DPO."""
    return "dpo-offpolicy" if cfg.baseline == "offpolicy" else "opa-dpo"


def build_trainer(cfg: OPADPOConfig, dataset, start: Path) -> tuple[OPADPOTrainer, object, int]:
    """The DPO stage on `start` (the OPA policy, or the base policy for the baseline): (trainer, processor,
    records encoded)."""
    model, processor = build_model(dataclasses.replace(cfg.model, name_or_path=str(start)), cfg.run.seed)
    n_img = image_seq_length(model.config)
    cache: dict = {}
    records = [r for r in (encode_record(processor, row, cfg, n_img, cache) for row in dataset) if r is not None]
    print(f"[{stage_tag(cfg)}] {len(records)}/{len(dataset)} records encoded (starting from {start})")
    views = ("reference", "rollout") if cfg.baseline == "offpolicy" else VIEWS
    patch_size = model.config.vision_config.patch_size
    trainer = OPADPOTrainer(
        model=model,
        args=training_arguments(cfg.run, cfg.optim, cfg.model.dtype),
        train_dataset=RowsDataset(records),
        data_collator=PreferenceCollator(processor, views, cfg.mask, cfg.mask_ratio, cfg.run.seed, patch_size),
        processing_class=processor,
        ref_model=copy.deepcopy(model) if cfg.model.finetune == "full" else None,
        opa_cfg=cfg,
        views=views,
    )
    trainer.data_collator.epoch_of = lambda: int(trainer.state.epoch or 0)  # masks drawn afresh each epoch
    if cfg.precompute_ref_logps:  # the views whose images are not masked per batch
        ref_cache.attach_reference_logps(
            trainer, records, processor, [v for v in views if not v.endswith("_masked")], dataset, cfg.dataset,
            dataclasses.replace(cfg.model, name_or_path=str(start)), cfg.data.max_length, tag=stage_tag(cfg),
        )  # fmt: skip
    return trainer, processor, len(records)


def main(cfg: OPADPOConfig) -> dict:
    run = cfg.run
    t0 = time.time()
    finished = begin_run(cfg, tag=stage_tag(cfg))
    if finished is not None:  # trained to its end with this config: its summary, nothing redone
        return finished
    dataset = load_opa_dataset(cfg.dataset)
    if cfg.baseline == "offpolicy" and "offpolicy" not in dataset.column_names:
        raise ValueError(f"{cfg.dataset}: no 'offpolicy' column; rebuild the data with this version of align")
    start = opa_step(cfg, dataset) if cfg.opa.steps > 0 and cfg.baseline == "none" else Path(cfg.model.name_or_path)
    trainer, processor, n_records = build_trainer(cfg, dataset, start)
    attach_checkpoint_eval(trainer, cfg)
    result, final = train_and_save(trainer, run, processor, cfg, tag=stage_tag(cfg))
    summary = {
        "final": str(final),
        "start": str(start),
        "train": result.metrics,
        "records": n_records,
        "log_history": trainer.state.log_history,
        "seconds": round(time.time() - t0, 1),
    }
    if run.eval_at_end:
        summary["eval"] = evaluate_checkpoint(final, cfg.eval, data_cfg=cfg.data)
    return write_summary(run, summary)
