"""The HallE switch (align/core/switch.py): ε = 0 is exactly the base model, the algebra h + ε·W·h on what the head
reads, one ε per batch row, gradients into W alone, save/load through the project's loader, control tokens."""

from __future__ import annotations

import pytest
import torch

from align.config.sections import GenerationConfig
from align.core.data import VisionSFTCollator, encode_dataset, image_seq_length
from align.core.generation import generate
from align.core.logprobs import naive_response_logps, response_logps
from align.core.models import load_policy, save_policy
from align.core.switch import (
    ControlTokens,
    HalleSwitch,
    add_control_tokens,
    attach_switch,
    final_norm,
    find_switch,
    save_switch,
    switch_value,
    switched_prompt,
)


def _image(shade: int):
    from PIL import Image

    return Image.new("RGB", (48, 48), (shade, 60, 200 - shade))


def batch_for(model, processor, n: int = 2) -> dict:
    """n encoded caption rows of different lengths, collated as the recipes do (labels on the response only)."""
    rows = [
        {"id": str(i), "image": _image(40 * i), "prompt": "Describe the image in detail.",
         "response": "There is a red cup at the top." + " There is also a spoon." * i}
        for i in range(n)
    ]  # fmt: skip
    encoded, _ = encode_dataset(rows, processor, 96, image_seq_length(model.config))
    return VisionSFTCollator(processor)(encoded)


def _inputs(model, processor, n=2):
    batch = batch_for(model, processor, n)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}


def _random_switch(model) -> HalleSwitch:
    switch = attach_switch(model)
    with torch.no_grad():
        switch.weight.normal_(std=0.3)
    return switch


@torch.no_grad()
def test_zero_switch_value_is_exactly_the_base_model(micro_model):
    model, processor = micro_model
    model.eval()
    inputs = _inputs(model, processor)
    before = model(**inputs).logits
    _random_switch(model)  # W far from zero: ε = 0 must still change nothing
    assert torch.equal(model(**inputs).logits, before)
    with switch_value(model, torch.zeros(2)):
        assert torch.equal(model(**inputs).logits, before)


@torch.no_grad()
def test_switch_adds_epsilon_w_h_to_what_the_head_reads(micro_model):
    model, processor = micro_model
    model.eval()
    inputs = _inputs(model, processor)
    captured = {}
    hook = final_norm(model).register_forward_hook(lambda _m, _a, out: captured.setdefault("h", out))
    plain = model(**inputs).logits
    hook.remove()
    h = captured["h"]
    switch = _random_switch(model)
    for eps in (-1.0, 0.5):
        with switch_value(model, eps):
            logits = model(**inputs).logits
        expected = model.lm_head(h + eps * h @ switch.weight.T)
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(logits, plain)
    assert switch.epsilon == 0.0  # restored after the block


@torch.no_grad()
def test_one_epsilon_per_row_equals_each_row_at_its_own(micro_model):
    model, processor = micro_model
    model.eval()
    inputs = _inputs(model, processor)
    _random_switch(model)
    with switch_value(model, torch.tensor([-1.0, 1.0])):
        mixed = model(**inputs).logits
    for row, eps in enumerate((-1.0, 1.0)):
        with switch_value(model, eps):
            alone = model(**inputs).logits[row]
        torch.testing.assert_close(mixed[row], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch has 2 rows"), switch_value(model, torch.ones(3)):
        model(**inputs)


def test_gradient_reaches_w_alone_and_log_probs_see_the_switch(micro_model):
    model, processor = micro_model
    model.requires_grad_(False)
    switch = attach_switch(model).requires_grad_(True)
    with torch.no_grad():
        switch.weight.normal_(std=0.1)
    batch = batch_for(model, processor, 2)
    with switch_value(model, torch.tensor([-1.0, 1.0])):
        logps, mask = response_logps(model, batch)  # its head-input check passes: the switch is in hidden_states
        naive, _ = naive_response_logps(model, batch)
        torch.testing.assert_close(logps[mask], naive[mask], rtol=1e-4, atol=1e-4)
        (-(logps * mask).sum()).backward()
    assert switch.weight.grad is not None and switch.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if "halle_switch" not in n)


def test_switch_saved_beside_the_base_and_restored_by_load_policy(micro_model, tmp_path):
    model, processor = micro_model
    base = str(save_policy(model, processor, tmp_path / "base"))
    _random_switch(model)
    out = save_switch(model, tmp_path / "switch", base_model=base)
    processor.save_pretrained(out)
    loaded, _ = load_policy(out, device="cpu")
    assert isinstance(find_switch(loaded), HalleSwitch)
    assert find_switch(load_policy(out, device="cpu", switch=-0.5)[0]).epsilon == -0.5
    with pytest.raises(ValueError, match="no HallE switch"):
        load_policy(base, device="cpu", switch=0.5)
    model.eval()
    inputs = _inputs(model, processor)
    for eps in (0.0, -0.7):
        with torch.no_grad(), switch_value(model, eps), switch_value(loaded, eps):
            torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_switch_value_needs_a_switch_and_generation_takes_one_value(micro_model):
    model, processor = micro_model
    model.eval()
    with pytest.raises(ValueError, match="no HallE switch"), switch_value(model, 0.5):
        pass
    with switch_value(model, 0.0):  # 0 on a model without a switch is the model itself
        pass
    _random_switch(model)
    images = [_image(0), _image(120)]
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2)
    base = generate(model, processor, images, ["describe the image in detail ."] * 2, cfg)
    with switch_value(model, 1.0):
        moved = generate(model, processor, images, ["describe the image in detail ."] * 2, cfg)
    assert len(moved) == 2 and base == generate(model, processor, images, ["describe the image in detail ."] * 2, cfg)


def test_control_tokens_grow_the_vocabulary_and_lead_the_prompt(micro_model):
    model, processor = micro_model
    rows = model.get_input_embeddings().num_embeddings
    switch = ControlTokens()
    ids = add_control_tokens(model, processor, switch)
    assert len(ids) == 2 and min(ids) >= rows
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer)
    attach_switch(model, switch)
    assert switched_prompt(model, "Describe it.") == "Describe it."
    with switch_value(model, -0.5):
        assert switched_prompt(model, "Describe it.") == "<grounded> Describe it."
    with switch_value(model, 1.0):
        assert switched_prompt(model, "Describe it.") == "<imagine> Describe it."
    encoded = processor.tokenizer("<imagine> describe")["input_ids"]
    assert ids[1] in encoded and processor.tokenizer.decode(encoded, skip_special_tokens=True).strip() == "describe"
