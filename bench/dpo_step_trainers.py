"""The trainers bench/dpo_step.py times, one builder per variant, and the shapes it times them on (a module of its
own so that the bench reads top to bottom)."""

from __future__ import annotations

import time
from pathlib import Path

PROMPT = "describe the image in detail."

# name: (TinyModelSpec fields, pairs per batch, answer words (min, max), pairs in the dataset, warm-up, max_length)
SHAPES = {
    "toy": ({}, 8, (28, 42), 96, 3, 160),
    "large": (
        dict(image_size=48, patch_size=2, text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=4,
             text_mlp=1536, max_positions=2048, vocab=32064),
        1, (990, 1000), 8, 1, 1700,
    ),
    "1b": (
        dict(image_size=48, patch_size=2, vision_hidden=256, vision_layers=2, text_hidden=2048, text_layers=22,
             text_heads=32, text_kv_heads=4, text_mlp=5632, max_positions=2048, vocab=32064),
        2, (990, 1000), 16, 2, 1700,
    ),
}  # fmt: skip


def model_config(policy: str):
    from align.config.sections import ModelConfig

    # LoRA on the language model, as TRL's peft_config gets the same LoraConfig (align/core/models.py lora_config)
    return ModelConfig(name_or_path=policy, finetune="lora", lora_r=16, lora_alpha=32, lora_dropout=0.0)


# ---------------------------------------------------------------- the trainers


def trl_trainer(paths: dict, shape: str, steps: int, out: Path, callback):
    from datasets import Dataset, load_from_disk
    from trl import DPOConfig, DPOTrainer

    from align.core.data import to_pil
    from align.core.models import load_policy, lora_config

    _, batch, _, _, _, _ = SHAPES[shape]
    policy, processor = load_policy(paths["policy"])
    pairs = load_from_disk(paths["pairs"]).cast_column("image", __import__("datasets").Image(decode=False))
    dataset = Dataset.from_dict({
        "images": [[to_pil(r["image"], r["id"])] for r in pairs],
        # conversational: TRL renders it with the processor's chat template (tests/.../test_trl_dpo_parity.py
        # shows its tokens and loss equal ours)
        "prompt": [[{"role": "user", "content": r["prompt"]}] for r in pairs],
        "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in pairs],
        "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in pairs],
    })  # fmt: skip
    import torch

    args = DPOConfig(
        output_dir=str(out), beta=0.1, loss_type=["sigmoid"], learning_rate=1e-5, lr_scheduler_type="constant",
        per_device_train_batch_size=batch, max_steps=steps, logging_steps=steps, save_strategy="no",
        report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False, gradient_checkpointing=False,
        max_length=None, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    peft = lora_config(model_config(paths["policy"]))
    return DPOTrainer(model=policy, args=args, train_dataset=dataset, processing_class=processor,
                      peft_config=peft, callbacks=[callback])  # fmt: skip


def our_dpo_trainer(paths: dict, shape: str, steps: int, out: Path, callback, loss: str, cached: bool):
    from align.config.recipes import DPORecipeConfig
    from align.config.sections import DataConfig, OptimConfig, RunConfig
    from align.core.preference import build_dpo_trainer

    _, batch, _, _, _, max_length = SHAPES[shape]
    cfg = DPORecipeConfig(
        run=RunConfig(output_dir=str(out), logging_steps=steps, save_steps=10**9, eval_at_end=False),
        dataset=paths["pairs"],
        model=model_config(paths["policy"]),
        data=DataConfig(max_length=max_length),
        optim=OptimConfig(lr=1e-5, warmup_steps=0, scheduler="constant_with_warmup", max_steps=steps,
                          batch_size=batch),
        loss=loss,
        precompute_ref_logps=cached,
    )  # fmt: skip
    start = time.perf_counter()
    trainer, _, _ = build_dpo_trainer(cfg)
    trainer.add_callback(callback)
    return trainer, time.perf_counter() - start


def opa_trainer(paths: dict, shape: str, steps: int, out: Path, callback, per_view: bool, cached: bool = False):
    """OPA-DPO's trainer on records made from the pairs: reference = chosen, rollout = rejected, revision = the
    chosen answer's words reversed (any third answer of the same length does)."""
    from datasets import load_from_disk

    from align.config.recipes import OPADPOConfig
    from align.config.sections import DataConfig, OptimConfig, RunConfig
    from align.core import ref_cache
    from align.core.data import (
        PreferenceCollator,
        RowsDataset,
        encode_row,
        image_seq_length,
        response_offsets,
        response_weights,
        to_pil,
    )
    from align.core.models import build_model
    from align.core.trainer import training_arguments
    from align.recipes import opa_dpo

    _, batch, _, _, _, max_length = SHAPES[shape]
    cfg = OPADPOConfig(
        run=RunConfig(output_dir=str(out), logging_steps=steps, save_steps=10**9, eval_at_end=False),
        dataset=paths["pairs"], model=model_config(paths["policy"]), data=DataConfig(max_length=max_length),
        optim=OptimConfig(lr=1e-5, warmup_steps=0, scheduler="constant_with_warmup", max_steps=steps,
                          batch_size=batch),
    )  # fmt: skip
    model, processor = build_model(cfg.model, seed=0)
    n_img, records = image_seq_length(model.config), []
    for r in load_from_disk(paths["pairs"]):
        image, record = to_pil(r["image"], r["id"]), {"id": r["id"]}
        texts = {"reference": r["chosen"], "rollout": r["rejected"], "revision": " ".join(r["chosen"].split()[::-1])}
        for name, text in texts.items():
            enc = encode_row(processor, {"id": r["id"], "image": image, "prompt": r["prompt"], "response": text},
                             max_length, n_img, {})  # fmt: skip
            n = sum(label != -100 for label in enc["labels"])
            weights = response_weights(response_offsets(processor.tokenizer, text), [], n)
            record[name] = {"input_ids": enc["input_ids"], "labels": enc["labels"], "weights": weights}
        records.append({**record, "image": image, "revision_error_weights": record["revision"]["weights"]})
    if per_view:
        one_view_per_forward(len(opa_dpo.VIEWS))
    patch = model.config.vision_config.patch_size
    trainer = opa_dpo.OPADPOTrainer(
        model=model, args=training_arguments(cfg.run, cfg.optim), train_dataset=RowsDataset(records),
        data_collator=PreferenceCollator(processor, opa_dpo.VIEWS, cfg.mask, cfg.mask_ratio, 0, patch),
        processing_class=processor, opa_cfg=cfg, views=opa_dpo.VIEWS, callbacks=[callback],
    )  # fmt: skip
    if cached:  # as `precompute_ref_logps: true`: the three unmasked views from the store, timed apart
        start = time.perf_counter()
        unmasked = [v for v in opa_dpo.VIEWS if not v.endswith("_masked")]
        ref_cache.attach_reference_logps(trainer, records, processor, unmasked, load_from_disk(paths["pairs"]),
                                         paths["pairs"], cfg.model, max_length, tag="opa-dpo")  # fmt: skip
        return trainer, time.perf_counter() - start
    return trainer, 0.0


def one_view_per_forward(n_views: int) -> None:
    """The baseline of the five-views claim: each view's rows in a forward of their own (policy and reference)."""
    import torch

    import align.core.trainer as trainer_module
    import align.recipes.opa_dpo as opa_module
    from align.core.logprobs import response_logps

    def per_view(model, batch, width=None):
        n = len(batch["input_ids"]) // n_views
        keys = ("input_ids", "attention_mask", "pixel_values", "labels")
        parts = [
            response_logps(model, {k: batch[k][i * n : (i + 1) * n] for k in keys}, width) for i in range(n_views)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    opa_module.response_logps = per_view
    trainer_module.response_logps = per_view
