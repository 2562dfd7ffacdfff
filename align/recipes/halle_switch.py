"""HallE-Switch (research/methods.md §4): a switch value ε that trades object hallucination for imagination.

    align train configs/toy/halle_switch.yaml                           # the controller: W alone, ~2 minutes
    align train configs/toy/halle_switch.yaml variant=control_tokens lora=true run.output_dir=runs/halle_tokens
    align train configs/toy/halle_switch.yaml variant=indication lora=true run.output_dir=runs/halle_indication
    align eval runs/halle_switch/final --switch -0.5                    # any ε in [-1, 1]

1. Data (data_builders/halle.py): each caption labelled ε = −1 (only objects the image shows: contextual) or
   ε = +1 (objects the language prior adds: parametric). ToyWorld labels them from its ground truth; real data comes
   as HallE's own `hall_factor` JSON, or LLaVA-format captions checked against an object list per image.
2. The variant (align/core/switch.py):
   - controller: h ← h + ε·W·h on the last hidden state before the output head, W zero-initialised, ε from each
     row in training; only W is trained unless `lora`. At ε = 0 the model is exactly the base.
   - control_tokens: `<grounded>` (ε = −1 rows) or `<imagine>` (ε = +1) before the prompt; the tokens are added
     to the vocabulary and their embedding and output rows trained (with a LoRA when `lora`).
   - indication: one caption per image with its parametric objects written `[object]`, trained with a LoRA (and
     the bracket tokens where the vocabulary lacks them); CHAIR then reports hallucination with and without the
     marked objects. On real data, this variant is SFT on bracketed captions (`recipe: sft`).
3. Plain cross-entropy on the captions (transformers' Trainer: checkpoints, resume, the eval callback).
4. `final/` holds what was trained and names its base (switch_config.json + switch.safetensors, and the adapter
   when there is one); `load_policy` rebuilds the model from it. With `run.eval_at_end`, the final model is scored
   at every value of `sweep`: switch_sweep.{json,md,png} in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from peft import PeftModel, TrainableTokensConfig, get_peft_model
from transformers.trainer import TRAINING_ARGS_NAME

from align.config.switch import HalleSwitchConfig
from align.core.data import RowsDataset, VisionSFTCollator, encode_dataset, image_seq_length
from align.core.distributed import is_main
from align.core.models import build_model, lora_config
from align.core.switch import (
    ControlTokens,
    HalleSwitch,
    add_control_tokens,
    attach_switch,
    find_switch,
    load_switch_weights,
    save_switch,
    switch_value,
)
from align.core.trainer import AlignTrainer, begin_run, train_and_save, training_arguments, write_summary
from align.eval.callback import attach_checkpoint_eval
from align.eval.plots import plot_switch_sweep
from align.eval.runner import evaluate_checkpoint
from data_builders import halle
from data_builders.sft_import import skipped_line
from data_builders.toyworld_data import build_toyworld

BRACKETS = ["[", "]"]
SWEEP_METRICS = [
    ("chair_i", "CHAIR_i"),
    ("chair_i_marked", "CHAIR_i without [marked]"),
    ("chair_s", "CHAIR_s"),
    ("recall", "recall"),
    ("length", "length"),
]


def training_rows(cfg: HalleSwitchConfig) -> tuple[list[dict], dict]:
    """The ε-labelled caption rows of cfg.data, and what was read (kept, skipped by reason)."""
    d = cfg.data
    if d.source == "toyworld":
        train = build_toyworld(d.world, d.cache_dir)["train"]
        if cfg.variant == "indication":
            rows = halle.toyworld_indication_rows(train, seed=cfg.run.seed)
        else:
            rows = halle.toyworld_switch_rows(train, d.world, seed=cfg.run.seed)
        return rows, {"source": "toyworld", "images": len(train), "rows": len(rows)}
    if cfg.variant == "indication":
        raise ValueError(
            f"variant indication reads ToyWorld only; train bracketed {d.source} captions with recipe sft"
        )
    if d.source == "hall_factor":
        rows, report = halle.import_hall_factor(d.path, d.image_root, d.limit)
    else:
        rows, report = halle.switch_rows_from_annotations(d.path, d.objects, d.image_root, d.limit)
    print(f"[halle_switch] data: {d.source} {d.path}: {report['items_kept']}/{report['items_read']} items kept -> "
          f"{report['rows']} rows, {skipped_line(report)}; details in train_summary.json (data)")  # fmt: skip
    return rows, {"source": d.source, **report}


def switched_policy(cfg: HalleSwitchConfig):
    """(model, processor): the policy with everything frozen but what the variant trains."""
    model, processor = build_model(dataclasses.replace(cfg.model, finetune="full"), seed=cfg.run.seed)
    model.requires_grad_(False)
    new_tokens: list[int] = []
    if cfg.variant == "control_tokens":
        new_tokens = add_control_tokens(model, processor, ControlTokens(cfg.grounded_token, cfg.imagine_token))
    elif cfg.variant == "indication":
        new_tokens = bracket_tokens(model, processor)
    if cfg.lora or new_tokens:
        rows = {"embed_tokens": new_tokens, "lm_head": new_tokens} if new_tokens else None
        if cfg.lora:
            peft_cfg = lora_config(cfg.model)
            peft_cfg.trainable_token_indices = rows
        else:
            peft_cfg = TrainableTokensConfig(target_modules=list(rows), token_indices=new_tokens)
        model = get_peft_model(model, peft_cfg)
    if cfg.variant == "controller":
        attach_switch(model).requires_grad_(True)
    elif cfg.variant == "control_tokens":
        attach_switch(model, ControlTokens(cfg.grounded_token, cfg.imagine_token))
    return model, processor


def bracket_tokens(model, processor) -> list[int]:
    """Ids of `[` and `]`, added as new rows to train where the vocabulary cannot spell them (the toy one)."""
    tok = processor.tokenizer
    missing = [b for b in BRACKETS if tok.convert_tokens_to_ids(b) in (None, tok.unk_token_id)]
    if not missing:
        return []
    tok.add_tokens(missing)
    model.resize_token_embeddings(len(tok))
    return tok.convert_tokens_to_ids(missing)


def encoded_rows(cfg: HalleSwitchConfig, rows: list[dict], model, processor):
    """Rows tokenised as every recipe does, each keeping its ε; control tokens go before their prompts."""
    switch = find_switch(model)
    if isinstance(switch, ControlTokens):
        rows = [{**r, "prompt": switch.prompt(r["prompt"], r["epsilon"])} for r in rows]
    epsilon = {str(r["id"]): float(r.get("epsilon", 0.0)) for r in rows}
    encoded, stats = encode_dataset(rows, processor, cfg.data.max_length, image_seq_length(model.config))
    return [{**e, "epsilon": epsilon[str(e["id"])]} for e in encoded], stats


@dataclasses.dataclass
class SwitchCollator(VisionSFTCollator):
    """VisionSFTCollator's batch plus each row's ε ([B] float)."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return {**super().__call__(rows), "epsilon": torch.tensor([r["epsilon"] for r in rows])}


class SwitchTrainer(AlignTrainer):
    """Cross-entropy at each row's ε. Checkpoints hold only what is trained: W (switch.safetensors) and the adapter;
    the frozen base is named, not copied (a 7B base is 14 GB, W 64 MB)."""

    def __init__(self, *args, base_model: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.base_model = base_model

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        epsilon = inputs.pop("epsilon")
        controller = isinstance(find_switch(model), HalleSwitch)
        with switch_value(model, epsilon if controller else None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _save(self, output_dir: str | None = None, state_dict=None):
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, PeftModel):
            model.save_pretrained(out)  # the LoRA and/or the new token rows
        if find_switch(model) is not None:
            save_switch(model, out, self.base_model)
        self.processing_class.save_pretrained(out)
        torch.save(self.args, out / TRAINING_ARGS_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        if isinstance(model, PeftModel):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_switch_weights(model, resume_from_checkpoint)


def sweep(cfg: HalleSwitchConfig, final: Path, model, processor) -> list[dict]:
    """The final model scored at each switch value (indication: once); rows {switch, metrics...}."""
    values = [None] if cfg.variant == "indication" else cfg.sweep
    rows = []
    for value in values:
        results = evaluate_checkpoint(
            final, dataclasses.replace(cfg.eval, switch=value), model=model, processor=processor, force=True
        )
        chair = results.get("toyworld_chair") or results.get("chair") or {}  # ToyWorld's CHAIR, else COCO's
        rows.append({"switch": value, **{k: chair.get(k) for k, _ in SWEEP_METRICS}, "results": results})
        shown = ", ".join(f"{label} {chair[k]:.3f}" for k, label in SWEEP_METRICS if chair.get(k) is not None)
        print(f"[halle_switch] {'no switch' if value is None else f'switch {value}'}: {shown}")
    return rows


def write_sweep(out_dir: Path, variant: str, rows: list[dict]) -> None:
    (out_dir / "switch_sweep.json").write_text(json.dumps({"variant": variant, "rows": rows}, indent=2))
    lines = ["| switch | " + " | ".join(label for _, label in SWEEP_METRICS) + " |", "|---" * 6 + "|"]
    for r in rows:
        cells = [
            "-" if r[k] is None else f"{r[k]:.1f}" if k == "length" else f"{100 * r[k]:.1f}" for k, _ in SWEEP_METRICS
        ]
        lines.append(f"| {r['switch']} | " + " | ".join(cells) + " |")
    (out_dir / "switch_sweep.md").write_text("\n".join(lines) + "\n")
    if variant != "indication" and all(r[k] is not None for r in rows for k in ("chair_i", "recall", "length")):
        plot_switch_sweep({variant: rows}, out_dir / "switch_sweep.png")


def main(cfg: HalleSwitchConfig) -> dict:
    run, t0 = cfg.run, time.time()
    finished = begin_run(cfg, tag="halle_switch")
    if finished is not None:
        return finished
    rows, data_report = training_rows(cfg)
    model, processor = switched_policy(cfg)
    encoded, stats = encoded_rows(cfg, rows, model, processor)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[halle_switch] {cfg.variant}: {trainable:,} trainable parameters; {stats.summary()}")
    trainer = SwitchTrainer(
        model=model,
        args=training_arguments(run, cfg.optim, cfg.model.dtype),
        train_dataset=RowsDataset(encoded),
        data_collator=SwitchCollator(processor),
        processing_class=processor,
        base_model=cfg.model.name_or_path,
    )
    # checkpoint evals at ε = -1 unless eval.switch says otherwise: at 0 a controller is the base model at every step
    at = cfg.eval.switch if cfg.eval.switch is not None or cfg.variant == "indication" else -1.0
    attach_checkpoint_eval(trainer, dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, switch=at)))
    result, final = train_and_save(trainer, run, processor, cfg, tag="halle_switch", save=trainer.save_model)
    summary = {
        "final": str(final),
        "variant": cfg.variant,
        "trainable_parameters": trainable,
        "train": result.metrics,
        "data": data_report,
        "encode": {"rows": stats.rows, "kept": stats.kept, "truncated": stats.truncated},
        "loss_history": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "seconds": round(time.time() - t0, 1),
    }
    if run.eval_at_end and is_main():  # the eval is the main process's (the others have finished)
        rows = sweep(cfg, final, trainer.model, processor)
        write_sweep(Path(run.output_dir), cfg.variant, rows)
        summary["sweep"] = [{k: v for k, v in r.items() if k != "results"} for r in rows]
    return write_summary(run, summary)
