"""Shared fixtures: a small ToyWorld and a much smaller tiny LLaVA, cached per test session, no downloads."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub

from align.config.sections import (  # noqa: E402
    DataConfig,
    EvalConfig,
    GenerationConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TinyModelSpec,
)
from data_builders.toyworld import WorldConfig  # noqa: E402

SMALL_WORLD = WorldConfig(seed=7, n_train=64, n_val=4, n_test=12)
MICRO_SPEC = TinyModelSpec(
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    vision_mlp=64,
    text_hidden=32,
    text_layers=1,
    text_heads=4,
    text_kv_heads=2,
    text_mlp=64,
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("align-cache")
    os.environ["ALIGN_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def small_world(cache_dir):
    from data_builders.toyworld_data import build_toyworld

    return build_toyworld(SMALL_WORLD, cache_dir)


@pytest.fixture(scope="session")
def micro_opa_data(tmp_path_factory, cache_dir):
    """(a saved micro policy, an OPA dataset of its rollouts on 8 small-world images corrected by the oracle)."""
    from align.core.models import build_model, save_policy
    from align.rollout.engine import HFRolloutEngine
    from data_builders.configs import OPADataConfig, RolloutSettings
    from data_builders.opa_dpo import build

    root = tmp_path_factory.mktemp("opa")
    model, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0)
    policy = str(save_policy(model, processor, root / "policy"))
    cfg = OPADataConfig(
        output_dir=str(root / "data"),
        policy=policy,
        world=SMALL_WORLD,
        cache_dir=str(cache_dir),
        limit=8,
        rollout=RolloutSettings(max_new_tokens=16, batch_size=8),
    )
    summary = build(cfg, HFRolloutEngine(policy, cfg.rollout))
    assert summary["rows_out"] >= 4, summary
    return policy, summary["dataset"]


def assert_every_lora_weight_moved(start: str, final: str) -> list[str]:
    """Every weight LoRA adapts (language model, vision tower, projector) differs between the start and the merged
    final policy. Returns those weights' names."""
    import torch

    from align.core.models import load_policy

    before = dict(load_policy(start, device="cpu")[0].named_parameters())
    after = dict(load_policy(final, device="cpu")[0].named_parameters())
    adapted = [
        n
        for n in before
        if any(k in n for k in ("q_proj", "v_proj", "down_proj", "fc2", "linear_1", "linear_2")) and "weight" in n
    ]
    assert {"language_model", "vision_tower", "multi_modal_projector"} <= {p for n in adapted for p in n.split(".")}
    assert all(not torch.equal(before[n], after[n]) for n in adapted)
    return adapted


@pytest.fixture
def micro_model_cfg():
    return ModelConfig(tiny=MICRO_SPEC, finetune="full")


@pytest.fixture
def micro_model(micro_model_cfg):
    from align.core.models import build_model

    return build_model(micro_model_cfg, seed=0)


def split_run(output_dir, kw: dict, **defaults) -> tuple[RunConfig, dict]:
    """(RunConfig of output_dir with the run fields of `kw` over `defaults`, the other keys of `kw`)."""
    import dataclasses

    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    run = {**defaults, **{k: v for k, v in kw.items() if k in run_fields}}
    return RunConfig(output_dir=str(output_dir), **run), {k: v for k, v in kw.items() if k not in run_fields}


def micro_sft_config(output_dir, cache_dir, steps: int = 30, vision_pretrain_steps: int = 5, **kw):
    """A micro SFT config; run fields (eval_at_end=..., existing=...) go to its run section."""
    from align.config.recipes import SFTConfig

    run, kw = split_run(output_dir, kw, logging_steps=5, save_steps=max(steps // 2, 1))
    return SFTConfig(
        run=run,
        model=ModelConfig(tiny=MICRO_SPEC, finetune="full"),
        data=DataConfig(world=SMALL_WORLD, cache_dir=str(cache_dir)),
        optim=OptimConfig(lr=5e-3, max_steps=steps, warmup_steps=2, batch_size=8),
        eval=EvalConfig(limit=4, generation=GenerationConfig(max_new_tokens=12, batch_size=16)),
        vision_pretrain_steps=vision_pretrain_steps,
        **kw,
    )


def sample_report() -> dict:
    """An expert report with a correct, a misrecognised and a dropped sentence, and an added part."""
    edit = dict(objects=[], reason="")
    return {
        "sentences": [
            dict(copied="there is a red cup at the top left.", score=4, error_type="correct",
                 rewritten="there is a red cup at the top left.", **edit),
            dict(copied="a blue fork is at the center.", score=2, error_type="image_recognition_error",
                 rewritten="  a blue knife is at the center. ", **edit),
            dict(copied="a dog sings.", score=1, error_type="language_comprehension_error", rewritten="", **edit),
        ],
        "added": "there is a green cat at the bottom right.",
        "added_reason": "missing",
    }  # fmt: skip


def assert_full_finetune_moves_every_weight(trainer) -> None:
    """Train `trainer` (a full fine-tune with a frozen reference copy) and check: every weight of the policy that
    takes part in the forward moved, and no weight of the reference did. CLIP's post_layernorm is the one weight a
    LLaVA never uses (it reads the tower's hidden states, not its pooled output), so it has no gradient."""
    import torch

    policy, reference = trainer.model, trainer.ref_model
    assert reference is not None and reference is not policy
    start = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ref_start = {n: p.detach().clone() for n, p in reference.named_parameters()}
    assert all(p.requires_grad for p in policy.parameters())
    assert not any(p.requires_grad for p in reference.parameters())
    trainer.train()
    unused = {n for n in start if "post_layernorm" in n}
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p.detach(), start[n])}
    assert moved == set(start) - unused, sorted(set(start) - unused - moved)
    parts = {part for name in moved for part in name.split(".")}
    assert {"language_model", "vision_tower", "multi_modal_projector", "lm_head"} <= parts
    assert all(torch.equal(p, ref_start[n]) for n, p in reference.named_parameters())


# The two ways the scorers' text processing runs: with NLTK's tagger and WordNet (the reference's own) and
# without them (the fallback), so that tests of behaviour both share run in both.
def without_nltk_data(monkeypatch) -> None:
    """As on a machine where neither NLTK model is installed."""
    from align.eval import tagging

    monkeypatch.setattr(tagging, "nltk_tagger", lambda: None)
    monkeypatch.setattr(tagging, "wordnet_installed", lambda: False)


@pytest.fixture(params=["reference", "fallback"])
def nltk_mode(request, monkeypatch) -> str:
    from tests.shared_data import require_nltk_data

    if request.param == "reference":
        require_nltk_data()
    else:
        without_nltk_data(monkeypatch)
    return request.param


@pytest.fixture
def no_nltk_data(monkeypatch) -> None:
    without_nltk_data(monkeypatch)
