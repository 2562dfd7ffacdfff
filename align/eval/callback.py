"""Hallucination evals at checkpoints: score each checkpoint as the Trainer saves it, without disturbing training.

`HallucinationEvalCallback.on_save` runs `EvalConfig.benchmarks` (with `checkpoint_limit` test images) on the model
being trained, logs the numbers through the trainer (`trainer.log`: log_history and every logging callback:
TensorBoard, W&B, the progress bar), and writes `<output_dir>/eval/step-N.json`. At the end of training it plots
the run's curves to `eval/training_metrics.png`.

Why the live model and not a reload of the saved checkpoint: at `on_save` the live weights *are* the checkpoint's,
for a LoRA PeftModel (adapters active, as the merged model will be) and a full fine-tune alike, so reloading would
only double the memory and resolve the adapter's base model again. Training must not notice the detour:
  * every module's train/eval flag is put back as it was (dropout off while generating, on again after);
  * generation runs under `torch.no_grad` (not `inference_mode`: its tensors could be cached by the model and then
    fail in backward); gradient checkpointing only acts in train mode, so it is untouched;
  * the Python, NumPy and torch (CPU and CUDA) RNG states are restored, so sampling while evaluating does not change
    the dropout masks or data order that follow: a run with the callback ends with the same weights as one without.
Only the main process evaluates; the others wait at the next step's collective (fine for DDP). Sharded training
(FSDP, DeepSpeed) is refused: generating on one rank would hang on the gathered parameters.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from align.config.sections import DataConfig, EvalConfig, check_benchmarks
from align.core.run_dir import weights_fingerprint
from align.eval.plots import collect_step_evals, plot_metrics
from align.eval.runner import eval_settings, evaluate_checkpoint

TRAINER_STATE = "trainer_state.json"


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without a trace on the global RNGs that training draws from."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for a block; afterwards each module's own train flag comes back (a frozen tower
    a recipe keeps in eval mode stays so)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def flat_metrics(results: dict) -> dict[str, float]:
    """`{benchmark: {metric: v}}` as flat log keys `eval_<benchmark>/<metric>` (W&B files `eval_*` under eval/)."""
    return {
        f"eval_{bench}/{metric}": float(value)
        for bench, scores in results.items()
        if bench != "meta"
        for metric, value in scores.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class HallucinationEvalCallback(TrainerCallback):
    """Evaluate every checkpoint at save time; see the module docstring for why it is safe for training.

    `trainer`: when given (as `attach_checkpoint_eval` does) the metrics go through
    `trainer.log`, reaching every logging callback; without it they are only appended to `state.log_history`.
    """

    def __init__(self, eval_cfg: EvalConfig, data_cfg: DataConfig, trainer=None):
        check_benchmarks(eval_cfg.benchmarks, eval_cfg.sources, eval_cfg.judge)
        self.eval_cfg = dataclasses.replace(eval_cfg, limit=eval_cfg.checkpoint_limit or eval_cfg.limit)
        self.data_cfg = data_cfg
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
            raise ValueError("eval.at_checkpoints: not supported with FSDP/DeepSpeed sharding; evaluate afterwards")

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return control
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        with preserved_rng(), eval_mode(model):
            # force: every save is new weights (a re-saved dir also changes the weights fingerprint the cache keys
            # on; forcing spares relying on mtime resolution between a save and the next)
            results = evaluate_checkpoint(
                checkpoint, self.eval_cfg, model=model, processor=processing_class, force=True, data_cfg=self.data_cfg
            )
        self.write_step(Path(args.output_dir), state.global_step, checkpoint, results)
        self.log(args, state, control, flat_metrics(results), checkpoint)
        return control

    def write_step(self, output_dir: Path, step: int, checkpoint: Path, results: dict) -> Path:
        """`eval/step-N.json` outlives the checkpoint, which `save_total_limit` may delete later."""
        out = output_dir / "eval" / f"step-{step}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "step": step,
            "checkpoint": str(checkpoint),
            "generation": dataclasses.asdict(self.eval_cfg.generation),
            "eval_settings": eval_settings(self.eval_cfg),
            "weights": weights_fingerprint(checkpoint),  # the checkpoint's files these numbers scored
            "results": results,
        }
        out.write_text(json.dumps(record, indent=2))
        return out

    def log(self, args, state, control, logs: dict[str, float], checkpoint: Path) -> None:
        """The trainer's own `log` when bound; the checkpoint's trainer_state.json (written just before on_save) is
        rewritten so that a run resumed from it keeps these entries in its log history."""
        if self.trainer is not None:
            self.trainer.log(dict(logs))
        else:
            epoch = {} if state.epoch is None else {"epoch": state.epoch}
            state.log_history.append({**logs, **epoch, "step": state.global_step})
        if (checkpoint / TRAINER_STATE).is_file():
            state.save_to_json(str(checkpoint / TRAINER_STATE))

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        results = collect_step_evals(args.output_dir)
        if len(results) >= 2:
            plot_metrics(results, Path(args.output_dir) / "eval" / "training_metrics.png")


def attach_checkpoint_eval(trainer, cfg) -> HallucinationEvalCallback | None:
    """Evaluate every checkpoint as it is saved when `cfg.eval.at_checkpoints` (the one place recipes wire it).
    Returns the callback, or None when off; attaching twice is a no-op."""
    attached = [c for c in trainer.callback_handler.callbacks if isinstance(c, HallucinationEvalCallback)]
    if not cfg.eval.at_checkpoints or attached:
        return attached[0] if attached else None
    callback = HallucinationEvalCallback(cfg.eval, cfg.data, trainer=trainer)
    trainer.add_callback(callback)
    return callback
