"""Gradient accumulation with the trainers' own losses: batch b × accumulation 2 takes the same steps as batch 2b
× accumulation 1 (same losses, gradient norms and weights), for the DPO-family trainers and the SFT one.

transformers' Trainer divides a microbatch's loss by the accumulation steps only when it thinks the loss is not
already normalised by the batch's token count; for a model whose forward takes **kwargs (every LLaVA) it assumes
it is, so a custom `compute_loss` returning a batch mean was summed over the microbatches: k times the gradient.
"""

from __future__ import annotations

import pytest

from align.config.sections import OptimConfig
from align.core.preference import train_dpo
from tests.align.core.test_ref_cache import config, pairs  # noqa: F401  (the module's fixture)


def history(summary: dict, key: str) -> list[float]:
    return [h[key] for h in summary["log_history"] if key in h]


@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_accumulation_two_equals_the_double_batch(pairs, tmp_path, loss):  # noqa: F811
    policy, dataset = pairs
    runs = {}
    for name, batch, accum in (("whole", 4, 1), ("accumulated", 2, 2)):
        cfg = config(tmp_path, policy, dataset, name, loss=loss)
        cfg.optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=batch, grad_accum=accum)
        runs[name] = train_dpo(cfg)
    for key in ("loss", "grad_norm"):
        a, b = history(runs["whole"], key), history(runs["accumulated"], key)
        assert len(a) == len(b) == 3
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5), key


def test_opa_dpo_accumulation_two_equals_the_double_batch(micro_opa_data, tmp_path):
    from align.recipes import opa_dpo
    from tests.align.core.test_ref_cache import opa_config

    policy, dataset = micro_opa_data
    runs = {}
    for name, batch, accum in (("whole", 4, 1), ("accumulated", 2, 2)):
        cfg = opa_config(tmp_path, policy, dataset, name)  # masked views too: masks are drawn per record
        cfg.optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=batch, grad_accum=accum)
        runs[name] = opa_dpo.main(cfg)
    for key in ("loss", "grad_norm"):
        assert history(runs["accumulated"], key) == pytest.approx(history(runs["whole"], key), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("power", [0.0, 0.35])  # the token mean (the model's loss) and row weights (our own)
def test_sft_accumulation_two_equals_the_double_batch(tmp_path, cache_dir, power):
    from align.recipes.sft import main as sft_main
    from tests.conftest import micro_sft_config

    runs = {}
    for name, batch, accum in (("whole", 8, 1), ("accumulated", 4, 2)):
        cfg = micro_sft_config(
            tmp_path / name, cache_dir, steps=3, vision_pretrain_steps=0, eval_at_end=False, row_weight_power=power
        )
        cfg.run.logging_steps = 1
        cfg.optim.batch_size, cfg.optim.grad_accum = batch, accum
        runs[name] = sft_main(cfg)
    a, b = ([loss for _, loss in r["loss_history"]] for r in (runs["whole"], runs["accumulated"]))
    assert len(a) == 3 and b == pytest.approx(a, rel=1e-4, abs=1e-5)
