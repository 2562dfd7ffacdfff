"""OPA-DPO recipe on a micro policy: records encode with weights on the right tokens, the OPA step and OPA-DPO train
every LoRA weight, the first step's pair terms equal log 2 (policy == reference), and the off-policy baseline runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from align.config.recipes import OPADPOConfig, OPAStepConfig
from align.config.sections import DataConfig, EvalConfig, GenerationConfig, ModelConfig, OptimConfig
from align.core.data import image_seq_length
from align.core.models import load_policy
from align.recipes.opa_dpo import build_trainer, encode_record, main, opa_rows
from data_builders.io import load_opa_dataset
from tests.conftest import (
    SMALL_WORLD,
    assert_every_lora_weight_moved,
    assert_full_finetune_moves_every_weight,
    split_run,
)


@pytest.fixture(scope="module")
def opa_data(micro_opa_data):
    return micro_opa_data


def opa_config(tmp_path, policy, dataset, **kw) -> OPADPOConfig:
    run, kw = split_run(tmp_path / "run", kw, logging_steps=1, save_steps=100, eval_at_end=False)
    return OPADPOConfig(
        run=run,
        dataset=dataset,
        model=kw.pop("model", None)
        or ModelConfig(
            name_or_path=policy, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_vision=True, lora_projector=True
        ),
        data=DataConfig(world=SMALL_WORLD, max_length=160),
        opa=OPAStepConfig(steps=2, lr=1e-3, batch_size=8),
        optim=OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=4),
        eval=EvalConfig(limit=2, pope=False, generation=GenerationConfig(max_new_tokens=8)),
        **kw,
    )


def test_weights_land_on_the_corrected_sentence(opa_data, tmp_path):
    policy, dataset = opa_data
    model, processor = load_policy(policy)
    report = {
        "sentences": [
            {
                "copied": "a red cup is at the top.",
                "score": 4,
                "error_type": "correct",
                "objects": [],
                "rewritten": "a red cup is at the top.",
                "reason": "ok",
            },
            {
                "copied": "a blue kite is at the left.",
                "score": 2,
                "error_type": "image_recognition_error",
                "objects": ["kite -> fork"],
                "rewritten": "a blue fork is at the left.",
                "reason": "fork",
            },
        ],
        "added": "",
        "added_reason": "",
    }
    from datasets import load_from_disk

    row = dict(load_from_disk(dataset)[0])
    row["report"] = json.dumps(report)
    cfg = opa_config(tmp_path, policy, dataset)
    enc = encode_record(processor, row, cfg, n_image_tokens=image_seq_length(model.config))
    words = processor.tokenizer.convert_ids_to_tokens(enc["revision"]["input_ids"][-len(enc["revision"]["weights"]) :])
    by_word = list(zip(words, enc["revision"]["weights"]))
    assert by_word[:7] == [(w, 1.0) for w in ["a", "red", "cup", "is", "at", "the", "top"]]
    assert ("fork", 2.0) in by_word and ("kite", 2.0) in list(
        zip(
            processor.tokenizer.convert_ids_to_tokens(enc["rollout"]["input_ids"][-len(enc["rollout"]["weights"]) :]),
            enc["rollout"]["weights"],
        )
    )
    assert ("fork", 3.0) in list(zip(words, enc["revision_error_weights"]))  # error-type weights for the image pair
    assert set(enc["reference"]["weights"]) == {1.0}


def test_opa_then_opa_dpo_trains_every_lora_weight(opa_data, tmp_path):
    policy, dataset = opa_data
    summary = main(opa_config(tmp_path, policy, dataset))
    first = next(h for h in summary["log_history"] if "pair_std" in h)
    # at the first step the fresh LoRA is zero, so policy == reference: every pair term is exactly log 2
    for term in ("pair_std", "pair_ai", "copo_std", "copo_ai"):
        assert first[term] == pytest.approx(math.log(2), abs=1e-5), (term, first)
    assert first["anchor"] == pytest.approx(4 * math.log(2), abs=1e-4)
    losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
    assert all(math.isfinite(v) for v in losses)
    # the final model differs from the OPA start in every LoRA-adapted (merged) weight
    adapted = assert_every_lora_weight_moved(summary["start"], summary["final"])
    # and the OPA step moved the base policy
    base, _ = load_policy(policy, device="cpu")
    start, _ = load_policy(summary["start"], device="cpu")
    assert not torch.equal(dict(base.named_parameters())[adapted[0]], dict(start.named_parameters())[adapted[0]])


def test_offpolicy_baseline_skips_the_opa_step_and_logs_the_nll_term(opa_data, tmp_path):
    policy, dataset = opa_data
    summary = main(opa_config(tmp_path, policy, dataset, baseline="offpolicy", c_sft=1.0))
    assert summary["start"] == policy and not (tmp_path / "run" / "opa").exists()
    assert any("rewards/accuracy" in h for h in summary["log_history"])
    assert all(h["sft"] > 0 for h in summary["log_history"] if "pair_std" in h)  # the NLL term is on


def test_killed_opa_dpo_run_resumes_without_redoing_work(opa_data, tmp_path, monkeypatch):
    from align.recipes import opa_dpo

    policy, dataset = opa_data
    cfg = opa_config(tmp_path, policy, dataset, save_steps=2)
    real_step = opa_dpo.OPADPOTrainer.training_step

    def killed_after_step_two(self, *args, **kwargs):  # stands in for a kill once checkpoint-2 is on disk
        if self.state.global_step == 2:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(opa_dpo.OPADPOTrainer, "training_step", killed_after_step_two)
    with pytest.raises(KeyboardInterrupt):
        main(cfg)
    run = tmp_path / "run"
    assert (run / "checkpoint-2").is_dir() and not (run / "final").exists()
    opa_final = run / "opa" / "final" / "model.safetensors"
    opa_written = opa_final.stat().st_mtime_ns
    before = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]

    steps_run = []

    def counted_step(self, *args, **kwargs):
        steps_run.append(self.state.global_step + 1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(opa_dpo.OPADPOTrainer, "training_step", counted_step)
    summary = main(cfg)
    assert steps_run == [3]  # only the step the kill lost is trained
    assert opa_final.stat().st_mtime_ns == opa_written  # the finished OPA step is reused, not retrained
    history = [h for h in summary["log_history"] if "loss" in h]
    assert [h["step"] for h in history] == [1, 2, 3]
    assert history[:2] == [h for h in before if "loss" in h]  # steps 1-2 come from the checkpoint's log
    assert (run / "final" / "config.json").is_file()


def test_full_finetune_trains_every_weight_against_a_frozen_copy(opa_data, tmp_path):
    policy, dataset = opa_data
    cfg = opa_config(tmp_path, policy, dataset, model=ModelConfig(name_or_path=policy, finetune="full"))
    trainer, _, _ = build_trainer(cfg, load_opa_dataset(dataset), Path(policy))
    assert_full_finetune_moves_every_weight(trainer)


def test_opa_step_rows_are_references_and_revisions_or_references_alone():
    records = [{"id": "a", "image": b"png", "prompt": "p", "reference": "ref a", "revision": "rev a"}]
    assert [r["response"] for r in opa_rows(records)] == ["ref a", "rev a"]
    assert [(r["id"], r["response"]) for r in opa_rows(records, "reference")] == [("a/reference", "ref a")]
