"""The reward-model recipe (align/recipes/reward_model.py) on a micro policy: pairs encoded with and without
their facts (the skips counted), LoRA and head trained, a held-out pair accuracy, `final/` a reward model that
loads on its own and scores as the run did, a rerun that trains nothing, and resume after a stop."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from align.config.recipes import RewardModelConfig
from align.config.sections import DataConfig, ModelConfig, OptimConfig, RunConfig
from align.core.data import PreferenceCollator
from align.recipes.reward_model import (
    TRAINABLE_FILE,
    VIEWS,
    encode_reward_pair,
    encode_split,
    main,
    pair_accuracy,
)
from data_builders.configs import RewardPairsConfig, RolloutSettings
from data_builders.io import load_preference_dataset
from data_builders.reward_pairs import build
from data_builders.toyworld_data import toyworld_prompts
from rewards.model import FACTS_HEADER, load_reward_model
from tests.conftest import SMALL_WORLD
from tests.data_builders.test_reward_pairs import TruthEngine


@pytest.fixture(scope="module")
def pairs(micro_opa_data, tmp_path_factory, cache_dir):
    policy, _ = micro_opa_data
    out = tmp_path_factory.mktemp("pairs")
    cfg = RewardPairsConfig(output_dir=str(out), world=SMALL_WORLD, cache_dir=str(cache_dir), limit=16, samples=3,
                            rollout=RolloutSettings(batch_size=16))  # fmt: skip
    return policy, build(cfg, TruthEngine(toyworld_prompts(cfg)))["dataset"]


def _cfg(policy, dataset, out, steps=6, **kw) -> RewardModelConfig:
    return RewardModelConfig(
        run=RunConfig(output_dir=str(out), seed=0, logging_steps=2, save_steps=3, report_to="none"),
        dataset=dataset,
        model=ModelConfig(name_or_path=policy, finetune="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0),
        data=DataConfig(max_length=200),
        optim=OptimConfig(lr=5e-3, warmup_steps=0, max_steps=steps, batch_size=4),
        eval_fraction=0.25,
        **kw,
    )


def test_pairs_are_encoded_with_their_facts_or_without(pairs, tmp_path):
    from align.core.models import load_policy

    policy, dataset = pairs
    _, processor = load_policy(policy, device="cpu")
    record = load_preference_dataset(dataset)[0]
    facts = json.loads(record["meta"])["facts"]
    decode = processor.tokenizer.decode
    with_facts = encode_reward_pair(processor, record, _cfg(policy, dataset, tmp_path), 9, {})
    plain = encode_reward_pair(processor, record, _cfg(policy, dataset, tmp_path, facts=False), 9, {})
    assert FACTS_HEADER.split()[0].lower() in decode(with_facts["chosen"]["input_ids"]).lower()
    assert all(f.split()[-1] in decode(with_facts["chosen"]["input_ids"]) for f in facts)
    assert FACTS_HEADER.split()[0].lower() not in decode(plain["chosen"]["input_ids"]).lower()
    # both answers of a pair read the same prompt: their ids differ only after it
    chosen, rejected = with_facts["chosen"]["input_ids"], with_facts["rejected"]["input_ids"]
    start = next(i for i, label in enumerate(with_facts["chosen"]["labels"]) if label != -100)
    assert chosen[:start] == rejected[:start]
    no_facts = {**record, "meta": "{}"}
    assert encode_reward_pair(processor, no_facts, _cfg(policy, dataset, tmp_path), 9, {}) == "no_facts"
    same = {**record, "rejected": record["chosen"]}
    assert encode_reward_pair(processor, same, _cfg(policy, dataset, tmp_path), 9, {}) == "chosen_equals_rejected"
    cfg = _cfg(policy, dataset, tmp_path)
    train, held_out, counts = encode_split(load_preference_dataset(dataset), processor, cfg, 9)
    assert counts == {"rows": 16, "train": 12, "held_out": 4, "skipped": {}}
    assert {p["id"] for p in train}.isdisjoint(p["id"] for p in held_out)


def test_training_saves_a_reward_model_that_scores_as_the_run_did(pairs, tmp_path):
    policy, dataset = pairs
    cfg = _cfg(policy, dataset, tmp_path / "rm")
    summary = main(cfg)
    assert summary["pairs"]["train"] == 12 and summary["held_out"]["pairs"] == 4
    assert any("rewards/accuracy" in entry for entry in summary["log_history"])
    rm, processor, config = load_reward_model(summary["final"], device="cpu")
    assert config["facts"] is True and config["base_model"] == policy
    # the held-out accuracy of the loaded model is the run's
    dataset_rows = load_preference_dataset(dataset)
    _, held_out, _ = encode_split(dataset_rows, processor, cfg, 9)
    again = pair_accuracy(rm, held_out, PreferenceCollator(processor, VIEWS), 4)
    assert again["pair_accuracy"] == summary["held_out"]["pair_accuracy"]
    assert again["mean_margin"] == pytest.approx(summary["held_out"]["mean_margin"], abs=1e-5)
    # the adapter and the head moved away from their start
    start = load_reward_model(summary["final"], device="cpu")[0]
    assert not torch.equal(start.head.weight, rm.head.weight) or summary["held_out"] != summary["held_out_before"]
    lora = {n: p for n, p in rm.named_parameters() if "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())  # B starts at zero
    # a rerun is finished: nothing trains
    assert main(cfg)["final"] == summary["final"]


def test_a_killed_run_resumes_to_the_same_reward_model(pairs, tmp_path, capsys):
    """A run killed after its step-3 checkpoint (what is left: that checkpoint) ends, rerun, as the whole run."""
    policy, dataset = pairs
    whole = main(_cfg(policy, dataset, tmp_path / "whole"))
    saved = {p.name for p in (tmp_path / "whole" / "checkpoint-3").iterdir()}
    assert TRAINABLE_FILE in saved and "model.safetensors" not in saved  # LoRA and head only, not the backbone
    shutil.copytree(tmp_path / "whole", tmp_path / "killed", ignore=shutil.ignore_patterns("final", "checkpoint-6"))
    (tmp_path / "killed" / "train_summary.json").unlink()
    capsys.readouterr()
    resumed = main(_cfg(policy, dataset, tmp_path / "killed"))
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'killed' / 'checkpoint-3'}" in out
    assert resumed["held_out"] == whole["held_out"]
    a = load_reward_model(whole["final"], device="cpu")[0]
    b = load_reward_model(resumed["final"], device="cpu")[0]
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
