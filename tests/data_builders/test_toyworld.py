"""ToyWorld: determinism, ground-truth consistency of captions and questions, tokenizer coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_builders import toyworld as tw
from data_builders import toyworld_questions as twq
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
    qs = twq.pope_questions(objects, np.random.default_rng(0), popular=list(tw.CLASSES))
    neg = [q["object"] for q in qs if q["split"] == "adversarial" and q["label"] == "no"]
    assert neg and all(tw.SCENE_OF[n] == "kitchen" for n in neg)


def test_qa_answers_are_consistent():
    rng = np.random.default_rng(3)
    for _ in range(50):
        scene, objects = tw.sample_scene(rng, tw.WorldConfig())
        by_name = {o.name: o for o in objects}
        for qa in twq.qa_pairs(scene, objects, rng):
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


# --- world v2: the language prior (faint objects, false "also" mentions) -------------------------------------------

V1_WORLD = dict(inject_fraction=0.45, faint_prob=0.0, false_mention_prob=0.0)
# sha256 of SMALL_WORLD's v1 content (ids, scenes, captions, questions, objects without the faint key, decoded
# pixels) as the generator before world v2 drew it: v2's knobs at 0 must leave v1 byte for byte as it was
V1_DIGEST = "b245fe1a170d4a60fde303210fa0f0c2679cde5b320946265799d896ce7097e2"


def world_digest(data) -> str:
    import hashlib
    import io

    from PIL import Image as PILImage

    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        ds = data[split].cast_column("image", data[split].features["image"].__class__(decode=False))
        for col in ("image_id", "scene", "caption", "qa", "pope"):
            h.update(json.dumps(list(ds[col])).encode())
        for col in ("objects", "injected"):
            rows = [
                json.dumps([{k: o[k] for k in ("name", "color", "cells")} for o in json.loads(x)]) for x in ds[col]
            ]
            h.update(json.dumps(rows).encode())
        for image in ds["image"]:
            h.update(np.asarray(PILImage.open(io.BytesIO(image["bytes"]))).tobytes())
    return h.hexdigest()


def test_v1_world_is_reproduced_exactly_with_the_v2_knobs_off(tmp_path):
    v1 = tw.WorldConfig(**{**SMALL_WORLD.__dict__, **V1_WORLD})
    assert world_digest(build_toyworld(v1, tmp_path)) == V1_DIGEST


@pytest.mark.parametrize("vocabulary", tw.FAINT_VOCABULARIES)
def test_faint_objects_are_scene_typical_at_an_empty_cell_and_drawn_faint(vocabulary):
    rng = np.random.default_rng(5)
    cfg = tw.WorldConfig(faint_prob=1.0, faint_vocabulary=vocabulary)
    pool = tw.SMALL if vocabulary == "small" else tw.SCENES
    n_faint = 0
    for _ in range(200):
        scene, objects = tw.sample_scene(rng, cfg)
        faint = [o for o in objects if o.faint]
        clear = [o for o in objects if not o.faint]
        assert len(faint) <= 1
        for o in faint:
            n_faint += 1
            assert o.name in pool[scene] and o.name not in {c.name for c in clear}
            assert o.count == 1 and not set(o.cells) & {c for x in clear for c in x.cells}
            # the pixels: with no noise the glyph is exactly the blend of background and colour, nothing else drawn
            img = np.asarray(tw.render([o], np.random.default_rng(0), 0.0, 0, cfg.faint_contrast)).astype(float)
            row, col = divmod(o.cells[0], tw.GRID)
            mask = np.kron(tw.GLYPHS[tw.CLASSES.index(o.name)], np.ones((3, 3), dtype=bool))
            patch = img[row * tw.CELL + 2 : row * tw.CELL + 14, col * tw.CELL + 2 : col * tw.CELL + 14]
            want = (1 - cfg.faint_contrast) * 45 + cfg.faint_contrast * np.array(tw.COLORS[o.color])
            assert np.allclose(patch[mask], np.floor(want), atol=1)
            assert np.allclose(patch[~mask], 45) and (img != 45).any(-1).sum() == mask.sum()
    assert n_faint > 150  # nearly every image has an absent same-scene class and an empty cell


def test_small_classes_are_only_ever_faint_or_made_up(small_world):
    """World v2c: the words of the "also" sentence never name a clearly drawn object, in any split."""
    small = {c for objs in tw.SMALL.values() for c in objs}
    assert small.isdisjoint(tw.CLEAR_CLASSES) and len(set(tw.CLASSES)) == len(tw.CLASSES)
    also = 0
    for split in ("train", "val", "test"):
        for ex in small_world[split]:
            for o in objects_from_json(ex["objects"]) + objects_from_json(ex["injected"]):
                assert (o.name in small) == o.faint
                assert o.name in tw.SMALL[ex["scene"]] if o.faint else True
            also += sum(c in small for c, _ in caption_mentions(ex["caption"]))
    assert also > 0


def test_typical_classes_and_adversarial_ranking_follow_the_faint_vocabulary():
    small, scene = tw.WorldConfig(), tw.WorldConfig(faint_vocabulary="scene")
    assert small.typical("kitchen") == tw.SCENES["kitchen"] + tw.SMALL["kitchen"]
    assert scene.typical("kitchen") == tw.SCENES["kitchen"]
    assert tw.WorldConfig(faint_prob=0, false_mention_prob=0).typical("park") == tw.SCENES["park"]  # v1: none drawn
    ranked = twq.cooccurrence_rank("fork", small)
    assert ranked[:8] == [c for c in tw.SCENES["kitchen"] + tw.SMALL["kitchen"] if c != "fork"]
    assert sorted(ranked + ["fork"]) == sorted(tw.CLASSES)
    assert sorted(twq.cooccurrence_rank("fork", scene) + ["fork"]) == sorted(tw.CLEAR_CLASSES)
    with pytest.raises(ValueError, match="faint_vocabulary"):
        tw.WorldConfig(faint_vocabulary="tiny")


def test_v2_rates_are_the_configured_ones():
    cfg = tw.WorldConfig(n_train=2000, n_val=1, n_test=1)
    rng = np.random.default_rng(1)
    scenes = [tw.sample_scene(rng, cfg) for _ in range(cfg.n_train)]
    faint_share = np.mean([any(o.faint for o in objs) for _, objs in scenes])
    assert abs(faint_share - cfg.faint_prob) < 0.05
    without = [(s, objs) for s, objs in scenes if not any(o.faint for o in objs)]
    said = [
        tw.caption(s, objs, rng, cfg, inject=False, false_mention=rng.random() < cfg.false_mention_prob)[1]
        for s, objs in without
    ]
    assert abs(np.mean([bool(x) for x in said]) - cfg.false_mention_prob) < 0.05


def test_v2_captions_name_faint_and_made_up_objects_without_a_place(small_world):
    assert SMALL_WORLD.faint_prob > 0 and SMALL_WORLD.false_mention_prob > 0  # the default world is v2
    seen = {"faint": 0, "made_up": 0}
    for split in ("train", "val", "test"):
        for ex in small_world[split]:
            objects = objects_from_json(ex["objects"])
            injected = objects_from_json(ex["injected"])
            sentences = split_sentences(ex["caption"])
            named = {c: sentence_cells(sentences[si]) for c, si in caption_mentions(ex["caption"])}
            for o in objects:
                assert o.name in named
                assert (named[o.name] == []) == o.faint  # clear objects with a place, faint ones without
                seen["faint"] += o.faint
            for o in injected:  # a made-up mention: train only, an absent scene-typical class, no faint object there
                assert split == "train" and o.faint and o.name in SMALL_WORLD.faint_pool(ex["scene"], set())
                assert named[o.name] == [] and not any(x.faint for x in objects)
                seen["made_up"] += 1
    assert seen["faint"] > 0 and seen["made_up"] > 0


def test_questions_never_ask_what_is_at_a_faint_cell():
    rng = np.random.default_rng(2)
    cfg = tw.WorldConfig(faint_prob=1.0)
    for _ in range(100):
        scene, objects = tw.sample_scene(rng, cfg)
        faint_cells = [tw.POSITIONS[c] for o in objects if o.faint for c in o.cells]
        for qa in twq.qa_pairs(scene, objects, rng):
            if qa["kind"] == "position":
                assert qa["question"].removeprefix("What is at the ").removesuffix("?") not in faint_cells


def test_four_yes_no_questions_ask_the_faint_object_and_both_negative_kinds(small_world):
    rows = sft_rows(small_world["train"], yes_no=4).select_columns(["id", "prompt", "response", "kind"])
    by_image = {}
    for r in rows:
        if r["kind"] == "yesno":
            by_image.setdefault(r["id"].split("/")[0], []).append(r)
    for ex in small_world["train"]:
        objects = objects_from_json(ex["objects"])
        mine = by_image[ex["image_id"]]
        names = [r["prompt"].split("Is there a ")[1].split(" in the image?")[0] for r in mine]
        assert len(set(names)) == len(names)
        for name, r in zip(names, mine):
            assert (name in {o.name for o in objects}) == (r["response"] == "yes")
        faint = [o.name for o in objects if o.faint]
        if faint:
            assert names[0] == faint[0]
        assert [r["response"] for r in mine].count("no") == 2


def test_llava_export_holds_every_sft_row_of_the_world(tmp_path, cache_dir, small_world):
    from data_builders.toyworld_data import export_toyworld_llava

    items = json.loads(export_toyworld_llava(tmp_path / "llava", SMALL_WORLD, cache_dir).read_text())
    answers = [turn["value"] for item in items for turn in item["conversations"] if turn["from"] == "gpt"]
    rows = sft_rows(small_world["train"], yes_no=SMALL_WORLD.yes_no_questions)
    assert sorted(answers) == sorted(rows["response"])
