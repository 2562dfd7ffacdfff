"""Stage-0 vision pretraining: per-patch targets, the word-aligned class head, and what pretraining moves."""

from __future__ import annotations

import math

import torch

from align.config.sections import ModelConfig
from align.core.models import build_model
from align.core.vision_pretrain import WordAlignedClassHead, class_word_ids, patch_targets, pretrain_vision
from align.eval.probe import image_features
from data_builders import toyworld as tw
from data_builders.toyworld_data import objects_to_json
from tests.conftest import MICRO_SPEC


def test_patch_targets_follow_the_cells():
    objects = [tw.SceneObject("fork", "red", [0, 4]), tw.SceneObject("cup", "blue", [8], faint=True)]
    cls, col = patch_targets([objects_to_json(objects)], patches_per_side=3)
    empty_cls, empty_col = len(tw.CLASSES), len(tw.COLORS)
    fork, cup = tw.CLASSES.index("fork"), tw.CLASSES.index("cup")
    assert cls[0].tolist() == [fork] + [empty_cls] * 3 + [fork] + [empty_cls] * 3 + [cup]
    assert col[0, 0] == list(tw.COLORS).index("red") and col[0, 8] == list(tw.COLORS).index("blue")
    assert col[0, 1] == empty_col
    # 6x6 patches: four patches per cell, each labelled with the cell holding its centre
    cls6, _ = patch_targets([objects_to_json(objects)], patches_per_side=6)
    assert cls6[0].view(6, 6)[:2, :2].eq(fork).all() and cls6[0].view(6, 6)[4:, 4:].eq(cup).all()


def test_class_words_are_the_first_word_of_each_class_then_nothing():
    _, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"))
    tok = processor.tokenizer
    ids = class_word_ids(tok)
    assert len(ids) == len(tw.CLASSES) + 1 and len(set(ids)) == len(ids)
    words = tok.convert_ids_to_tokens(ids)
    assert words[tw.CLASSES.index("traffic light")] == "traffic" and words[-1] == "nothing"
    assert words[tw.CLASSES.index("fork")] == "fork"


def test_word_aligned_head_is_scaled_cosine_to_the_word_embeddings():
    emb = torch.nn.Embedding(5, 4)
    head = WordAlignedClassHead(emb, [3, 1])
    tokens = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 2.0, 0.0]]])
    with torch.no_grad():
        emb.weight[3] = torch.tensor([2.0, 0.0, 0.0, 0.0])
        emb.weight[1] = torch.tensor([0.0, 1.0, 0.0, 0.0])
        head.log_scale.fill_(math.log(10.0))
    logits = head(tokens)
    expected = 10.0 * torch.tensor([[[1.0, 0.0], [0.0, 1 / math.sqrt(2)]]])
    assert torch.allclose(logits, expected, atol=1e-6)


def test_aligned_pretraining_pulls_image_tokens_to_their_class_words(small_world):
    model, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0)
    emb = model.get_input_embeddings().weight
    before = emb.detach().clone()
    result = pretrain_vision(
        model, processor, small_world["train"], steps=400, lr=3e-3, batch_size=32, align_words=True
    )
    assert result["class_acc"] > 0.9, result

    ids = torch.tensor(class_word_ids(processor.tokenizer))
    moved = (emb.detach() - before).abs().sum(-1) > 0
    assert moved[ids].all(), "every class-word embedding trains with the head"
    others = torch.ones(len(emb), dtype=torch.bool)
    others[ids] = False
    assert not moved[others].any(), "no other word's embedding moves"

    # the image tokens now point at the embedding of their cell's class word, more than at any other class word
    sample = small_world["train"].select(range(16))
    tokens = image_features(model, processor, sample)
    cls, _ = patch_targets(sample["objects"], 3)
    with torch.no_grad():
        nearest_word = WordAlignedClassHead(model.get_input_embeddings(), ids.tolist())(tokens).argmax(-1)
    assert (nearest_word == cls).float().mean() > 0.9
