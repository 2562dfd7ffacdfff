"""ToyWorld: determinism, ground-truth consistency of captions and questions, tokenizer coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_builders import toyworld as tw
from data_builders.toyworld_data import build_toyworld, config_hash, objects_from_json, sft_rows, summarize
from data_builders.toyworld_text import caption_mentions, sentence_cells, split_sentences
from tests.conftest import SMALL_WORLD


def test_glyphs_are_distinct_and_coarse():
    assert len(tw.CLASSES) >= 16 and len(set(tw.CLASSES)) == len(tw.CLASSES)
    for i in range(len(tw.GLYPHS)):
        for j in range(i):
            assert (tw.GLYPHS[i] != tw.GLYPHS[j]).sum() >= 6


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = build_toyworld(SMALL_WORLD, tmp_path / "a")
    b = build_toyworld(SMALL_WORLD, tmp_path / "b")
    for split in ("train", "test"):
        assert a[split]["caption"] == b[split]["caption"]
        assert (
            a[split].cast_column("image", a[split].features["image"].__class__(decode=False))["image"]
            == b[split].cast_column("image", b[split].features["image"].__class__(decode=False))["image"]
        )
    other = tw.WorldConfig(**{**SMALL_WORLD.__dict__, "seed": SMALL_WORLD.seed + 1})
    assert config_hash(other) != config_hash(SMALL_WORLD)
    assert build_toyworld(other, tmp_path / "c")["train"]["caption"] != a["train"]["caption"]


def test_splits_have_disjoint_images(small_world):
    seen = {}
    for split in ("train", "val", "test"):
        ds = small_world[split].cast_column("image", small_world[split].features["image"].__class__(decode=False))
        for img in ds["image"]:
            assert img["bytes"] not in seen, f"image shared between {seen.get(img['bytes'])} and {split}"
            seen[img["bytes"]] = split


def test_clean_captions_name_only_present_objects_and_injections_are_absent(small_world):
    n_injected = 0
    for split in ("train", "val", "test"):
        for ex in small_world[split]:
            objects = objects_from_json(ex["objects"])
            present = {o.name for o in objects}
            injected = objects_from_json(ex["injected"])
            mentioned = {c for c, _ in caption_mentions(ex["caption"])}
            assert {o.name for o in injected}.isdisjoint(present)
            assert mentioned == present | {o.name for o in injected}, ex["caption"]
            occupied = {c for o in objects for c in o.cells}
            for o in injected:  # an injected object sits at an empty cell
                assert not set(o.cells) & occupied
            n_injected += bool(injected)
            if split != "train":
                assert not injected
    assert n_injected > 0


def test_injected_sentences_are_not_only_last():
    rng = np.random.default_rng(0)
    positions = set()
    for _ in range(300):
        scene, objects = tw.sample_scene(rng, tw.WorldConfig())
        text, injected = tw.caption(scene, objects, rng, tw.WorldConfig(), inject=True)
        if injected:
            sentences = split_sentences(text)
            idx = next(
                i
                for i, s in enumerate(sentences)
                if injected[0].cells[0] in sentence_cells(s)
                and any(c == injected[0].name for c, _ in caption_mentions(s))
            )
            positions.add("last" if idx == len(sentences) - 1 else "middle")
    assert positions == {"last", "middle"}


def test_pope_labels_match_ground_truth(small_world):
    for ex in small_world["test"]:
        present = {o.name for o in objects_from_json(ex["objects"])}
        questions = json.loads(ex["pope"])
        assert {q["split"] for q in questions} == {"random", "popular", "adversarial"}
        for q in questions:
            assert (q["object"] in present) == (q["label"] == "yes")
            assert q["question"] == tw.pope_question(q["object"])


def test_adversarial_negatives_prefer_co_occurring_classes():
    objects = [tw.SceneObject("cup", "red", [0])]
    qs = tw.pope_questions(objects, np.random.default_rng(0), popular=list(tw.CLASSES))
    neg = [q["object"] for q in qs if q["split"] == "adversarial" and q["label"] == "no"]
    assert neg and all(tw.SCENE_OF[n] == "kitchen" for n in neg)


def test_qa_answers_are_consistent():
    rng = np.random.default_rng(3)
    for _ in range(50):
        scene, objects = tw.sample_scene(rng, tw.WorldConfig())
        by_name = {o.name: o for o in objects}
        for qa in tw.qa_pairs(scene, objects, rng):
            if qa["kind"] == "color":
                name = qa["question"].removeprefix("What color is the ").removesuffix("?")
                assert by_name[name].color == qa["answer"]


def test_every_text_tokenizes_without_unknown_words(small_world):
    from align.core.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    rows = sft_rows(small_world["train"])
    texts = list(rows["prompt"]) + list(rows["response"]) + list(small_world["test"]["caption"])
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text


def test_summary_reports_injection_share(small_world):
    s = summarize(small_world)
    assert 0 < s["train"]["injected_captions"] < 1
    assert s["test"]["injected_captions"] == 0


def test_world_config_rejects_bad_values():
    with pytest.raises(ValueError, match="inject_fraction"):
        tw.WorldConfig(inject_fraction=1.5)


def test_sft_rows_ask_one_present_and_one_absent_object_per_image(small_world):
    rows = sft_rows(small_world["train"]).select_columns(["id", "prompt", "response", "kind"])
    yesno = [r for r in rows if r["kind"] == "yesno"]
    assert len(yesno) == 2 * len(small_world["train"])
    for row in small_world["train"]:
        present = {o.name for o in objects_from_json(row["objects"])}
        mine = [r for r in yesno if r["id"].startswith(row["image_id"] + "/")]
        assert sorted(r["response"] for r in mine) == ["no", "yes"]
        for r in mine:
            name = r["prompt"].split("Is there a ")[1].split(" in the image?")[0]
            assert (name in present) == (r["response"] == "yes")


def test_parallel_builds_of_one_world_both_succeed(tmp_path):
    """Seeds run in parallel build the same world at once: neither may fail or see a half-written cache."""
    import concurrent.futures

    world = tw.WorldConfig(seed=3, n_train=8, n_val=2, n_test=2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        built = list(pool.map(lambda _: build_toyworld(world, tmp_path), range(2)))
    assert [len(b["train"]) for b in built] == [8, 8]
    assert [p.name for p in tmp_path.iterdir()] == [f"toyworld-{config_hash(world)}"]  # no partial left behind
