"""`triton_fused` inside the tiny LLaVA: the same logits as SDPA on padded batches, the same DPO loss and
gradients after one step's backward pass, the same greedy tokens with a KV cache.

Same process rules as test_fused_attention.py (marker `triton`; TRITON_INTERPRET=1 or a GPU).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from align.config.sections import ModelConfig
from align.core.logprobs import response_logps
from align.core.losses.dpo import LOG2, dpo_pair_loss
from align.core.models import build_model
from kernels import fused_attention as op
from tests.conftest import MICRO_SPEC

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(
        not (op.INTERPRET or torch.cuda.is_available()),
        reason="needs a GPU or TRITON_INTERPRET=1 set before import (make test runs these that way)",
    ),
]
DEVICE = "cuda" if torch.cuda.is_available() and not op.INTERPRET else "cpu"
TRITON = {"text": "triton_fused", "vision": "triton_fused"}  # both towers: causal LM and bidirectional CLIP
SDPA = {"text_config": "sdpa", "vision_config": "sdpa"}
# (image seed, question, answer): lengths differ so every batch is padded
ROWS = [
    (1, "describe the image in detail.", "a red cup is at the top left and a blue bowl is at the center."),
    (2, "what is at the top left ?", "a dog."),
    (3, "how many cars are there ?", "two cars are at the bottom right."),
]


def _image(seed: int) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    side = MICRO_SPEC.image_size
    return Image.fromarray((torch.rand(side, side, 3, generator=gen) * 255).to(torch.uint8).numpy())


def _model(perturb: float = 0.0, spec=MICRO_SPEC):
    """The micro LLaVA in fp32 with the Triton backend on both towers; `perturb` adds seeded noise to the LM."""
    model, processor = build_model(ModelConfig(tiny=spec, finetune="full", attn_implementation=TRITON))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if perturb and "language_model" in name:
                param.add_(torch.randn(param.shape, generator=gen) * perturb)
    return model.to(DEVICE), processor


def _batch(processor, side: str, answers: bool, rows=ROWS) -> dict:
    processor.tokenizer.padding_side = side
    convs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for _, q, _ in rows]
    if answers:
        convs = [c + [{"role": "assistant", "content": a}] for c, (_, _, a) in zip(convs, rows)]
    texts = [processor.apply_chat_template(c, add_generation_prompt=not answers) for c in convs]
    batch = processor(images=[_image(s) for s, _, _ in rows], text=texts, return_tensors="pt", padding=True)
    return {k: v.to(DEVICE) for k, v in batch.items()}


@pytest.mark.parametrize("side", ["left", "right"])
def test_logits_match_sdpa_on_a_padded_batch(side):
    model, processor = _model()
    batch = _batch(processor, side, answers=True)
    real = batch["attention_mask"].bool()
    assert not real.all(), "the batch must be padded for this test to mean anything"
    with torch.no_grad():
        fused = model(**batch).logits
        model.set_attn_implementation(SDPA)
        sdpa = model(**batch).logits
    assert (fused[real] - sdpa[real]).abs().max() < 1e-5


def test_one_dpo_step_gives_the_same_loss_and_gradients():
    """Chosen = the real answers, rejected = the same rows' answers rotated; policy = perturbed LM, reference = the
    model without the perturbation; loss, then the backward pass, under each backend."""
    policy, processor = _model(perturb=0.05)
    reference, _ = _model()
    rejected_rows = [(s, q, ROWS[(i + 1) % len(ROWS)][2]) for i, (s, q, _) in enumerate(ROWS)]

    def encode(rows):  # every token but padding and image placeholders is scored
        b = _batch(processor, "right", answers=True, rows=rows)
        labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        labels = labels.masked_fill(b["input_ids"] == policy.config.image_token_id, -100)
        return {**b, "labels": labels, "token_weights": torch.ones(len(rows), labels.shape[1])}

    chosen, rejected = encode(ROWS), encode(rejected_rows)

    def loss_and_grads(impl):
        policy.set_attn_implementation(impl)
        reference.set_attn_implementation(impl)
        policy.zero_grad()
        pol_w, mask_w = response_logps(policy, chosen)
        pol_l, mask_l = response_logps(policy, rejected)
        with torch.no_grad():
            ref_w, _ = response_logps(reference, chosen)
            ref_l, _ = response_logps(reference, rejected)
        loss, _, _ = dpo_pair_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, 0.1, form="sequence")
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    fused_loss, fused_grads = loss_and_grads({"text_config": "triton_fused", "vision_config": "triton_fused"})
    sdpa_loss, sdpa_grads = loss_and_grads(SDPA)
    assert abs(sdpa_loss - LOG2) > 1e-3, "the perturbation is too small for the comparison to mean anything"
    assert fused_loss == pytest.approx(sdpa_loss, abs=1e-6)
    # every parameter but the vision tower's final LayerNorm (LLaVA reads the features before it)
    assert fused_grads.keys() == sdpa_grads.keys()
    assert {n for n, _ in policy.named_parameters()} - fused_grads.keys() == {
        "model.vision_tower.post_layernorm.weight",
        "model.vision_tower.post_layernorm.bias",
    }
    for name, grad in sdpa_grads.items():
        err = (fused_grads[name] - grad).abs().max().item()
        assert err <= 1e-5 + 1e-4 * grad.abs().max().item(), f"{name}: max gradient error {err:.3g}"
    attention = [g for n, g in fused_grads.items() if "self_attn.q_proj.weight" in n]
    assert len(attention) == MICRO_SPEC.text_layers + MICRO_SPEC.vision_layers
    assert all(g.abs().sum() > 0 for g in attention), "gradients reached every attention layer"


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generation_gives_the_same_tokens(cache):
    """Left-padded prompts, then one query per step against the KV cache; a static cache holds more slots than
    tokens, which the backend must not read. Two layers, so a wrong prefill at any position reaches the next
    layer's keys and values and so the generated tokens."""
    model, processor = _model(perturb=0.05, spec=dataclasses.replace(MICRO_SPEC, text_layers=2))
    batch = _batch(processor, "left", answers=False)
    settings = dict(max_new_tokens=10, do_sample=False, min_new_tokens=10, cache_implementation=cache)
    with torch.no_grad():
        fused = model.generate(**batch, **settings)
        model.set_attn_implementation(SDPA)
        sdpa = model.generate(**batch, **settings)
    assert fused.shape[1] == batch["input_ids"].shape[1] + 10
    assert torch.equal(fused, sdpa)
