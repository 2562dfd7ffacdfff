"""Trainer behaviour every method shares, as small mixins over `transformers.Trainer` (TRL's trainers subclass it,
so `class MyGRPO(StepMetricsMixin, ProjectorLRMixin, trl.GRPOTrainer)` takes them too), and the run plumbing:

    LlavaResumeMixin   resume that really restores a LLaVA full fine-tune (see its docstring)
    ProjectorLRMixin   the multimodal projector in its own optimizer group (LLaVA's mm_projector_lr)
    StepMetricsMixin   loss terms and rewards computed in `compute_loss`, logged with the step's loss
    ReferenceMixin     the DPO family's reference: a frozen copy (full fine-tune) or the adapter-free policy (LoRA)
    ConsoleMixin       compact metric lines on the console, the full log in output_dir/train.log
    AlignTrainer       all five on `Trainer`: what the recipes use

`begin_run` / `start_run` decide whether a run trains fresh, resumes or is already finished (align/core/run_dir.py);
`training_arguments` maps the run and optimiser sections onto `TrainingArguments`; `train_and_save` trains (resuming
from the last checkpoint; its `train_loss` covers every step of the run, `whole_run_loss`), merges a LoRA policy
into its base and saves `final/` with its config; `write_summary` then marks the run finished.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import Trainer, TrainerState, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput
from transformers.utils import SAFE_WEIGHTS_NAME

from align.config.loading import to_dict
from align.config.sections import OptimConfig, RunConfig
from align.core import console
from align.core.console import TRAIN_LOG
from align.core.console_callback import use_console_callback
from align.core.distributed import barrier, is_main, mean_over_processes, timeout_s
from align.core.logprobs import response_logps
from align.core.models import DTYPES, load_policy, multimodal_projector, save_policy
from align.core.run_dir import (
    ADAPTER_DIR,
    CONFIG_FILE,
    FINISHED,
    SUMMARY_FILE,
    clear_run,
    last_checkpoint,
    run_state,
    save_run_config,
)


class LlavaResumeMixin:
    """transformers 5.x saves LLaVA weights under its legacy key names (`language_model.model.*`) and maps them back
    only inside `from_pretrained`; `Trainer._load_from_checkpoint` loads the raw state dict instead, so on resume every
    key misses and training silently restarts from the initial weights. Load through `from_pretrained` for single-file
    full checkpoints; adapters and sharded/FSDP checkpoints keep the default."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        single_file = os.path.isfile(os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME))
        if isinstance(model, PeftModel) or not single_file or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)


class ProjectorLRMixin:
    """`projector_lr` moves the multimodal projector's parameters into their own optimizer group with that learning
    rate; the schedule scales it like the others. None keeps one learning rate."""

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


class StepMetricsMixin:
    """Values from `compute_loss` (loss terms, rewards) added to the next `log` call, once, on the steps Trainer
    logs; the other steps compute none of them."""

    def logs_this_step(self, model) -> bool:
        """Trainer logs once a step makes `global_step` a multiple of `logging_steps`; `global_step` counts finished
        steps, so the step in progress is number global_step + 1."""
        return model.training and (self.state.global_step + 1) % max(self.args.logging_steps, 1) == 0

    def stash_step_logs(self, logs: dict) -> None:
        """Add one microbatch's values; the step logs their mean over its microbatches and processes, so batch b on
        2 processes logs what batch b with 2 accumulation steps logs on one."""
        sums = self.__dict__.setdefault("_step_logs", {})
        for key, value in logs.items():
            total, n = sums.get(key, (0.0, 0))
            sums[key] = (total + float(value), n + 1)

    def log(self, logs, *args, **kwargs):
        stashed = self.__dict__.pop("_step_logs", {})  # once: not into the end-of-training metrics too
        if stashed:  # every process stashed on this step (compute_loss ran everywhere), so all reach this reduce
            logs.update(mean_over_processes({k: stashed[k][0] / stashed[k][1] for k in sorted(stashed)}))
        super().log(logs, *args, **kwargs)


class ReferenceMixin:
    """`ref_model`: a frozen copy of the start policy (full fine-tune), moved to the training device; None: the
    policy is a PeftModel and its reference is the same model with the adapters disabled."""

    def __init__(self, *args, ref_model: torch.nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ref_model = None if ref_model is None else ref_model.to(self.args.device).eval().requires_grad_(False)

    @torch.no_grad()
    def reference_logps(self, model, inputs: dict, width: int | None = None) -> torch.Tensor:
        if self.ref_model is not None:
            return response_logps(self.ref_model, inputs, width)[0]
        with self.accelerator.unwrap_model(model).disable_adapter():  # the forward still goes through the wrapper
            return response_logps(model, inputs, width)[0]


class ConsoleMixin:
    """The console of align/core/console_callback.py (compact metric lines, one bar on a terminal) instead of
    Trainer's bar and dicts, and the whole of `train` logged to `output_dir/train.log` (on the main process).
    `log_tag` (train_and_save sets it) names the run in its lines."""

    log_tag: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.console_callback = use_console_callback(self)

    def train(self, *args, **kwargs):
        if self.console_callback is not None and self.log_tag:
            self.console_callback.tag = self.log_tag
        log_file = Path(self.args.output_dir) / TRAIN_LOG if self.args.process_index == 0 else None
        with console.session(log_file, libraries=True, title=f"train {self.log_tag or ''}"):
            return super().train(*args, **kwargs)


class AlignTrainer(LlavaResumeMixin, ProjectorLRMixin, StepMetricsMixin, ReferenceMixin, ConsoleMixin, Trainer):
    """`Trainer` with the mixins above; recipes subclass it only to define `compute_loss`."""


def begin_run(cfg, tag: str = "train") -> dict | None:
    """The start of every training recipe (`start_run` with the whole config). Returns the stored summary when the
    run is already finished, else None."""
    return start_run(cfg.run, to_dict(cfg), tag)


def start_run(run: RunConfig, config: dict, tag: str = "train") -> dict | None:
    """Decide from `run.output_dir` and `run.existing` what this run does (align/core/run_dir.py): finished, return
    the stored summary (train_summary.json) and touch nothing; otherwise (after `--overwrite` deleted the old run)
    write the config that makes the run, set the global seed (LoRA init and data order draw from it), return None.
    A changed config in `auto` mode raises ConfigError naming the keys."""
    out = Path(run.output_dir)
    state = run_state(out, config, run.existing)  # every process decides alike, before any of them changes `out`
    barrier()
    if state.state == FINISHED:
        print(f"[{tag}] already finished: {out / 'final'} (pass --overwrite to train again)")
        return json.loads((out / SUMMARY_FILE).read_text())
    if is_main():  # the run directory is the main process's (align/core/distributed.py)
        if run.existing == "overwrite" and (removed := clear_run(out)):
            print(f"[{tag}] --overwrite: removed {', '.join(removed)} from {out}")
        if state.changes:
            print(f"[{tag}] --resume under a changed config: {'; '.join(state.changes)}")
        out.mkdir(parents=True, exist_ok=True)
        save_run_config(config, out / CONFIG_FILE)
    barrier()
    set_seed(run.seed)
    return None


def training_arguments(
    run: RunConfig, optim: OptimConfig, dtype: str = "float32", args_cls: type = TrainingArguments, **overrides
) -> TrainingArguments:
    """The run's TrainingArguments (or `args_cls`, a subclass such as TRL's GRPOConfig, with its own fields in
    `overrides`)."""
    kwargs = dict(
        output_dir=run.output_dir,
        max_steps=optim.max_steps,
        per_device_train_batch_size=optim.batch_size,
        gradient_accumulation_steps=optim.grad_accum,
        learning_rate=optim.lr,
        weight_decay=optim.weight_decay,
        warmup_steps=optim.warmup_steps,
        lr_scheduler_type=optim.scheduler,
        max_grad_norm=optim.max_grad_norm,
        logging_steps=run.logging_steps,
        save_steps=run.save_steps,
        save_total_limit=run.save_total_limit,
        report_to=run.report_to.split(","),  # "none" or "tensorboard,wandb" (normalized by RunConfig)
        seed=run.seed,
        data_seed=run.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_timeout=timeout_s(),  # the others wait while the main process evaluates (align/core/distributed.py)
        bf16=dtype == "bfloat16",
        disable_tqdm=not console.verbose(),  # ConsoleMixin's lines instead (Trainer's bar under --verbose)
    )
    return args_cls(**{**kwargs, **overrides})


def train_and_save(
    trainer: Trainer,
    run: RunConfig,
    processor,
    cfg=None,
    tag: str = "train",
    merge: bool = True,
    save=None,
    keep_adapter: bool = False,
):
    """Train (from the last checkpoint in the run directory, if any: `start_run` has cleared it unless the run is
    to be resumed), then save the policy to `output_dir/final` with `cfg` (a config dataclass or dict) beside it: a
    LoRA model merged into its base (`merge`; with `keep_adapter` its adapter is also kept in `output_dir/adapter`),
    or as its adapter alone, or by `save(final_dir)` when given (a recipe that saves only what it trained).
    Returns (TrainOutput, final)."""
    last = last_checkpoint(run.output_dir)
    trainer.log_tag = tag  # the run's name in its console lines (ConsoleMixin)
    if last:
        print(f"[{tag}] resuming from {last}")
    state = last / TRAINER_STATE_NAME if last else None
    before = json.loads(state.read_text()) if state else None  # read now: rotation may delete it
    if before and before["global_step"] >= trainer.args.max_steps:
        result = restore_last_step(trainer, last, before)
    else:
        result = whole_run_loss(trainer.train(resume_from_checkpoint=str(last) if last else None), before)
    final = Path(run.output_dir) / "final"
    if save is not None:
        save(final)  # Trainer.save_model: the main process writes
    elif trainer.args.world_size > 1 or trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        save_gathered(trainer, processor, final, merge, keep_adapter)
    else:
        if keep_adapter and merge and isinstance(trainer.model, PeftModel):
            trainer.model.save_pretrained(final.with_name(ADAPTER_DIR))
        model = trainer.model.merge_and_unload() if merge and isinstance(trainer.model, PeftModel) else trainer.model
        save_policy(model, processor, final)
    if cfg is not None and is_main():
        save_run_config(cfg if isinstance(cfg, dict) else to_dict(cfg), final / CONFIG_FILE)
    barrier()
    return result, final


def save_gathered(trainer: Trainer, processor, final: Path, merge: bool, keep_adapter: bool = False) -> None:
    """`final/` of a model spread over processes (DDP, and ZeRO-3 or FSDP, which shard its weights): Trainer's
    `save_model` gathers the weights (or the adapter) onto the main process and writes them; a LoRA to merge is then
    merged there from the saved adapter, read back over its base, rather than in the sharded model in memory (and
    the adapter is kept as `adapter/` beside `final/` when `keep_adapter`)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not (merge and isinstance(model, PeftModel)):
        trainer.save_model(str(final))
        if is_main():
            processor.save_pretrained(final)
        return
    adapter = final.with_name(final.name + ".adapter")
    trainer.save_model(str(adapter))
    barrier()
    if is_main():
        dtype = next(n for n, d in DTYPES.items() if d == next(model.parameters()).dtype)
        with torch.random.fork_rng(devices=[]):  # loading draws initial weights: the main process's draws that follow
            merged, _ = load_policy(adapter, device="cpu", dtype=dtype)  # (a next stage's LoRA) stay a 1-process run's
        save_policy(merged, processor, final)
        if keep_adapter:
            shutil.rmtree(final.with_name(ADAPTER_DIR), ignore_errors=True)
            adapter.rename(final.with_name(ADAPTER_DIR))
        else:
            shutil.rmtree(adapter)


def restore_last_step(trainer: Trainer, last: Path, state: dict) -> TrainOutput:
    """A run whose last checkpoint already reached max_steps (stopped after it, before its summary; or resumed under
    a config with no more steps): load that checkpoint's weights and trainer state, train nothing (Trainer would
    train one step past max_steps). `train_loss` is the mean of the losses logged up to it."""
    trainer._load_from_checkpoint(str(last))
    trainer.state = TrainerState.load_from_json(str(last / TRAINER_STATE_NAME))
    total, logged = logged_loss(state)
    loss = total / logged if logged else None
    return TrainOutput(state["global_step"], loss, {"train_loss": loss, "restored_from": str(last)})


def whole_run_loss(result: TrainOutput, resumed_state: dict | None) -> TrainOutput:
    """`result` with `train_loss` the mean loss of every step of the run. Trainer averages only the steps of the
    call that resumed; the steps before the checkpoint (its trainer state: `resumed_state`) come from the losses
    logged before it (each the mean over its logging interval), so a resumed run reports what an uninterrupted one
    does (exactly when the checkpoint step was a logging step; steps after the last log before it have no recorded
    loss and are left out). `train_loss_resumed_steps` keeps Trainer's figure."""
    if resumed_state is None or result.metrics.get("train_loss") is None:
        return result
    done = resumed_state["global_step"]
    before, logged = logged_loss(resumed_state)
    resumed = result.global_step - done
    loss = (before + result.metrics["train_loss"] * resumed) / max(logged + resumed, 1)
    metrics = {**result.metrics, "train_loss": loss, "train_loss_resumed_steps": result.metrics["train_loss"]}
    return TrainOutput(result.global_step, loss, metrics)


def logged_loss(state: dict) -> tuple[float, int]:
    """(sum of the loss over the steps up to the state's global step that a logged loss covers, those steps)."""
    total, logged = 0.0, 0
    for entry in state["log_history"]:
        if "loss" in entry and entry["step"] <= state["global_step"]:
            total += entry["loss"] * (entry["step"] - logged)
            logged = entry["step"]
    return total, logged


def write_summary(run: RunConfig, summary: dict) -> dict:
    """train_summary.json: with final/ it marks the run finished (align/core/run_dir.py), so it is written last, by
    the main process."""
    if is_main():
        (Path(run.output_dir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary
