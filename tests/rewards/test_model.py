"""The reward model (rewards/model.py): the pairwise loss against a hand computation, the fact-augmented prompt,
the reward read at each row's last real token whatever the padding, LoRA + head as the only trainable
parameters, and a save/load round trip that scores exactly as before."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from align.config.sections import ModelConfig
from align.core.data import VisionSFTCollator, encode_dataset, image_seq_length
from align.core.models import build_model, save_policy
from data_builders import toyworld as tw
from rewards.model import (
    FACTS_HEADER,
    RewardModel,
    last_token_index,
    load_reward_model,
    pairwise_loss,
    reward_prompt,
    save_reward_model,
)
from tests.conftest import MICRO_SPEC


def test_pairwise_loss_matches_a_hand_computation():
    chosen, rejected = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.0, 0.5, 2.5])
    margins = [1.0, -1.0, -0.5]
    sums = [1.0, 0.0, 4.5]  # r_c + r_r per pair
    margin_term = sum(math.log(1 + math.exp(-m)) for m in margins) / 3
    assert pairwise_loss(chosen, rejected, center_coef=0.0).item() == pytest.approx(margin_term, rel=1e-6)
    by_hand = margin_term + 0.1 * abs(sum(sums) / 3)
    assert pairwise_loss(chosen, rejected, center_coef=0.1).item() == pytest.approx(by_hand, rel=1e-6)
    centred = pairwise_loss(chosen - 5.5 / 6, rejected - 5.5 / 6, center_coef=0.1)  # a shift: same margins, sum 0
    assert centred.item() == pytest.approx(margin_term, rel=1e-6)


def test_reward_prompt_shuffles_every_fact_into_its_slot():
    facts = ["a red cup at the top left", "a blue car at the center", "a spoon"]
    text = reward_prompt("Describe the image.", facts, random.Random(3))
    head, listed, prompt = text.split("\n", 1)[0], text.split("\n\n")[0].split("\n")[1:], text.split("\n\n")[1]
    assert head == FACTS_HEADER and prompt == "Describe the image."
    assert sorted(line.removeprefix("  - ") for line in listed) == sorted(facts)
    orders = {tuple(reward_prompt("q", facts, random.Random(s)).split("\n")[1:4]) for s in range(20)}
    assert len(orders) > 1  # shuffled, and seeded: the same rng gives the same order
    assert reward_prompt("q", facts, random.Random(3)) == reward_prompt("q", facts, random.Random(3))
    assert reward_prompt("q", None) == "q" and reward_prompt("q", []) == "q"  # the plain reward model


def test_last_token_index_on_either_padding_side():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


@pytest.fixture(scope="module")
def policy_and_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    model, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0)
    base = save_policy(model, processor, root / "base")
    rng = np.random.default_rng(0)
    rows = []
    for i, response in enumerate(["a red cup.", "there is a blue car at the center and a spoon.", "no."]):
        image = tw.image_to_png(tw.render(tw.sample_scene(rng, tw.WorldConfig())[1], rng, 18.0))
        prompt = reward_prompt("Describe the image.", ["a red cup at the top left"] if i != 1 else None)
        rows.append({"id": f"r{i}", "image": {"bytes": image, "path": None}, "prompt": prompt, "response": response})
    encoded, _ = encode_dataset(rows, processor, 200, image_seq_length(model.config))
    return base, processor, encoded, rows


def lora_reward_model(base):
    model, _ = build_model(ModelConfig(name_or_path=str(base), finetune="lora", lora_r=4), seed=0)
    torch.manual_seed(0)
    return RewardModel(model)


def test_reward_is_read_at_the_last_real_token(policy_and_rows):
    base, processor, rows, _ = policy_and_rows
    rm = lora_reward_model(base).eval()
    batch = VisionSFTCollator(processor)(rows)
    with torch.no_grad():
        together = rm(**batch)
        alone = torch.cat([rm(**VisionSFTCollator(processor)([row])) for row in rows])
    assert together.shape == (3,)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)  # padding changes nothing
    assert len(set(together.round(decimals=5).tolist())) == 3


def test_only_lora_and_the_head_train_and_both_move(policy_and_rows):
    base, processor, rows, _ = policy_and_rows
    rm = lora_reward_model(base)
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    before = {n: p.detach().clone() for n, p in rm.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in rm.parameters() if p.requires_grad], lr=0.5)
    batch = VisionSFTCollator(processor)(rows[:2])
    for _ in range(2):  # LoRA's B starts at zero, so A moves from the second step on
        rewards = rm(**batch)
        pairwise_loss(rewards[:1], rewards[1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    unchanged = [n for n, p in rm.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged


def test_save_and_load_round_trip_scores_the_same(policy_and_rows, tmp_path):
    base, processor, rows, _ = policy_and_rows
    rm = lora_reward_model(base)
    with torch.no_grad():
        for p in rm.backbone.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))  # a trained adapter, not the identity
    rm.eval()
    batch = VisionSFTCollator(processor)(rows)
    with torch.no_grad():
        expected = rm(**batch)
    out = save_reward_model(rm, processor, tmp_path / "rm", base_model=str(base), facts=True)
    assert {"reward_head.safetensors", "reward_config.json", "adapter_model.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    loaded, loaded_processor, config = load_reward_model(out, device="cpu")
    assert config["facts"] is True and config["adapter"] is True
    with torch.no_grad():
        got = loaded(**VisionSFTCollator(loaded_processor)(rows))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="needs base_model"):
        save_reward_model(rm, processor, tmp_path / "bad", base_model=None, facts=False)
    with pytest.raises(FileNotFoundError, match="not a saved reward model"):
        load_reward_model(tmp_path)


def test_reward_inputs_tokenise_as_the_training_encoding(policy_and_rows):
    from align.core.data import to_pil
    from rewards.model import reward_inputs

    base, processor, rows, raw = policy_and_rows
    images = [to_pil(r["image"], r["id"]) for r in raw]
    batch = reward_inputs(processor, images, [r["prompt"] for r in raw], [r["response"] for r in raw])
    trained = VisionSFTCollator(processor)(rows)
    torch.testing.assert_close(batch["input_ids"], trained["input_ids"])
    torch.testing.assert_close(batch["attention_mask"], trained["attention_mask"])
    torch.testing.assert_close(batch["pixel_values"], trained["pixel_values"])


def test_a_saved_reward_model_scores_as_a_reward_function(policy_and_rows, tmp_path):
    from rewards.functions import RewardModelReward
    from rewards.model import score

    base, processor, rows, _ = policy_and_rows
    rm = lora_reward_model(base).eval()
    out = save_reward_model(rm, processor, tmp_path / "rm", base_model=str(base), facts=True)
    reward = RewardModelReward(str(out), device="cpu")
    facts = ["a red cup at the top left"]
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    completions = [[{"role": "assistant", "content": "a red cup."}], [{"role": "assistant", "content": "a dog."}]]
    images = [rows[0]["image"]] * 2
    got = reward([prompt, prompt], completions, image=images, facts=[json.dumps(facts)] * 2)
    with torch.no_grad():
        expected = score(rm, processor, images, ["Describe the image."] * 2, ["a red cup.", "a dog."], [facts] * 2)
    assert got == pytest.approx(expected, abs=1e-5) and got[0] != got[1]
    with pytest.raises(ValueError, match="reads facts"):
        reward([prompt], completions[:1], image=images[:1])
