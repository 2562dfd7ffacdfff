"""train_summary.json after a resume (issue 16, item 6): a run killed mid-way and resumed reports the train_loss of
all its steps, as an uninterrupted run does, not the mean of the resumed steps alone."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback
from transformers.trainer_utils import TrainOutput

from align.core.trainer import whole_run_loss
from align.recipes import sft
from tests.conftest import micro_sft_config


class Killed(Exception):
    pass


class KillAfter(TrainerCallback):
    """Stops training after step `n`, as a kill would (the last checkpoint stays on disk)."""

    def __init__(self, n: int):
        self.n = n

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.n:
            raise Killed


def test_a_resumed_run_reports_the_train_loss_of_every_step(tmp_path, cache_dir, monkeypatch):
    config = dict(steps=10, vision_pretrain_steps=0, eval_at_end=False)  # checkpoints at 5 and 10, logs every 5
    whole = sft.main(micro_sft_config(tmp_path / "whole", cache_dir, **config))

    attach = sft.attach_checkpoint_eval
    monkeypatch.setattr(sft, "attach_checkpoint_eval", lambda trainer, cfg: trainer.add_callback(KillAfter(7)))
    with pytest.raises(Killed):
        sft.main(micro_sft_config(tmp_path / "killed", cache_dir, **config))
    monkeypatch.setattr(sft, "attach_checkpoint_eval", attach)
    resumed = sft.main(micro_sft_config(tmp_path / "killed", cache_dir, **config))  # from checkpoint-5

    assert [s for s, _ in resumed["loss_history"]] == [5, 10] == [s for s, _ in whole["loss_history"]]
    assert [x for _, x in resumed["loss_history"]] == pytest.approx([x for _, x in whole["loss_history"]], abs=1e-6)
    assert resumed["train"]["train_loss"] == pytest.approx(whole["train"]["train_loss"], abs=1e-6)
    first, second = (loss for _, loss in whole["loss_history"])
    assert resumed["train"]["train_loss_resumed_steps"] == pytest.approx(second, abs=1e-6)  # steps 6-10 alone
    assert abs(first - second) > 1e-3  # the two halves differ, so averaging only one would show


def test_the_whole_run_loss_weights_each_logged_loss_by_its_interval():
    state = {"global_step": 7, "log_history": [{"step": 2, "loss": 4.0}, {"step": 6, "loss": 1.0}, {"step": 7}]}
    resumed = TrainOutput(10, 2.0, {"train_loss": 2.0, "train_runtime": 1.0})  # steps 8-10
    out = whole_run_loss(resumed, state)
    # steps 1-2 at 4.0, 3-6 at 1.0, step 7 never logged (left out), 8-10 at 2.0
    assert out.training_loss == out.metrics["train_loss"] == pytest.approx((2 * 4.0 + 4 * 1.0 + 3 * 2.0) / 9)
    assert out.metrics["train_loss_resumed_steps"] == 2.0 and out.metrics["train_runtime"] == 1.0
    assert whole_run_loss(resumed, None) is resumed  # a run that did not resume: Trainer's figure stands
