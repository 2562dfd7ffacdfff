"""The trainer mixins: the projector learning rate (its own optimizer group, scheduled like the rest)."""

from __future__ import annotations

from align.core.models import multimodal_projector
from align.core.trainer import AlignTrainer, training_arguments
from tests.conftest import micro_sft_config


def _trainer(micro_model, tmp_path, cache_dir, projector_lr):
    model, processor = micro_model
    cfg = micro_sft_config(tmp_path, cache_dir, steps=10)
    args = training_arguments(cfg.run, cfg.optim)
    return AlignTrainer(model=model, args=args, processing_class=processor, projector_lr=projector_lr)


def test_projector_gets_its_own_learning_rate(micro_model, tmp_path, cache_dir):
    trainer = _trainer(micro_model, tmp_path, cache_dir, projector_lr=1e-5)
    optimizer = trainer.create_optimizer()
    assert trainer.create_optimizer() is optimizer  # a second call must not split the groups again
    projector = {id(p) for p in multimodal_projector(trainer.model).parameters()}
    grouped = [(id(p), g) for g in optimizer.param_groups for p in g["params"]]
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert sorted(i for i, _ in grouped) == sorted(id(p) for p in trainable)  # each parameter exactly once
    for pid, group in grouped:
        assert group["lr"] == (1e-5 if pid in projector else trainer.args.learning_rate)

    scheduler = trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    lrs = {g.get("name", "rest"): g["lr"] for g in optimizer.param_groups}
    assert 0 < lrs["projector"] < 1e-5
    assert abs(lrs["projector"] / lrs["rest"] - 1e-5 / trainer.args.learning_rate) < 1e-9


def test_without_projector_lr_the_default_groups_are_kept(micro_model, tmp_path, cache_dir):
    optimizer = _trainer(micro_model, tmp_path, cache_dir, projector_lr=None).create_optimizer()
    assert all("name" not in g for g in optimizer.param_groups)
    assert {g["lr"] for g in optimizer.param_groups} == {5e-3}


def test_the_mixins_compose_with_a_trl_trainer(tmp_path):
    """TRL's trainers subclass transformers.Trainer, so the mixins stack on them: here SFTTrainer with per-step
    metrics from compute_loss, logged with the step's loss (and only then)."""
    import trl
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from align.core.models import build_tiny_tokenizer
    from align.core.trainer import LlavaResumeMixin, ProjectorLRMixin, StepMetricsMixin

    class MetricsSFT(StepMetricsMixin, ProjectorLRMixin, LlavaResumeMixin, trl.SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.logs_this_step(model):
                self.stash_step_logs({"custom/step": float(self.state.global_step + 1)})
            return loss

    tok = build_tiny_tokenizer()
    lm = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id)  # fmt: skip
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=4, logging_steps=2, per_device_train_batch_size=4,
                         report_to="none", use_cpu=True, save_strategy="no")  # fmt: skip
    data = Dataset.from_dict({"text": ["there is a red cup at the top left."] * 8})
    trainer = MetricsSFT(model=LlamaForCausalLM(lm), args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    logged = [(h["step"], h["custom/step"]) for h in trainer.state.log_history if "custom/step" in h]
    assert logged == [(2, 2.0), (4, 4.0)]
    assert "custom/step" not in trainer.state.log_history[-1]  # not in the end-of-training summary
