"""Trainer pieces every recipe shares."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from peft import PeftModel
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import SAFE_WEIGHTS_NAME

from align.config import save_config
from align.models import multimodal_projector, save_policy

if TYPE_CHECKING:
    from align.eval.callback import HallucinationEvalCallback


class ResumableTrainer(Trainer):
    """`Trainer` whose resume works for LLaVA full fine-tunes, with an optional projector learning rate.

    transformers 5.x saves LLaVA weights under its legacy key names (`language_model.model.*`) and maps them
    back only inside `from_pretrained`; `Trainer._load_from_checkpoint` loads the raw state dict instead, so on
    resume every key misses and training silently restarts from the initial weights. Load through
    `from_pretrained` for single-file full checkpoints; adapters and sharded/FSDP checkpoints keep the default.

    `projector_lr` (LLaVA's `mm_projector_lr`) moves the multimodal projector's parameters into their own
    optimizer group with that learning rate; the schedule scales it like the others.
    """

    def __init__(self, *args, projector_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.projector_lr = projector_lr

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.projector_lr is None or any(g.get("name") == "projector" for g in optimizer.param_groups):
            return optimizer
        projector = {id(p) for p in multimodal_projector(self.model).parameters()}
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in projector]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in projector]
                settings = {k: v for k, v in group.items() if k != "params"}
                optimizer.add_param_group({**settings, "params": moved, "lr": self.projector_lr, "name": "projector"})
        return optimizer

    def logs_this_step(self, model) -> bool:
        """Whether the step in progress is one Trainer logs after: it logs once the step makes `global_step` a
        multiple of `logging_steps`, and `global_step` counts finished steps."""
        return model.training and (self.state.global_step + 1) % max(self.args.logging_steps, 1) == 0

    def stash_step_logs(self, logs: dict) -> None:
        """Values from `compute_loss` (loss terms, rewards) to add to the next `log` call, once."""
        self._step_logs = logs

    def log(self, logs, *args, **kwargs):
        logs.update(self.__dict__.pop("_step_logs", {}))  # once: not into the end-of-training metrics too
        super().log(logs, *args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        single_file = os.path.isfile(os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME))
        if isinstance(model, PeftModel) or not single_file or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)


def attach_checkpoint_eval(trainer: Trainer, cfg) -> HallucinationEvalCallback | None:
    """Evaluate every checkpoint as it is saved when `cfg.eval.at_checkpoints` (the one place recipes wire it).
    Returns the callback, or None when off; attaching twice is a no-op."""
    from align.eval.callback import HallucinationEvalCallback

    attached = [c for c in trainer.callback_handler.callbacks if isinstance(c, HallucinationEvalCallback)]
    if not cfg.eval.at_checkpoints or attached:
        return attached[0] if attached else None
    callback = HallucinationEvalCallback(cfg.eval, cfg.data, trainer=trainer)
    trainer.add_callback(callback)
    return callback


def train_merge_and_save(trainer: Trainer, cfg, processor, start: str, t0: float, **counts) -> dict:
    """The end of a LoRA preference recipe: train (from the last checkpoint when `cfg.resume`; each checkpoint
    evaluated when `cfg.eval.at_checkpoints`), merge the adapter into `output_dir/final`, evaluate it when
    `cfg.eval_at_end`, and write `train_summary.json`."""
    out = Path(cfg.output_dir)
    attach_checkpoint_eval(trainer, cfg)
    last = get_last_checkpoint(str(out)) if cfg.resume else None
    result = trainer.train(resume_from_checkpoint=last)
    final = save_policy(trainer.model.merge_and_unload(), processor, out / "final")
    save_config(cfg, final / "align_config.yaml")
    summary = {
        "final": str(final),
        "start": start,
        "train": result.metrics,
        **counts,
        "log_history": trainer.state.log_history,
        "seconds": round(time.time() - t0, 1),
    }
    if cfg.eval_at_end:
        from align.eval.runner import evaluate_checkpoint

        summary["eval"] = evaluate_checkpoint(final, cfg.eval, data_cfg=cfg.data)
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
