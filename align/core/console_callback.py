"""Training on the console: `ConsoleCallback` takes the place of transformers' ProgressCallback / PrinterCallback
(a tqdm bar with a metric dict printed through it every `logging_steps`).

    [sft] step 300/1500  loss 1.234  lr 5.9e-04  12.3 it/s
    [sft] done: 1500 steps in 95s (15.8 it/s), mean loss 1.301

About LINES_PER_RUN metric lines a run, on multiples of `logging_steps`, and a last line with the run's mean loss;
on a terminal one bar counts the steps (none in a log file: data_builders.progress). Every metric dict Trainer
logs goes to the open log files (align.core.console: the run's train.log). With `--verbose` / ALIGN_VERBOSE=1
Trainer's own callbacks stay and this one prints nothing (the dicts reach the log files through the console).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from align.core.console import log_only, verbose
from data_builders.progress import bar

LINES_PER_RUN = 5
EXTRA_METRICS = (("rewards/accuracy", "acc", ".2f"), ("reward", "reward", ".3f"))  # (logged key, label, format)


def compact_every(logging_steps: int, max_steps: int, lines: int = LINES_PER_RUN) -> int:
    """The multiple of `logging_steps` that gives about `lines` metric lines over `max_steps`."""
    per = max(logging_steps, 1)
    return per * max(1, math.ceil(max_steps / (per * lines)))


def metric_line(tag: str, step: int, max_steps: int, logs: dict, rate: float | None = None) -> str:
    parts = [f"[{tag}] step {step}/{max_steps}"]
    if "loss" in logs:
        parts.append(f"loss {float(logs['loss']):.3f}")
    if "learning_rate" in logs:
        parts.append(f"lr {float(logs['learning_rate']):.1e}")
    parts += [f"{label} {float(logs[key]):{fmt}}" for key, label, fmt in EXTRA_METRICS if key in logs]
    if rate:
        parts.append(speed(rate))
    return "  ".join(parts)


def speed(rate: float) -> str:
    """Steps per second, or seconds per step when a step takes longer than one (the Triton interpreter: 30 s)."""
    return f"{rate:.1f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it" if rate > 0 else "- it/s"


class ConsoleCallback(TrainerCallback):
    """The compact lines above on the main process; `tag` names the run (default: the output directory's name)."""

    def __init__(self, tag: str | None = None):
        self.tag, self.bar, self.mark, self.first = tag, None, (0, 0.0), 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.tag = self.tag or Path(args.output_dir).name
        self.every = compact_every(args.logging_steps, state.max_steps)
        self.first, self.mark = state.global_step, (state.global_step, time.time())
        if state.is_world_process_zero and not verbose():
            self.bar = bar(total=state.max_steps, initial=state.global_step, desc=self.tag, unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if not state.is_world_process_zero or verbose():
            return
        log_only(f"[{self.tag}] step {state.global_step} {json.dumps(logs, default=str)}")
        step, now = state.global_step, time.time()
        if "train_runtime" in logs:
            ran, runtime = step - self.first, float(logs["train_runtime"])
            loss = f", mean loss {float(logs['train_loss']):.3f}" if logs.get("train_loss") is not None else ""
            took = f"{runtime:.1f}s" if runtime < 10 else f"{runtime:.0f}s"
            self.emit(f"[{self.tag}] done: {ran} steps in {took} ({speed(ran / max(runtime, 1e-9))}){loss}")
        elif "loss" in logs and (step % self.every == 0 or step == state.max_steps):
            rate = (step - self.mark[0]) / max(now - self.mark[1], 1e-9)
            self.mark = (step, now)
            self.emit(metric_line(self.tag, step, state.max_steps, logs, rate))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def emit(self, line: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line)
        else:
            print(line, flush=True)


def use_console_callback(trainer, tag: str | None = None) -> ConsoleCallback | None:
    """Swap Trainer's progress/printer callbacks for a ConsoleCallback (not under --verbose, where they stay;
    the log files then get Trainer's dicts from the console). Returns the callback (None under --verbose)."""
    if verbose():
        return None
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    callback = ConsoleCallback(tag)
    trainer.add_callback(callback)
    return callback
