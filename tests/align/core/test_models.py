"""Tiny LLaVA: processor image-token count, save → load round trip through from_pretrained, LoRA placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align.config.sections import ModelConfig, TinyModelSpec
from align.core.data import user_prompt
from align.core.models import build_model, build_tiny_processor, load_policy, save_policy
from data_builders import toyworld as tw
from tests.conftest import MICRO_SPEC


def toy_batch(processor, n=2):
    rng = np.random.default_rng(0)
    images = [tw.render(tw.sample_scene(rng, tw.WorldConfig())[1], rng, 18.0) for _ in range(n)]
    texts = [user_prompt(processor, "Describe the image in detail.")] * n
    return processor(images=images, text=texts, padding=True, return_tensors="pt")


def test_processor_inserts_one_image_token_per_patch():
    spec = TinyModelSpec()
    processor = build_tiny_processor(spec)
    enc = toy_batch(processor, 1)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((enc["input_ids"] == image_id).sum()) == (spec.image_size // spec.patch_size) ** 2 == 9
    spec8 = TinyModelSpec(patch_size=8)
    enc8 = toy_batch(build_tiny_processor(spec8), 1)
    assert int((enc8["input_ids"] == image_id).sum()) == 36
    assert enc["pixel_values"].shape == (1, 3, 48, 48)


def test_gqa_and_forward(micro_model):
    model, processor = micro_model
    cfg = model.config.text_config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    out = model(**toy_batch(processor))
    assert out.logits.shape[-1] == len(processor.tokenizer) and torch.isfinite(out.logits).all()


def test_full_model_round_trip_through_from_pretrained(micro_model, tmp_path):
    model, processor = micro_model
    model.eval()
    batch = toy_batch(processor)
    save_policy(model, processor, tmp_path / "ckpt")
    loaded, loaded_proc = load_policy(tmp_path / "ckpt", device="cpu")
    assert type(loaded_proc).__name__ == "LlavaProcessor"
    assert loaded_proc.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, loaded(**loaded_proc_batch(loaded_proc)).logits, atol=1e-5)


def loaded_proc_batch(processor):
    return toy_batch(processor)


def test_lora_round_trip_loads_base_then_adapter(micro_model, tmp_path):
    model, processor = micro_model
    save_policy(model, processor, tmp_path / "base")
    lora, _ = build_model(ModelConfig(name_or_path=str(tmp_path / "base"), finetune="lora", lora_r=4))
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    save_policy(lora, processor, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    lora.eval()
    reloaded, proc = load_policy(tmp_path / "adapter", device="cpu")
    batch = toy_batch(proc)
    with torch.no_grad():
        assert torch.allclose(lora(**batch).logits, reloaded(**batch).logits, atol=1e-5)


@pytest.mark.parametrize("vision,projector", [(False, False), (True, False), (False, True)])
def test_lora_targets(micro_model, tmp_path, vision, projector):
    model, processor = micro_model
    save_policy(model, processor, tmp_path / "base")
    lora, _ = build_model(
        ModelConfig(name_or_path=str(tmp_path / "base"), lora_vision=vision, lora_projector=projector)
    )
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("language_model" in n for n in trainable)
    assert any("vision_tower" in n for n in trainable) == vision
    assert any("multi_modal_projector" in n for n in trainable) == projector
    assert not any("lm_head" in n for n in trainable)


def test_missing_checkpoint_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "no-such-checkpoint")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(ModelConfig(name_or_path=str(tmp_path / "missing"), tiny=MICRO_SPEC))
