"""PPO with a value model on ToyWorld captions: LLaVA-RLHF's Fact-RLHF (research/methods.md §3.3).

    align train configs/toy/ppo.yaml                      # rewarded by the fact-augmented reward model
    align train configs/toy/ppo.yaml reward_model_path=runs/reward_model_plain/final run.output_dir=runs/ppo_plain

One step:
 1. Rollout: the policy (a LoRA on the start model) samples one caption for each of `rollout_batch_size` training
    images through the rollout engine (align/rollout/engine.py). The replies come back as text with their finish
    reason and are tokenised as every recipe encodes rows, so a served engine can stand in: with `served`, the
    step's LoRA is saved and loaded into a vLLM server by path, and the server samples (its own log-probs unused:
    step 3 computes them here, so the ratio's two sides come from one implementation).
 2. Score: the reward model reads (image, prompt, caption[, the image's facts]); a caption cut before its end token
    gets `truncation_penalty` on top. The ToyWorld oracle's CHAIR_i and recall of the same captions are logged
    beside the score, so reward hacking shows as a rising score over a CHAIR_i that does not fall.
 3. Old log-probs (the policy), reference log-probs (the same model, adapters disabled) and values (the value
    model: a reward model's backbone and head read at every response position). Per-token rewards
    −kl_coef·max(0, log π − log π_ref) with the score on the last token, GAE, whitened advantages
    (align/core/losses/ppo.py).
 4. `ppo_epochs` passes over the batch in minibatches of optim.batch_size: clipped policy loss + vf_coef · clipped
    value loss, one AdamW over the policy's LoRA and the value model; the schedule moves once per step.

Under `accelerate launch` each of the N processes rolls out, scores and values its 1/N of the step's prompts (its
samples seeded by (seed, step, rank)), advantages are whitened over the whole batch, gradients are averaged over
the processes before each optimiser step (as DDP does), and the main process writes the run directory.

Every step's sampling and minibatch order are seeded by (seed, step), and checkpoints (`checkpoint-N/`: trainable
weights, optimiser, schedule, log) are written whole or not at all, so a run killed at any point resumes from its
last checkpoint and ends with the weights of an uninterrupted run. `eval.at_checkpoints` scores each checkpoint
with the eval callback; `final/` holds the merged policy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import types
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import TrainerState, get_scheduler

from align.config.loading import to_dict
from align.config.online import PPORecipeConfig
from align.core import console
from align.core.console import TRAIN_LOG
from align.core.data import DataError, VisionSFTCollator, encode_row, image_seq_length
from align.core.distributed import (
    all_sum,
    average_gradients,
    barrier,
    broadcast_parameters,
    device,
    is_main,
    mean_over_processes,
    rank_and_world,
)
from align.core.logprobs import IGNORE, left_align, response_logps
from align.core.losses.ppo import gae, masked_mean, policy_loss, shaped_rewards, value_loss, whiten
from align.core.models import build_model, save_policy
from align.core.run_dir import CONFIG_FILE, checkpoints, last_checkpoint, save_run_config
from align.core.trainer import begin_run, write_summary
from align.eval.callback import HallucinationEvalCallback, eval_mode
from align.eval.runner import evaluate_checkpoint
from align.rollout.engine import PolicyRolloutEngine
from align.rollout.prompts import rl_prompts
from data_builders.reward_pairs import caption_quality
from data_builders.served_rollout import ServedRolloutEngine
from data_builders.toyworld import image_to_png
from data_builders.toyworld_text import caption_mentions
from rewards.functions import FiniteRewards, RewardModelReward, ToyWorldOracleReward
from rewards.model import RewardModel, load_reward_model

POLICY_FILE, VALUE_FILE, OPTIMIZER_FILE, STATE_FILE = (
    "policy_trainable.safetensors", "value_trainable.safetensors", "optimizer.pt", "trainer_state.json"
)  # fmt: skip


SERVED_DIR = "served_adapter"  # the LoRA a vLLM server samples (`served`), rewritten every step
FIRST_LAST = ("reward/score", "oracle/chair_i", "oracle/recall", "kl")  # the summary's first and last step values


def step_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """The prompts of step `step` (0-based): consecutive slices of a fresh permutation per pass over the n prompts,
    a function of (seed, step) alone, so a resumed run draws what an uninterrupted one would."""
    out = []
    for position in range(step * batch, (step + 1) * batch):
        epoch, i = divmod(position, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[i]))
    return out


def rollout_engine(cfg: PPORecipeConfig, policy, processor):
    """The live policy sampled here, or a vLLM server (`cfg.served`) whose replies are cached in the run folder."""
    if cfg.served is None:
        return PolicyRolloutEngine(policy, processor, cfg.rollout, name="hf:ppo-policy")
    return ServedRolloutEngine(cfg.served, cfg.rollout, cache_dir=Path(cfg.run.output_dir) / "rollout_cache")


def value_model(cfg: PPORecipeConfig, device) -> RewardModel:
    """The value model: a saved reward model made trainable (LLaVA-RLHF), or a fresh LoRA and head."""
    path = cfg.value_model_path or cfg.reward_model_path
    if path:
        model, _, _ = load_reward_model(path, device=str(device), trainable=True)
    else:
        backbone, _ = build_model(cfg.model, cfg.run.seed + 1)
        model = RewardModel(backbone)
    return model.to(device).train()


def task_reward(cfg: PPORecipeConfig, device) -> FiniteRewards:
    if cfg.reward == "oracle":
        return FiniteRewards(ToyWorldOracleReward(cfg.hallucination_weight, cfg.recall_weight))
    return FiniteRewards(RewardModelReward(cfg.reward_model_path, str(device), cfg.optim.batch_size))


def token_values(model: RewardModel, batch: dict, width: int) -> torch.Tensor:
    """V(s_t) for each response token t [B, width], left-aligned like `response_logps`: the head on the hidden
    state of the position before the token (the state from which it is sampled)."""
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    mask = batch["labels"][:, 1:] != IGNORE
    values = model.head(hidden[:, :-1][mask]).squeeze(-1).float()
    return left_align(values, mask, width)[0]


def encode_replies(processor, prompts: list[dict], replies, max_length: int, n_image_tokens: int, cache: dict):
    """Rows of (prompt, reply) as the recipes encode them; a reply cut at max_new_tokens keeps no end token."""
    rows = []
    for p, (text, finished) in zip(prompts, replies, strict=True):
        row = encode_row(processor, {**p, "response": text}, max_length, n_image_tokens, cache)
        if row is None:
            raise DataError(f"{p['id']}: the prompt is longer than data.max_length ({max_length})")
        if not finished and not row["truncated"]:
            row["input_ids"], row["labels"] = row["input_ids"][:-1], row["labels"][:-1]
        rows.append(row)
    return rows


def oracle_stats(texts: list[str], prompts: list[dict]) -> dict:
    """CHAIR_i (hallucinated / all object mentions) and mean recall of the captions by ToyWorld's ground truth;
    nothing for prompts without one."""
    if any(p["objects"] is None for p in prompts):
        return {}
    hallucinated = mentions = 0
    recalls = []
    for text, p in zip(texts, prompts, strict=True):
        h, recall = caption_quality(text, json.loads(p["objects"]))
        hallucinated, mentions = hallucinated + h, mentions + len(caption_mentions(text))
        recalls.append(recall)
    return {"oracle/chair_i": 100 * hallucinated / max(mentions, 1), "oracle/recall": 100 * float(np.mean(recalls))}


class PPORun:
    """The models, optimiser and log of one PPO run, and its step."""

    def __init__(self, cfg: PPORecipeConfig):
        self.cfg, self.device = cfg, device()
        self.rank, self.world = rank_and_world()
        minibatch = cfg.optim.batch_size * cfg.optim.grad_accum
        if cfg.rollout_batch_size % (self.world * minibatch):
            raise ValueError(
                f"rollout_batch_size {cfg.rollout_batch_size} does not split over {self.world} processes into whole "
                f"minibatches of optim.batch_size x optim.grad_accum = {minibatch}"
            )
        self.policy, self.processor = build_model(cfg.model, cfg.run.seed)
        self.policy.to(self.device).train()
        self.value = value_model(cfg, self.device)
        self.reward = task_reward(cfg, self.device)
        self.engine = rollout_engine(cfg, self.policy, self.processor)
        self.collator = VisionSFTCollator(self.processor)
        self.prompts, self.cache = rl_prompts(cfg.data, cfg.prompts, cfg.limit, cfg.run.seed), {}
        self.n_image_tokens = image_seq_length(self.policy.config)
        params = [p for m in (self.policy, self.value) for p in m.parameters() if p.requires_grad]
        broadcast_parameters(params)  # every process starts from the main one's initial weights
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.scheduler = get_scheduler(
            cfg.optim.scheduler, self.optimizer, cfg.optim.warmup_steps, cfg.optim.max_steps
        )
        self.state = TrainerState(global_step=0, max_steps=cfg.optim.max_steps, log_history=[])

    def seed(self, *parts: int) -> int:
        return int(np.random.default_rng([self.cfg.run.seed, self.state.global_step, *parts]).integers(2**31))

    @torch.no_grad()
    def rollout(self) -> tuple[dict, dict]:
        """Sample, score and value one batch: (the batch with old log-probs, values, advantages, returns; stats)."""
        cfg = self.cfg
        idx = step_indices(len(self.prompts), cfg.rollout_batch_size, self.state.global_step, cfg.run.seed)
        share = len(idx) // self.world  # this process's slice of the step's prompts
        prompts = [self.prompts[i] for i in idx[self.rank * share : (self.rank + 1) * share]]
        with eval_mode(self.policy), eval_mode(self.value):  # dropout (if any) off for the rollout's numbers
            return self._score_and_value(prompts)

    def _score_and_value(self, prompts: list[dict]) -> tuple[dict, dict]:
        cfg = self.cfg
        seed = self.seed(0, *([self.rank] if self.rank else []))  # rank 0 draws what one process draws
        replies = self.sample(prompts, seed)
        rows = encode_replies(self.processor, prompts, replies, cfg.data.max_length, self.n_image_tokens, self.cache)
        texts = [text for text, _ in replies]
        response_ids = [[t for t in r["labels"] if t != IGNORE] for r in rows]
        columns = {"image": [p["image"] for p in prompts], "facts": [p["facts"] for p in prompts],
                   "objects": [p["objects"] for p in prompts], "image_id": [p["id"] for p in prompts]}  # fmt: skip
        plain = [p["prompt"] for p in prompts]
        scores = torch.tensor(self.reward(plain, texts, completion_ids=response_ids, **columns))
        cut = torch.tensor([0.0 if finished else cfg.truncation_penalty for _, finished in replies])
        batch = {k: v.to(self.device) for k, v in self.collator(rows).items()}
        width = int((batch["labels"][:, 1:] != IGNORE).sum(1).max())
        old_logps, mask, ref_logps, old_values = self.forward_in_chunks(batch, width)
        rewards, kl = shaped_rewards((scores + cut).to(self.device), old_logps, ref_logps, mask, cfg.kl_coef)
        advantages, returns = gae(rewards * cfg.reward_scale, old_values, mask, cfg.gamma, cfg.lam)
        batch.update(old_logps=old_logps, mask=mask, old_values=old_values, returns=returns,
                     advantages=whiten(advantages, mask, total=all_sum))  # fmt: skip
        stats = {"reward/score": float(scores.mean()), "reward/truncated": float((cut < 0).float().mean()),
                 "kl": float(kl.sum(1).mean()), "response_length": float(mask.sum(1).float().mean()),
                 "values/mean": float(masked_mean(old_values, mask)), **oracle_stats(texts, prompts)}  # fmt: skip
        return batch, stats

    def sample(self, prompts: list[dict], seed: int) -> list[tuple[str, bool]]:
        """(text, finished) per prompt from the current policy: sampled here, or by the server once this step's LoRA
        is loaded into it."""
        images, texts = [p["image"] for p in prompts], [p["prompt"] for p in prompts]
        if self.cfg.served is None:
            return self.engine.sample(images, texts, seed)
        before = self.engine.model
        self.engine.load_adapter(*self.push_policy())
        if before not in (self.cfg.served.model, self.engine.model):  # the step before's adapter: no longer asked
            self.engine.unload_adapter(before)
        return self.engine.generate_with_finish([image_to_png(im) for im in images], texts, seed)

    def push_policy(self) -> tuple[str, Path]:
        """(name, folder) of this step's LoRA, saved by the main process to served_adapter/step-N/ (the step
        before's folder removed) and named by its content, so a resumed step asks the server for what it had."""
        root = Path(self.cfg.run.output_dir) / SERVED_DIR
        folder = root / f"step-{self.state.global_step}"
        if is_main():
            self.policy.save_pretrained(folder)
            for old in root.glob("step-*"):
                if old != folder:
                    shutil.rmtree(old)
        barrier()
        digest = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
        return f"ppo-{digest}", folder.resolve()

    def forward_in_chunks(self, batch: dict, width: int) -> tuple[torch.Tensor, ...]:
        """(log-probs, response mask, reference log-probs, values) [B, width] of a rollout batch, optim.batch_size
        rows at a time: a 512-row rollout of a 7B model does not fit one forward."""
        parts = []
        for rows in torch.arange(len(batch["input_ids"]), device=self.device).split(self.cfg.optim.batch_size):
            chunk = {k: v[rows] for k, v in batch.items()}
            logps, mask = response_logps(self.policy, chunk, width)
            with self.policy.disable_adapter():
                ref_logps = response_logps(self.policy, chunk, width)[0]
            parts.append((logps, mask, ref_logps, token_values(self.value, chunk, width)))
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))

    def update(self, batch: dict) -> dict:
        """ppo_epochs passes over one rollout batch in minibatches of optim.batch_size × optim.grad_accum rows (one
        optimiser step each; its loss the mean of its micro-batches'); the means of the losses and clip shares."""
        cfg, n = self.cfg, len(batch["input_ids"])
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        minibatch, logs = cfg.optim.batch_size * cfg.optim.grad_accum, []
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed(1, epoch)))
            for rows in order.split(minibatch):
                self.optimizer.zero_grad(set_to_none=True)
                for micro in rows.split(cfg.optim.batch_size):
                    terms = self.losses({k: v[micro.to(self.device)] for k, v in batch.items()})
                    (terms[0] / cfg.optim.grad_accum).backward()
                    logs.append([float(t.detach()) for t in terms])
                average_gradients(params)
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                self.optimizer.step()
        self.scheduler.step()
        keys = ("loss", "policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl")
        return dict(zip(keys, np.mean(logs, axis=0).tolist(), strict=True))

    def losses(self, mb: dict) -> tuple[torch.Tensor, ...]:
        """(loss, policy loss, value loss, clip share, value clip share, approx. KL to the rollout policy)."""
        cfg, width = self.cfg, mb["old_logps"].shape[1]
        logps = response_logps(self.policy, mb, width)[0]
        values = token_values(self.value, mb, width)
        pg, clipped = policy_loss(logps, mb["old_logps"], mb["advantages"], mb["mask"], cfg.clip_range)
        vf, vclipped = value_loss(values, mb["old_values"], mb["returns"], mb["mask"], cfg.value_clip)
        approx_kl = masked_mean(mb["old_logps"] - logps.detach(), mb["mask"])
        return pg + cfg.vf_coef * vf, pg, vf, clipped, vclipped, approx_kl

    def save(self, callback: HallucinationEvalCallback | None) -> Path:
        """checkpoint-N/ written under a temporary name and renamed, so a kill leaves a whole checkpoint or none;
        then the eval callback on it and the rotation of old ones (run.save_total_limit)."""
        out, step = Path(self.cfg.run.output_dir), self.state.global_step
        final, tmp = out / f"checkpoint-{step}", out / f"tmp-checkpoint-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(trainable_weights(self.policy), tmp / POLICY_FILE)
        save_file(trainable_weights(self.value), tmp / VALUE_FILE)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   tmp / OPTIMIZER_FILE)  # fmt: skip
        self.state.save_to_json(str(tmp / STATE_FILE))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        if callback is not None:
            args = types.SimpleNamespace(output_dir=str(out))
            callback.on_save(args, self.state, None, model=self.policy, processing_class=self.processor)
        limit = self.cfg.run.save_total_limit
        for old in checkpoints(out)[: -limit if limit else 0]:
            shutil.rmtree(old)
        return final

    def resume(self, checkpoint: Path) -> None:
        load_trainable(self.policy, checkpoint / POLICY_FILE)
        load_trainable(self.value, checkpoint / VALUE_FILE)
        saved = torch.load(checkpoint / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainerState.load_from_json(str(checkpoint / STATE_FILE))


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, file: Path) -> None:
    weights = load_file(file)
    missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(weights)
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    if missing or unexpected:
        raise ValueError(f"{file}: not this run's model (missing {sorted(missing)[:3]}, unexpected {unexpected[:3]})")


def train(run: PPORun) -> None:
    """Steps from the run's state to optim.max_steps, logging every run.logging_steps and saving every save_steps."""
    cfg = run.cfg
    callback = HallucinationEvalCallback(cfg.eval, cfg.data) if cfg.eval.at_checkpoints else None
    every, mark = max(cfg.run.logging_steps, 1), time.time()
    while run.state.global_step < cfg.optim.max_steps:
        lr = run.scheduler.get_last_lr()[0]
        batch, stats = run.rollout()
        stats = {**mean_over_processes({**stats, **run.update(batch)}), "learning_rate": lr}
        run.state.global_step += 1
        step = run.state.global_step
        run.state.log_history.append({**{k: round(v, 6) for k, v in stats.items()}, "step": step})
        if step % every == 0 or step == cfg.optim.max_steps:
            rate = f"{(time.time() - mark) / every:.1f} s/step"
            mark = time.time()
            oracle = f"  CHAIR_i {stats['oracle/chair_i']:.1f}  recall {stats['oracle/recall']:.1f}" if (
                "oracle/chair_i" in stats) else ""  # fmt: skip
            print(f"[ppo] step {step}/{cfg.optim.max_steps}  score {stats['reward/score']:.3f}{oracle}  "
                  f"kl {stats['kl']:.3f}  loss {stats['loss']:.3f}  {rate}", flush=True)  # fmt: skip
        if step % cfg.run.save_steps == 0 or step == cfg.optim.max_steps:
            if is_main():  # the run directory is the main process's; the others hold the same weights
                run.save(callback)
            barrier()
    if callback is not None and is_main():
        callback.on_train_end(types.SimpleNamespace(output_dir=cfg.run.output_dir), run.state, None)


def main(cfg: PPORecipeConfig) -> dict:
    out, t0 = Path(cfg.run.output_dir), time.time()
    finished = begin_run(cfg, tag="ppo")
    if finished is not None:
        return finished
    with console.session(out / TRAIN_LOG, libraries=True, title="train ppo"):
        run = PPORun(cfg)
        last = last_checkpoint(out)
        if last:
            print(f"[ppo] resuming from {last}")
            run.resume(last)
        train(run)
        final = out / "final"
        if is_main():
            policy = run.policy.merge_and_unload() if isinstance(run.policy, PeftModel) else run.policy
            save_policy(policy, run.processor, final)
            save_run_config(to_dict(cfg), final / CONFIG_FILE)
        barrier()
    history = run.state.log_history
    steps = [e for e in history if "reward/score" in e]
    summary = {
        "final": str(final),
        "start": cfg.model.name_or_path,
        "reward": cfg.reward,
        "reward_model_path": cfg.reward_model_path,
        "rollouts": cfg.optim.max_steps * cfg.rollout_batch_size,
        "first_last": {k: [steps[0][k], steps[-1][k]] for k in FIRST_LAST if k in steps[0]},
        "log_history": history,
        "seconds": round(time.time() - t0, 1),
    }
    if cfg.run.eval_at_end:
        summary["eval"] = evaluate_checkpoint(final, cfg.eval, data_cfg=cfg.data)
    return write_summary(cfg.run, summary)
