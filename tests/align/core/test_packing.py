"""Packed SFT batches (`data.packing`, align/core/data.py `pack_rows` / `VisionSFTCollator.packed`): bins never
exceed max_length and hold every row once; a packed batch gives the padded batch's loss, and each packed row the
logits it has alone (no attention across rows); the configs refuse packing where it cannot work; an SFT run packs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from align.config.recipes import DPORecipeConfig, SFTConfig
from align.config.sections import DataConfig, ModelConfig
from align.core.data import VisionSFTCollator, encode_dataset, image_seq_length, pack_rows
from align.recipes.sft import main as sft_main
from data_builders import toyworld as tw
from tests.conftest import MICRO_SPEC, micro_sft_config


def test_bins_hold_every_row_once_within_the_capacity():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 30))]
        bins = pack_rows(lengths, 60)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= 60 for b in bins)
        # first-fit decreasing never leaves two bins that one could hold together
        loads = sorted(sum(lengths[i] for i in b) for b in bins)
        assert len(bins) == 1 or loads[0] + loads[1] > 60
    assert pack_rows([70, 10, 55], 60) == [[0], [2], [1]]  # a row longer than the capacity gets a bin of its own
    assert pack_rows([30, 30, 30], 60) == [[0, 1], [2]]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from align.core.models import build_model

    model, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0)
    rng = np.random.default_rng(0)
    rows = []
    for i, words in enumerate([3, 12, 7, 20, 1, 9, 15, 4]):
        image = tw.image_to_png(tw.render(tw.sample_scene(rng, tw.WorldConfig())[1], rng, 18.0))
        rows.append({"id": f"r{i}", "image": {"bytes": image, "path": None}, "prompt": "what is here ?",
                     "response": " ".join(["red cup"] * words)})  # fmt: skip
    encoded, _ = encode_dataset(rows, processor, 160, image_seq_length(model.config))
    return model.eval(), processor, encoded


def test_a_packed_batch_has_the_padded_batch_loss(micro):
    model, processor, rows = micro
    padded = VisionSFTCollator(processor)(rows)
    packed = VisionSFTCollator(processor, packing=True, max_length=96)(rows)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # less padding: the point of it
    assert len(packed["input_ids"]) < len(rows) and packed["input_ids"].shape[1] <= 96
    with torch.no_grad():
        assert model(**packed).loss.item() == pytest.approx(model(**padded).loss.item(), abs=1e-5)


def test_packed_rows_do_not_attend_to_each_other(micro):
    model, processor, rows = micro
    collate = VisionSFTCollator(processor, packing=True, max_length=160)
    batch = collate(rows[:3])
    assert len(batch["input_ids"]) == 1  # all three in one row
    with torch.no_grad():
        logits = model(**batch).logits[0]
        order = sorted(range(3), key=lambda i: -len(rows[i]["input_ids"]))  # first-fit decreasing's order
        start = 0
        for i in order:
            n = len(rows[i]["input_ids"])
            alone = model(**VisionSFTCollator(processor)([rows[i]])).logits[0]
            torch.testing.assert_close(logits[start : start + n], alone, atol=1e-5, rtol=1e-5)
            start += n


def test_configs_refuse_packing_where_it_cannot_work(tmp_path):
    with pytest.raises(ValueError, match="cannot keep packed rows apart"):
        SFTConfig(model=ModelConfig(tiny=MICRO_SPEC, finetune="full", attn_implementation="triton_fused"),
                  data=DataConfig(packing=True))  # fmt: skip
    SFTConfig(model=ModelConfig(tiny=MICRO_SPEC, finetune="full", attn_implementation={"text": "eager"}),
              data=DataConfig(packing=True))  # fmt: skip
    with pytest.raises(ValueError, match="a DPO batch stays one row per answer"):
        DPORecipeConfig(model=ModelConfig(name_or_path=str(tmp_path)), data=DataConfig(packing=True))


@pytest.mark.parametrize("power", [0.0, 0.35, 1.0])
def test_a_packed_batch_has_the_padded_batch_row_weighted_loss(micro, power):
    """row_weight_power weighs each packed row by its own token count, not by its bin's."""
    from align.recipes.sft import RowWeightedSFTTrainer, row_token_counts

    model, processor, rows = micro
    padded = VisionSFTCollator(processor)(rows)
    packed = VisionSFTCollator(processor, packing=True, max_length=96)(rows)
    assert len(packed["input_ids"]) < len(rows)  # some bins hold several rows
    trainer = RowWeightedSFTTrainer.__new__(RowWeightedSFTTrainer)  # compute_loss alone, no Trainer set-up
    trainer.row_weight_power = power
    with torch.no_grad():
        loss_packed, loss_padded = trainer.compute_loss(model, packed), trainer.compute_loss(model, padded)
    assert loss_packed.item() == pytest.approx(loss_padded.item(), abs=1e-5)
    # the counts themselves: one per row, whichever bin it went to (sorted, as packing reorders the rows)
    n, index = row_token_counts(packed["labels"], packed["position_ids"])
    assert sorted(n.tolist()) == sorted(float((torch.tensor(r["labels"][1:]) != -100).sum()) for r in rows)
    assert len(index) == int((packed["labels"][:, 1:] != -100).sum())


def test_sft_trains_on_packed_batches(tmp_path, cache_dir):
    cfg = micro_sft_config(tmp_path / "packed", cache_dir, steps=12, eval_at_end=False)
    cfg.data.packing = True
    summary = sft_main(cfg)
    losses = [loss for _, loss in summary["loss_history"]]
    assert len(losses) == 2 and losses[-1] < losses[0]


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_row_weights_weigh_short_rows_up(tmp_path, cache_dir, power):
    """row_weight_power: p weighs each row's tokens n^-p (checked by hand on one batch: p = 1 is the mean of the
    rows' means); an SFT run trains with it."""
    from align.core.logprobs import response_logps
    from align.recipes.sft import RowWeightedSFTTrainer

    model, processor = __import__("align.core.models", fromlist=["build_model"]).build_model(
        ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0
    )
    rng = np.random.default_rng(1)
    rows = [
        {"id": f"r{i}", "image": {"bytes": tw.image_to_png(tw.render(tw.sample_scene(rng, tw.WorldConfig())[1], rng,
         18.0)), "path": None}, "prompt": "what is here ?", "response": text}
        for i, text in enumerate(["yes.", "a red cup is at the top left and a blue bowl at the center."])
    ]  # fmt: skip
    encoded, _ = encode_dataset(rows, processor, 160, image_seq_length(model.config))
    batch = VisionSFTCollator(processor)(encoded)
    trainer = RowWeightedSFTTrainer.__new__(RowWeightedSFTTrainer)  # compute_loss alone, no Trainer set-up
    trainer.row_weight_power = power
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # token NLLs far apart, so the two averages differ
        loss = trainer.compute_loss(model, batch)
        logps, mask = response_logps(model, batch)
        nll = [-logps[i][mask[i]].sum() for i in range(2)]
        n = [float(mask[i].sum()) for i in range(2)]
        by_hand = sum(nll[i] * n[i] ** -power for i in range(2)) / sum(n[i] ** (1 - power) for i in range(2))
        if power == 1.0:
            assert by_hand.item() == pytest.approx(sum(nll[i] / n[i] for i in range(2)).item() / 2, abs=1e-6)
        token_mean = model(**batch).loss
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert abs(loss.item() - token_mean.item()) > 0.05  # the short row weighs more than its tokens
    cfg = micro_sft_config(tmp_path / "row", cache_dir, steps=12, eval_at_end=False, row_weight_power=power)
    losses = [loss for _, loss in sft_main(cfg)["loss_history"]]
    assert len(losses) == 2 and losses[-1] < losses[0]
