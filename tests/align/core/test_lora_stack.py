"""LoRA stacking (align/core/lora_stack.py): the update of the stacked adapter is the sum of its parts' updates,
with each part's own scaling; on a real micro LLaVA, two LoRAs trained one after another (the first merged before
the second) served as one stacked adapter over the first base give the merged policy's logits; what cannot be
stacked is refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch
from peft import get_peft_model

from align.config.sections import ModelConfig
from align.core.lora_stack import ADAPTER_CONFIG, lora_scaling, stack_lora, write_stacked_adapter
from align.core.models import build_model, load_policy, lora_config, save_policy
from tests.conftest import MICRO_SPEC

MODULE = "base_model.model.layer.q_proj"


def adapter(rank: int, alpha: float, seed: int, rslora: bool = False) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    weights = {
        MODULE + ".lora_A.weight": torch.randn(rank, 6, generator=g),
        MODULE + ".lora_B.weight": torch.randn(5, rank, generator=g),
    }
    return weights, {"r": rank, "lora_alpha": alpha, "use_rslora": rslora, "bias": "none"}


def delta(weights: dict, config: dict) -> torch.Tensor:
    return lora_scaling(config) * weights[MODULE + ".lora_B.weight"] @ weights[MODULE + ".lora_A.weight"]


def test_the_stacked_update_is_the_sum_of_the_parts():
    parts = [adapter(4, 8, 0), adapter(2, 16, 1, rslora=True), adapter(3, 3, 2)]
    stacked, config = stack_lora(parts)
    assert config["r"] == 9 and lora_scaling(config) == 1.0
    assert stacked[MODULE + ".lora_A.weight"].shape == (9, 6)
    torch.testing.assert_close(delta(stacked, config), sum(delta(*p) for p in parts), rtol=1e-5, atol=1e-5)
    assert lora_scaling(parts[1][1]) == pytest.approx(16 / 2**0.5)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"use_dora": True}, "use_dora"),
        ({"modules_to_save": ["mm_projector"]}, "modules_to_save"),
        ({"bias": "all"}, "biases"),
    ],
)
def test_what_is_not_plain_lora_is_refused(change, reason):
    weights, config = adapter(2, 2, 0)
    with pytest.raises(ValueError, match=reason):
        stack_lora([adapter(2, 2, 1), (weights, {**config, **change})])


def test_adapters_on_other_modules_are_refused():
    other = {k.replace("q_proj", "v_proj"): v for k, v in adapter(2, 2, 1)[0].items()}
    with pytest.raises(ValueError, match="other modules"):
        stack_lora([adapter(2, 2, 0), (other, adapter(2, 2, 1)[1])])
    with pytest.raises(ValueError, match="no adapters"):
        stack_lora([])


def _trained_lora(model, cfg: ModelConfig, seed: int):
    """A LoRA on `model` whose B is not zero (as after training), so it changes the outputs."""
    lora = get_peft_model(model, lora_config(cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return lora


def test_two_merged_rounds_are_served_exactly_as_one_stacked_adapter(tmp_path):
    cfg = ModelConfig(tiny=MICRO_SPEC, finetune="full", lora_r=4, lora_alpha=8, lora_vision=True, lora_projector=True)
    model, processor = build_model(cfg, seed=0)
    base = save_policy(model, processor, tmp_path / "base")
    rounds = []
    for r in range(2):  # round r: a LoRA on the previous round's merged policy, its adapter kept
        lora = _trained_lora(model, cfg, seed=r)
        lora.save_pretrained(tmp_path / f"adapter-{r}")
        model = lora.merge_and_unload()
        rounds.append(tmp_path / f"adapter-{r}")
    merged = save_policy(model, processor, tmp_path / "merged")

    folder, digest = write_stacked_adapter(rounds, base=str(base), out=tmp_path / "stacked")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == str(base)
    assert write_stacked_adapter(rounds, base=str(base), out=tmp_path / "again")[1] == digest  # names its content

    served, _ = load_policy(folder)
    expected, _ = load_policy(merged)
    start, _ = load_policy(base)
    g = torch.Generator().manual_seed(0)
    size = MICRO_SPEC.image_size
    pixels = torch.rand(2, 3, size, size, generator=g)
    ids = torch.randint(5, processor.tokenizer.vocab_size, (2, served.config.image_seq_length + 8), generator=g)
    ids[:, : served.config.image_seq_length] = served.config.image_token_id  # the image's places, then text
    with torch.no_grad():
        logits = [m(input_ids=ids, pixel_values=pixels).logits for m in (served, expected, start)]
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-5)
    assert (logits[1] - logits[2]).abs().max() > 1e-2  # the rounds did change the policy


def test_a_missing_adapter_names_its_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter-0"):
        write_stacked_adapter([tmp_path / "adapter-0"], base="base", out=tmp_path / "out")
