"""The `triton_fused` transformers backend where the kernel cannot run (this CPU, no interpreter): it computes
attention with SDPA under the same masking and says so once. Also: its refusals, and the config that selects it.
Kernel-level and model-level tests of the kernel itself are in test_fused_attention.py / test_hf_attention.py."""

from __future__ import annotations

import logging
import types

import pytest
import torch

from align.config.loading import ConfigError, from_dict
from align.config.sections import ModelConfig
from align.core.models import build_model
from kernels import fused_attention as op
from kernels import hf_attention
from tests.conftest import MICRO_SPEC

needs_plain_cpu = pytest.mark.skipif(
    op.INTERPRET or torch.cuda.is_available(), reason="the fallback runs only without a GPU and interpreter"
)


def _padded_batch(processor):
    processor.tokenizer.padding_side = "left"
    image = torch.zeros(MICRO_SPEC.image_size, MICRO_SPEC.image_size, 3, dtype=torch.uint8).numpy()
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
        )
        for q in ("describe the image in detail.", "is there a cup ?")
    ]
    return processor(images=[image, image], text=texts, return_tensors="pt", padding=True)


@needs_plain_cpu
def test_falls_back_to_sdpa_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(hf_attention, "_warned_fallback", False)
    model, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full", attn_implementation="triton_fused"))
    batch = _padded_batch(processor)
    assert model.config.text_config._attn_implementation == "triton_fused"
    assert model.config.vision_config._attn_implementation == "triton_fused"
    with caplog.at_level(logging.WARNING, logger=hf_attention.__name__), torch.no_grad():
        fused = model(**batch).logits
        tokens = model.generate(**batch, max_new_tokens=6, do_sample=False)
    warnings = [r for r in caplog.records if "TRITON_INTERPRET" in r.getMessage()]
    assert len(warnings) == 1, "one warning, not one per layer or call"
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        real = batch["attention_mask"].bool()
        assert torch.allclose(fused[real], model(**batch).logits[real], atol=1e-6)
        assert torch.equal(tokens, model.generate(**batch, max_new_tokens=6, do_sample=False))


def _call(**kwargs):
    q = torch.zeros(1, 2, 4, 8)
    module = types.SimpleNamespace(is_causal=True)
    args = dict(attention_mask=None, dropout=0.0, scaling=None) | kwargs
    return hf_attention.triton_fused_attention_forward(module, q, q[:, :1], q[:, :1], **args)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dropout": 0.1}, "no attention dropout"),
        ({"softcap": 30.0}, "softcap"),
        ({"sliding_window": 4}, "sliding_window"),
        ({"attention_mask": torch.ones(1, 1, 4, 4, dtype=torch.bool)}, "2-D padding mask"),
        ({"position_ids": torch.tensor([[0, 1, 0, 1]])}, "packed sequences"),
    ],
)
def test_refuses_what_it_cannot_compute(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _call(**kwargs)


def test_attn_implementation_per_sub_model_from_config():
    cfg = from_dict(ModelConfig, {"tiny": {}, "attn_implementation": {"text": "triton_fused", "vision": "sdpa"}})
    assert cfg.hf_attn_implementation() == {"text_config": "triton_fused", "vision_config": "sdpa"}
    model, _ = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full", attn_implementation=cfg.attn_implementation))
    assert model.config.text_config._attn_implementation == "triton_fused"
    assert model.config.vision_config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="unknown sub-model.*'lm'"):
        from_dict(ModelConfig, {"attn_implementation": {"lm": "triton_fused"}})
