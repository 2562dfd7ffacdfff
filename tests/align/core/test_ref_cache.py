"""Cached reference log-probs (align/core/ref_cache.py, `precompute_ref_logps`): the same losses as the reference
forward at every step, stored beside the dataset and read back by the next run (which then runs no reference
forward), a new file when the start model changes, and the run directory when the dataset folder is not writable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from align.config.recipes import DPORecipeConfig
from align.config.sections import DataConfig, EvalConfig, ModelConfig, OptimConfig
from align.core import preference, ref_cache
from align.core.models import load_policy, save_policy
from align.core.preference import train_dpo
from data_builders.rlhf_v import PreferenceDataConfig, build_preference_data
from tests.conftest import SMALL_WORLD, split_run

LOSS_KEYS = ("loss", "pair", "rewards/chosen", "rewards/rejected", "rewards/margin")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, micro_opa_data):
    """(the micro policy, a preference dataset of its corrected rollouts)."""
    policy, opa = micro_opa_data
    root = tmp_path_factory.mktemp("ref_cache")
    summary = build_preference_data(PreferenceDataConfig(opa_dataset=opa, output_dir=str(root / "pref"), gamma=3.0))
    assert summary["rows_out"] >= 4, summary
    return policy, summary["dataset"]


def config(tmp_path, policy, dataset, name, **kw) -> DPORecipeConfig:
    run, kw = split_run(tmp_path / name, kw, logging_steps=1, save_steps=100, eval_at_end=False)
    return DPORecipeConfig(
        run=run,
        dataset=dataset,
        model=ModelConfig(name_or_path=policy, lora_r=4, lora_alpha=8, lora_dropout=0.0),
        data=DataConfig(world=SMALL_WORLD, max_length=160),
        optim=OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=2),
        eval=EvalConfig(limit=2, pope=False),
        **kw,
    )


def logged(summary: dict) -> list[dict]:
    return [{k: h[k] for k in LOSS_KEYS} for h in summary["log_history"] if "pair" in h]


def stored_files(dataset: str) -> list[Path]:
    return sorted((Path(dataset) / ref_cache.CACHE_DIR).glob("*.safetensors"))


@pytest.mark.parametrize("loss", ["dpo", "ddpo"])
def test_cached_reference_gives_the_same_losses(pairs, tmp_path, loss):
    policy, dataset = pairs
    plain = train_dpo(config(tmp_path, policy, dataset, "plain", loss=loss))
    cached = train_dpo(config(tmp_path, policy, dataset, "cached", loss=loss, precompute_ref_logps=True))
    a, b = logged(plain), logged(cached)
    assert len(a) == len(b) == 3
    for step_a, step_b in zip(a, b):
        for key in LOSS_KEYS:
            assert step_b[key] == pytest.approx(step_a[key], abs=1e-5), (key, step_a, step_b)
    assert a[-1]["pair"] != pytest.approx(a[0]["pair"], abs=1e-3)  # the policy moved away from its reference


def test_the_next_run_reads_the_stored_values_and_runs_no_reference_forward(pairs, tmp_path, monkeypatch, capsys):
    policy, dataset = pairs
    shutil.rmtree(Path(dataset) / ref_cache.CACHE_DIR, ignore_errors=True)
    train_dpo(config(tmp_path, policy, dataset, "first", precompute_ref_logps=True))
    assert "computed and stored in" in capsys.readouterr().out and len(stored_files(dataset)) == 1

    def no_reference(*args, **kwargs):
        raise AssertionError("a reference forward ran although its log-probs were stored")

    monkeypatch.setattr(preference.DDPOTrainer, "reference_logps", no_reference)
    summary = train_dpo(config(tmp_path, policy, dataset, "second", precompute_ref_logps=True))
    assert "read from" in capsys.readouterr().out and len(logged(summary)) == 3


def test_another_start_model_is_another_file(pairs, tmp_path):
    policy, dataset = pairs
    shutil.rmtree(Path(dataset) / ref_cache.CACHE_DIR, ignore_errors=True)
    train_dpo(config(tmp_path, policy, dataset, "a", precompute_ref_logps=True))
    model, processor = load_policy(policy, device="cpu")
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    other = str(save_policy(model, processor, tmp_path / "other_policy"))
    train_dpo(config(tmp_path, other, dataset, "b", precompute_ref_logps=True))
    assert len(stored_files(dataset)) == 2


def test_a_read_only_dataset_folder_stores_in_the_run_directory(pairs, tmp_path, monkeypatch):
    policy, dataset = pairs
    shutil.rmtree(Path(dataset) / ref_cache.CACHE_DIR, ignore_errors=True)
    real_save = ref_cache.save_reference_logps

    def save(path, *args):  # as a folder without write permission (the tests run as root, which ignores them)
        if Path(dataset) in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        real_save(path, *args)

    monkeypatch.setattr(ref_cache, "save_reference_logps", save)
    cfg = config(tmp_path, policy, dataset, "ro", precompute_ref_logps=True)
    train_dpo(cfg)
    assert not stored_files(dataset)
    assert len(list((Path(cfg.run.output_dir) / ref_cache.CACHE_DIR).glob("*.safetensors"))) == 1


def test_stored_values_round_trip_and_must_fit_the_tokens(tmp_path):
    views = ("chosen", "rejected")
    values = [{"chosen": [-1.0, -2.0], "rejected": [-0.5]}, {"chosen": [-3.0], "rejected": [-0.25, -0.75, -1.0]}]
    path = tmp_path / "x.safetensors"
    ref_cache.save_reference_logps(path, values, views, {"any": "thing"})
    assert ref_cache.load_reference_logps(path, 2, views) == values
    assert ref_cache.load_reference_logps(path, 3, views) is None  # another dataset's count
    records = [{"id": "a", "chosen": {"weights": [1.0, 1.0]}, "rejected": {"weights": [1.0, 1.0]}}]
    with pytest.raises(ValueError, match="record a"):
        ref_cache.attach(records, values[:1], views)
    assert ref_cache.cache_key({"a": 1, "b": [2]}) == ref_cache.cache_key({"b": [2], "a": 1})
    assert ref_cache.cache_key({"a": 1}) != ref_cache.cache_key({"a": 2})


def opa_config(tmp_path, policy, dataset, name, **kw):
    from align.config.recipes import OPADPOConfig, OPAStepConfig

    run, kw = split_run(tmp_path / name, kw, logging_steps=1, save_steps=100, eval_at_end=False)
    return OPADPOConfig(
        run=run,
        dataset=dataset,
        model=ModelConfig(name_or_path=policy, lora_r=4, lora_alpha=8, lora_dropout=0.0),
        data=DataConfig(world=SMALL_WORLD, max_length=160),
        opa=OPAStepConfig(steps=2, lr=1e-3, batch_size=8),
        optim=OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=2),
        eval=EvalConfig(limit=2, pope=False),
        **kw,
    )


@pytest.mark.parametrize("baseline", ["none", "offpolicy"])
def test_opa_dpo_with_stored_reference_gives_the_same_losses(micro_opa_data, tmp_path, monkeypatch, baseline):
    """OPA-DPO's five views: the reference answer, rollout and revision come from the store, the two masked-image
    views (masks drawn per batch) from a reference forward over their rows alone; the off-policy baseline's two
    views come from the store entirely."""
    from align.recipes import opa_dpo

    policy, dataset = micro_opa_data
    keys = ("loss", "pair_std", "rewards/reference", "rewards/margin")
    plain = opa_dpo.main(opa_config(tmp_path, policy, dataset, "plain", baseline=baseline))
    rows_seen = []
    real = opa_dpo.OPADPOTrainer.reference_logps

    def counting(self, model, inputs, width=None):
        if model.training:  # a training step's reference forward (the precompute runs in eval mode)
            rows_seen.append(len(inputs["input_ids"]))
        return real(self, model, inputs, width)

    monkeypatch.setattr(opa_dpo.OPADPOTrainer, "reference_logps", counting)
    cached = opa_dpo.main(
        opa_config(tmp_path, policy, dataset, "cached", baseline=baseline, precompute_ref_logps=True)
    )
    a = [h for h in plain["log_history"] if "pair_std" in h]
    b = [h for h in cached["log_history"] if "pair_std" in h]
    assert len(a) == len(b) == 3
    for step_a, step_b in zip(a, b):
        for key in keys:
            assert step_b[key] == pytest.approx(step_a[key], abs=1e-5), (key, step_a, step_b)
    # 3 training steps of 2 records: a forward over the masked views' 4 rows each (none for the baseline)
    assert rows_seen == ([] if baseline == "offpolicy" else [4, 4, 4])
