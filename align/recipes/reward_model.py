"""The factually augmented reward model of LLaVA-RLHF (Fact-RLHF), trained on preference pairs.

    align build-data configs/toy/reward_pairs.yaml     # the base policy's captions, ranked by the oracle
    align train configs/toy/reward_model.yaml          # LoRA + scalar head, facts in the prompt
    align train configs/toy/reward_model.yaml facts=false run.output_dir=runs/reward_model_plain   # the plain RM

Per pair (image I, prompt x, chosen y_w, rejected y_l, facts F) the reward model reads the user turn
`reward_prompt(x, F)` (the facts, shuffled, before the prompt; no facts for the plain RM) and the answer, and the
loss is `pairwise_loss`: −log σ(r(y_w) − r(y_l)) + center_coef · |mean(r(y_w) + r(y_l))| (rewards/model.py).
A share of the pairs (`eval_fraction`, drawn by the run seed) is held out; the run reports the held-out pair
accuracy (r(y_w) > r(y_l)) before and after training. The result, `final/`, is a saved reward model
(`rewards.model.load_reward_model`): the LoRA adapter over `model.name_or_path`, the head and its config.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from align.config.loading import to_dict
from align.config.recipes import RewardModelConfig
from align.core.data import DataError, PreferenceCollator, RowsDataset, encode_row, image_seq_length, to_pil
from align.core.distributed import barrier, is_main
from align.core.models import build_model
from align.core.preference import skip_reason
from align.core.run_dir import CONFIG_FILE, last_checkpoint, save_run_config
from align.core.trainer import AlignTrainer, begin_run, training_arguments, write_summary
from data_builders.captions import record_facts
from data_builders.io import load_preference_dataset
from data_builders.progress import bar
from rewards.model import RewardModel, pairwise_loss, reward_prompt, save_reward_model

VIEWS = ("chosen", "rejected")  # the collator's row v*B + b is side v of pair b
TRAINABLE_FILE = "reward_trainable.safetensors"  # a checkpoint's LoRA and head weights


def encode_reward_pair(processor, record: dict, cfg: RewardModelConfig, n_image_tokens: int, cache: dict):
    """{id, image, chosen/rejected: {input_ids, labels, weights}}, or the reason the pair cannot train."""
    reason = skip_reason(record, weighted=False)  # the DPO family's rule: an empty side, chosen == rejected
    if reason:
        return reason
    facts = record_facts(record) if cfg.facts else None
    if cfg.facts and not facts:
        return "no_facts"
    # one shuffle per record, the same on every run and for both answers, so only the answer differs
    prompt = reward_prompt(record["prompt"], facts, random.Random(f"{cfg.run.seed}:{record['id']}"))
    image = to_pil(record["image"], record["id"])
    out = {"id": record["id"], "image": image}
    for side in VIEWS:
        row = {"id": record["id"], "image": image, "prompt": prompt, "response": record[side]}
        enc = encode_row(processor, row, cfg.data.max_length, n_image_tokens, cache)
        if enc is None:
            return "prompt_too_long"
        out[side] = {"input_ids": enc["input_ids"], "labels": enc["labels"], "weights": [1.0]}
    return out


def encode_split(dataset, processor, cfg: RewardModelConfig, n_image_tokens: int) -> tuple[list, list, dict]:
    """(train pairs, held-out pairs, counts): every pair that can train, split by the run seed; the others are
    counted by reason, never raised."""
    encoded, skipped, cache = [], Counter(), {}
    for record in bar(dataset, desc="encode pairs"):
        result = encode_reward_pair(processor, record, cfg, n_image_tokens, cache)
        if isinstance(result, str):
            skipped[result] += 1
        else:
            encoded.append(result)
    order = np.random.default_rng(cfg.run.seed).permutation(len(encoded))
    n_eval = int(round(cfg.eval_fraction * len(encoded)))
    held_out, train = [encoded[i] for i in order[:n_eval]], [encoded[i] for i in order[n_eval:]]
    return train, held_out, {"rows": len(dataset), "train": len(train), "held_out": n_eval, "skipped": dict(skipped)}


class RewardTrainer(AlignTrainer):
    """`pairwise_loss` on the rewards of the chosen rows (first half of the batch) and the rejected ones."""

    loss_is_scaled_for_ga = False  # a batch mean: Trainer divides it by the accumulation steps

    def __init__(self, *args, center_coef: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.center_coef = center_coef

    def _save(self, output_dir: str | None = None, state_dict=None):
        # a checkpoint holds what trains (LoRA and head), not the frozen backbone: Trainer would save the whole
        # module's state dict, 14 GB a checkpoint for a 7B backbone
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
        save_file(trainable, out / TRAINABLE_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        state = load_file(Path(resume_from_checkpoint) / TRAINABLE_FILE)
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{resume_from_checkpoint}: weights this reward model does not have: {unexpected[:3]}")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards = model(**inputs)
        n = len(rewards) // 2
        loss = pairwise_loss(rewards[:n], rewards[n:], self.center_coef)
        if self.logs_this_step(model):
            margin = (rewards[:n] - rewards[n:]).detach()
            self.stash_step_logs({"rewards/accuracy": float((margin > 0).float().mean()),
                                  "rewards/margin": float(margin.mean()),
                                  "rewards/mean": float(rewards.detach().mean())})  # fmt: skip
        return loss


@torch.no_grad()
def pair_accuracy(rm: RewardModel, pairs: list[dict], collator, batch_size: int) -> dict | None:
    """Held-out pair accuracy (ties count half) and the mean margin; None without held-out pairs."""
    if not pairs:
        return None
    was_training, device = rm.training, next(rm.parameters()).device
    rm.eval()
    margins = []
    for start in range(0, len(pairs), batch_size):
        batch = collator(pairs[start : start + batch_size])
        rewards = rm(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
        n = len(rewards) // 2
        margins.append(rewards[:n] - rewards[n:])
    rm.train(was_training)
    margin = torch.cat(margins)
    accuracy = ((margin > 0).float() + 0.5 * (margin == 0).float()).mean()
    return {"pair_accuracy": float(accuracy), "mean_margin": float(margin.mean()), "pairs": len(margin)}


def main(cfg: RewardModelConfig) -> dict:
    run, t0 = cfg.run, time.time()
    finished = begin_run(cfg, tag="reward_model")
    if finished is not None:
        return finished
    dataset = load_preference_dataset(cfg.dataset)
    backbone, processor = build_model(cfg.model, run.seed)
    rm = RewardModel(backbone)  # the head is drawn after the LoRA init, from the same seeded stream
    train, held_out, counts = encode_split(dataset, processor, cfg, image_seq_length(backbone.config))
    kept = f"{counts['train']} pairs to train, {counts['held_out']} held out"
    print(f"[reward_model] {kept}; skipped {counts['skipped']}")
    if not train:
        raise DataError(f"{cfg.dataset}: no pair can train (skipped: {counts['skipped']})")
    collator = PreferenceCollator(processor, VIEWS, seed=run.seed)
    before = pair_accuracy(rm, held_out, collator, cfg.optim.batch_size)
    trainer = RewardTrainer(
        model=rm,
        args=training_arguments(run, cfg.optim, cfg.model.dtype),
        train_dataset=RowsDataset(train),
        data_collator=collator,
        processing_class=processor,
        center_coef=cfg.center_coef,
    )
    trainer.log_tag = "reward_model"
    last = last_checkpoint(run.output_dir)
    if last:
        print(f"[reward_model] resuming from {last}")
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    final = Path(run.output_dir) / "final"
    if is_main():  # one process of several: the main one writes (align/core/distributed.py)
        save_reward_model(rm, processor, final, cfg.model.name_or_path, cfg.facts)
        save_run_config(to_dict(cfg), final / CONFIG_FILE)
    barrier()
    summary = {
        "final": str(final),
        "start": cfg.model.name_or_path,
        "facts": cfg.facts,
        "pairs": counts,
        "held_out_before": before,
        "held_out": pair_accuracy(rm, held_out, collator, cfg.optim.batch_size),
        "train": result.metrics,
        "log_history": trainer.state.log_history,
        "seconds": round(time.time() - t0, 1),
    }
    if summary["held_out"]:
        print(f"[reward_model] held-out pair accuracy {before['pair_accuracy']:.3f} -> "
              f"{summary['held_out']['pair_accuracy']:.3f} ({counts['held_out']} pairs)")  # fmt: skip
    return write_summary(run, summary)
