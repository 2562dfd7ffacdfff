"""Chunked response log-probs (align/core/logprobs.py) equal the naive full-vocabulary form: values, masks and
gradients, on a tiny in-process LLaVA, plain and through a PEFT LoRA (adapter on and off), with empty rows."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.testing import assert_close
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from align.core import logprobs
from align.core.logprobs import naive_response_logps, response_logps

VOCAB, IMAGE_TOKEN, PAD = 300, 299, 0
IMAGE_SEQ = (32 // 16) ** 2  # 32 px images, 16 px patches
# (prompt, response) lengths per row; row 2 repeats row 0's text with a masked view of its image
ROWS = [(3, 6), (5, 2), (3, 6), (2, 9)]
TOL = {"atol": 1e-5, "rtol": 0}


def tiny_llava(bias: bool = False) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=16
    )
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, image_seq_length=IMAGE_SEQ,
        vision_feature_layer=-2, vision_feature_select_strategy="default",  # LLaVA-1.5 reads the penultimate layer
    )  # fmt: skip
    model = LlavaForConditionalGeneration(config).float()
    if bias:
        model.lm_head = torch.nn.Linear(32, VOCAB, bias=True)
    with torch.no_grad():  # a peaked head, as in a trained model: near-uniform log-probs would hide a wrong shift
        model.lm_head.weight.normal_(0, 1)
        if bias:
            model.lm_head.bias.normal_(0, 1)
    return model


def make_batch(rows=ROWS) -> dict:
    """Right-padded rows: [bos, <image> x IMAGE_SEQ, prompt, response, pad...]; only the response is scored."""
    g = torch.Generator().manual_seed(1)
    length = 1 + IMAGE_SEQ + max(p + r for p, r in rows) + 2
    ids = torch.full((len(rows), length), PAD)
    labels = torch.full_like(ids, -100)
    for i, (p, r) in enumerate(rows):
        text = torch.randint(1, IMAGE_TOKEN, (p + r,), generator=g)
        row = torch.cat([torch.tensor([1]), torch.full((IMAGE_SEQ,), IMAGE_TOKEN), text])
        ids[i, : len(row)] = row
        labels[i, len(row) - r : len(row)] = row[-r:] if r else labels[i, :0]
    ids[2], labels[2] = ids[0], labels[0]
    pixels = torch.randn(len(rows), 3, 32, 32, generator=g)
    pixels[2] = pixels[0]
    pixels[2, :, :, :16] = pixels[0].mean()  # a masked view: the left half of row 0's image set to its mean
    return {"input_ids": ids, "attention_mask": (ids != PAD).long(), "pixel_values": pixels, "labels": labels}


def lora(model):
    # random B (not zeros) so that the adapter changes the outputs and disable_adapter() is observable
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    return get_peft_model(model, config)


def grads(model, fn, batch) -> dict:
    model.zero_grad(set_to_none=True)
    logps, mask = fn(model, batch)
    (logps * mask).sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_installed_transformers_gives_the_head_input_as_last_hidden_state():
    model, batch = tiny_llava(), make_batch()
    full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for selection in (True, logprobs._hidden_state_selection(model)):
        out = model(
            **{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=selection, logits_to_keep=1
        )
        assert out.logits.shape == (len(ROWS), 1, VOCAB)
        assert torch.equal(model.lm_head(out.hidden_states[-1]), full)


def test_values_and_masks_match_naive_over_several_chunks(monkeypatch):
    model, batch = tiny_llava(), make_batch()
    calls = []
    real = logprobs.checkpoint
    monkeypatch.setattr(logprobs, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    new, new_mask = response_logps(model, batch, chunk_size=4)
    ref, ref_mask = naive_response_logps(model, batch)
    scored = sum(r for _, r in ROWS)
    assert len(calls) == math.ceil(scored / 4) > 1  # several chunks, each checkpointed
    assert new.dtype == torch.float32 and new_mask.dtype == torch.bool
    assert new.shape == ref.shape == (len(ROWS), max(r for _, r in ROWS))
    assert torch.equal(new_mask, ref_mask)
    assert new_mask.sum(1).tolist() == [r for _, r in ROWS]
    assert_close(new, ref, **TOL)
    assert torch.all(new[~new_mask] == 0)
    # the data can tell a wrong answer apart: log-probs spread, the masked view differs, a one-off shift differs
    assert ref[ref_mask].std() > 1.0
    assert (new[2] - new[0]).abs().max() > 1e-3
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = batch["labels"][:, 1:]
    shifted = torch.log_softmax(logits[:, 1:], -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert (shifted[labels != -100] - ref[ref_mask]).abs().max() > 0.5


@pytest.mark.parametrize("variant", ["plain", "bias", "lora"])
def test_gradients_match_naive(variant):
    model = lora(tiny_llava()) if variant == "lora" else tiny_llava(bias=variant == "bias")
    batch = make_batch()
    new = grads(model, lambda m, b: response_logps(m, b, chunk_size=5), batch)
    ref = grads(model, naive_response_logps, batch)
    assert new.keys() == ref.keys()
    # only the vision tower's last layer goes unused (vision_feature_layer=-2); every other gradient is nonzero
    unused = {n for n in ref if "vision_tower.encoder.layers.1." in n or "vision_tower.post_layernorm" in n}
    assert unused and {n for n, g in ref.items() if g is None} == unused
    assert all(g.abs().max() > 0 for n, g in ref.items() if n not in unused)
    for name, g in ref.items():
        assert (new[name] is None) == (g is None), name
        if g is not None:  # to 1e-5 of the tensor's scale (gradients reach ~500 here; fp32 rounding is ~1e-6 of it)
            gap, scale = (new[name] - g).abs().max().item(), max(1.0, g.abs().max().item())
            assert gap <= 1e-5 * scale, f"{name}: gap {gap:.3g} at scale {scale:.3g}"
    if variant != "lora":
        assert new["lm_head.weight"].abs().max() > 0


def test_peft_lora_with_and_without_the_adapter():
    model, batch = lora(tiny_llava()), make_batch()
    on, on_mask = response_logps(model, batch, chunk_size=5)
    ref, ref_mask = naive_response_logps(model, batch)
    assert torch.equal(on_mask, ref_mask)
    assert_close(on, ref, **TOL)
    with torch.no_grad(), model.disable_adapter():  # the reference pass of the DPO trainers
        off, off_mask = response_logps(model, batch, chunk_size=5)
        off_ref, _ = naive_response_logps(model, batch)
    assert torch.equal(off_mask, ref_mask)
    assert_close(off, off_ref, **TOL)
    assert (on - off).abs().max() > 1e-3  # the adapter was really on, then really off


def test_a_row_with_nothing_scored_and_an_explicit_width():
    model, rows = tiny_llava(), [(3, 6), (5, 0), (2, 3)]
    batch = make_batch(rows)
    new, new_mask = response_logps(model, batch, width=12, chunk_size=4)
    ref, ref_mask = naive_response_logps(model, batch, width=12)
    assert new.shape == new_mask.shape == (3, 12)
    assert torch.equal(new_mask, ref_mask) and not new_mask[1].any()
    assert_close(new, ref, **TOL)
    assert torch.all(new[1] == 0)
    with pytest.raises(ValueError, match="width"):
        response_logps(model, batch, width=5)


def test_a_batch_with_nothing_scored_stays_in_the_graph():
    model, batch = tiny_llava(), make_batch()
    batch["labels"][:] = -100
    logps, mask = response_logps(model, batch)
    assert logps.shape == mask.shape == (len(ROWS), 0)
    logps, mask = response_logps(model, batch, width=3)
    assert logps.shape == (len(ROWS), 3) and not mask.any() and torch.all(logps == 0)
    (logps * mask).sum().backward()  # every parameter gets a (zero) gradient, as DDP's reducer expects
    assert model.lm_head.weight.grad is not None and torch.all(model.lm_head.weight.grad == 0)


def test_logits_changed_after_the_head_are_refused():
    model, batch = tiny_llava(), make_batch()

    def soft_cap(module, args, output):
        output.logits = 30 * torch.tanh(output.logits / 30)

    model.register_forward_hook(soft_cap)
    with pytest.raises(RuntimeError, match="output head"):
        response_logps(model, batch)
