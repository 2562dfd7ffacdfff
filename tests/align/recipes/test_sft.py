"""SFT recipe: the loss falls, every trainable parameter moves, checkpoints resume."""

from __future__ import annotations

import json

import torch

from align.core.models import build_model, load_policy
from align.recipes.sft import main
from tests.conftest import micro_sft_config


def test_sft_loss_decreases_and_every_parameter_changes(tmp_path, cache_dir):
    cfg = micro_sft_config(tmp_path / "run", cache_dir, steps=30, eval_at_end=False)
    initial, _ = build_model(cfg.model, seed=cfg.run.seed)  # same seed → the recipe's starting weights
    summary = main(cfg)
    losses = [loss for _, loss in summary["loss_history"]]
    assert sum(losses[-3:]) / 3 < 0.75 * losses[0], losses  # the last logs' mean: one batch's loss is noisy
    trained, _ = load_policy(summary["final"], device="cpu")
    before = {n: p.detach() for n, p in initial.named_parameters()}
    after = {n: p.detach() for n, p in trained.named_parameters()}
    # SFT trains the projector and language model (the vision tower is frozen, as in LLaVA-1.5) ...
    sft_params = [n for n in before if "vision_tower" not in n]
    assert not [n for n in sft_params if torch.equal(after[n], before[n])]
    # ... and the vision-pretraining stage moved every tower weight LLaVA reads (post_layernorm is unused:
    # LLaVA takes the last hidden state before it)
    tower = [n for n in before if "vision_tower" in n and "post_layernorm" not in n]
    assert not [n for n in tower if torch.equal(after[n], before[n])]
    assert summary["vision_pretrain"]["steps"] == 5
    assert set(summary["vision_pretrain"]) >= {"class_acc", "color_acc", "position_acc"}


def test_sft_resumes_from_last_checkpoint(tmp_path, cache_dir):
    out = tmp_path / "run"
    main(micro_sft_config(out, cache_dir, steps=10, eval_at_end=False))
    first = json.loads((out / "train_summary.json").read_text())["loss_history"]
    summary = main(micro_sft_config(out, cache_dir, steps=20, eval_at_end=False, existing="resume"))  # --resume
    history = summary["loss_history"]
    assert history[: len(first)] == first  # the earlier steps were restored, not redone
    assert history[-1][0] == 20 and summary["train"]["train_runtime"] > 0
    assert (out / "checkpoint-20").is_dir()


def test_sft_eval_at_end_writes_schema(tmp_path, cache_dir):
    summary = main(micro_sft_config(tmp_path / "run", cache_dir, steps=4))
    results = json.loads((tmp_path / "run" / "final" / "eval_results.json").read_text())
    assert results == summary["eval"]
    assert set(results) >= {
        "toyworld_chair",
        "toyworld_pope_random",
        "toyworld_pope_popular",
        "toyworld_pope_adversarial",
        "toyworld_pope",
        "meta",
    }
    for bench, metrics in results.items():
        if bench == "meta":
            continue
        for name, value in metrics.items():
            if name not in ("length", "mentions", "hallucinated_mentions", "n"):
                assert 0.0 <= value <= 1.0, (bench, name, value)
    assert results["meta"]["images"] == 4


def test_sft_with_lora_on_a_saved_base_freezes_the_tower_and_trains_adapters(tmp_path, cache_dir, micro_model):
    from align.config.sections import ModelConfig
    from align.core.models import save_policy

    model, processor = micro_model
    save_policy(model, processor, tmp_path / "base")
    cfg = micro_sft_config(tmp_path / "run", cache_dir, steps=4, eval_at_end=False)
    cfg.model = ModelConfig(name_or_path=str(tmp_path / "base"), lora_r=4)  # default LoRA, freeze_vision on
    summary = main(cfg)
    assert summary["vision_pretrain"] is None  # only the tiny model built from scratch gets stage 0
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()
