"""HallE-Switch data: ToyWorld captions split into grounded (ε = −1) and parametric (ε = +1) text against ground
truth, the indication variant's brackets, real captions with object lists, and HallE's own hall_factor file."""

from __future__ import annotations

import io
import json
import re

import PIL.Image
import pytest

from data_builders import toyworld as tw
from data_builders.halle import (
    bracket_objects,
    caption_without,
    grounded_and_parametric,
    import_hall_factor,
    switch_rows_from_annotations,
    toyworld_indication_rows,
    toyworld_switch_rows,
)
from data_builders.toyworld_data import build_toyworld
from data_builders.toyworld_text import SYNONYMS, caption_mentions

V2_WORLD = tw.WorldConfig(n_train=40, n_val=2, n_test=2)
# v1's injected objects at a cell and v2's "also a X" in one world: a caption may name two absent classes
MIXED_WORLD = tw.WorldConfig(seed=5, n_train=40, n_val=2, n_test=2, inject_fraction=0.45)
ROW_KEYS = {"id", "image", "prompt", "response", "epsilon", "kind"}


@pytest.fixture(scope="module", params=[V2_WORLD, MIXED_WORLD], ids=["v2", "mixed"])
def world(request, tmp_path_factory):
    cfg = request.param
    return cfg, build_toyworld(cfg, tmp_path_factory.mktemp("toyworld"))["train"]


def classes(text: str) -> set[str]:
    return {name for name, _ in caption_mentions(text)}


def truth(record: dict) -> tuple[set[str], bool]:
    objects = json.loads(record["objects"])
    return {o["name"] for o in objects}, any(o["faint"] for o in objects)


def test_grounded_and_parametric_follow_the_records(world):
    _, split = world
    for record in split:
        grounded, parametric = grounded_and_parametric(record)
        present, _ = truth(record)
        assert set(grounded) == present  # a faint object is in the image
        assert set(parametric) == {o["name"] for o in json.loads(record["injected"])}
        assert classes(record["caption"]) == present | set(parametric)


def test_switch_rows_split_each_caption_by_ground_truth(world):
    cfg, split = world
    rows = toyworld_switch_rows(split, cfg)
    assert len(rows) == 2 * len(split)
    added = 0
    for record, low, high in zip(split, rows[0::2], rows[1::2]):
        present, faint = truth(record)
        named_absent = classes(record["caption"]) - present
        assert (low["kind"], low["epsilon"], high["kind"], high["epsilon"]) == ("grounded", -1.0, "parametric", 1.0)
        assert low["id"] == f"{record['image_id']}/grounded" and high["id"] == f"{record['image_id']}/parametric"
        assert set(low) == set(high) == ROW_KEYS
        assert low["prompt"] == high["prompt"] and low["prompt"] in tw.CAPTION_PROMPTS
        assert low["image"] == high["image"] and low["image"]["bytes"].startswith(b"\x89PNG")
        assert classes(low["response"]) == classes(record["caption"]) & present  # absent ones out, present kept
        assert classes(high["response"]) - present >= named_absent
        if named_absent or faint:
            assert high["response"] == record["caption"]
        else:
            assert len(classes(high["response"]) - present) == 1
            assert high["response"].startswith(record["caption"] + " ")
            added += 1
    assert added > 0


def test_v2_parametric_rows_without_a_faint_object_name_exactly_one_absent_class(tmp_path):
    split = build_toyworld(V2_WORLD, tmp_path)["train"]
    for record, row in zip(split, toyworld_switch_rows(split, V2_WORLD)[1::2]):
        present, faint = truth(record)
        if not faint:
            assert len(classes(row["response"]) - present) == 1


def test_switch_and_indication_rows_are_deterministic(world):
    cfg, split = world
    assert toyworld_switch_rows(split, cfg, seed=3) == toyworld_switch_rows(split, cfg, seed=3)
    assert toyworld_indication_rows(split, seed=3) == toyworld_indication_rows(split, seed=3)
    prompts = [[r["prompt"] for r in toyworld_indication_rows(split, seed=s)] for s in (0, 1)]
    assert prompts[0] != prompts[1]


def test_indication_rows_bracket_exactly_the_absent_classes(world):
    cfg, split = world
    rows = toyworld_indication_rows(split, seed=2)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in toyworld_switch_rows(split, cfg, seed=2)[0::2]]
    for record, row in zip(split, rows):
        present, _ = truth(record)
        assert row["kind"] == "indication" and row["epsilon"] == 0.0 and set(row) == ROW_KEYS
        bracketed = re.findall(r"\[([^\]]+)\]", row["response"])
        assert {SYNONYMS[word.lower()] for word in bracketed} == classes(record["caption"]) - present
        assert row["response"].replace("[", "").replace("]", "") == record["caption"]


def test_caption_without_reads_synonyms_plurals_and_two_word_names():
    caption = (
        "A kitchen is shown. I can see a red mug at the top. Two blue knives are at the left. There is a cupboard."
    )
    kept = "A kitchen is shown. Two blue knives are at the left. There is a cupboard."
    assert caption_without(caption, {"cup"}) == kept
    assert caption_without(caption, {"knife", "cup"}) == "A kitchen is shown. There is a cupboard."
    assert caption_without(caption, {"bus"}) == caption
    street = "Two green traffic lights are at the top.  There is also a bike. A sign is at the left."
    assert caption_without(street, {"traffic light"}) == "There is also a bike. A sign is at the left."
    assert caption_without(street, {"bicycle"}) == "Two green traffic lights are at the top. A sign is at the left."


def test_bracket_objects_marks_mentions_as_written():
    assert bracket_objects("There is also a spoon.", {"spoon"}) == "There is also a [spoon]."
    caption = "A red mug is at the top. Two traffic lights are at the left. There is a Traffic Light and a cup."
    assert bracket_objects(caption, {"cup", "traffic light"}) == (
        "A red [mug] is at the top. Two [traffic lights] are at the left. There is a [Traffic Light] and a [cup]."
    )
    assert bracket_objects(caption, {"traffic light"}).count("[") == 2
    assert bracket_objects("The traffic. Light is on. Dogs and a puppy.", {"dog"}) == (
        "The traffic. Light is on. [Dogs] and a [puppy]."
    )
    assert bracket_objects(caption, set()) == caption


def png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def item(item_id, image, caption=None, **extra):
    turns = [{"from": "human", "value": "<image>\nDescribe the image."}]
    if caption is not None:
        turns.append({"from": "gpt", "value": caption})
    return {"id": item_id, "image": image, "conversations": turns, **extra}


@pytest.fixture
def llava(tmp_path):
    (tmp_path / "coco").mkdir()
    for name in ("a.png", "coco/b.png", "d.png", "f.png", "g.png"):
        (tmp_path / name).write_bytes(png())
    items = [
        item("a", "a.png", "A dog is on the grass. Two cats sit nearby.\nThe dog has a frisbee!"),
        item("b", "coco/b.png", "The traffic lights are red. A puppy crosses the road."),
        item("c", "c.png", "A dog."),  # not in the objects file
        item("d", "d.png"),  # no reply
        item("e", "e.png", "A dog."),  # listed, but the file is missing
        item("f", "f.png", "Two dogs run. A dog barks."),  # every sentence names an absent object
        item("g", "g.png", "An empty room."),  # no object named: both rows keep the caption
    ]
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(items))
    return path


OBJECTS = {
    "a.png": ["dog", "frisbee"],
    "b.png": ["traffic light"],  # found by base name: the item says coco/b.png
    "d.png": ["dog"],
    "e.png": ["dog"],
    "f.png": ["cat"],
    "g.png": [],
}


def coco(objects: dict) -> dict:
    names = sorted({n for names in objects.values() for n in names} | {"bus"})
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(names)]
    images = [{"id": k, "file_name": f} for k, f in enumerate(objects)]
    annotations = [
        {"id": len(images) * 10 + j, "image_id": k, "category_id": names.index(n) + 1}
        for k, f in enumerate(objects)
        for j, n in enumerate(objects[f])
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.mark.parametrize("form", ["coco", "plain"])
def test_switch_rows_from_annotations(llava, tmp_path, form):
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps(coco(OBJECTS) if form == "coco" else OBJECTS))
    rows, report = switch_rows_from_annotations(llava, objects, synonyms={"puppy": "dog"})
    by_id = {r["id"]: r for r in rows}
    assert by_id["a/grounded"]["response"] == "A dog is on the grass. The dog has a frisbee!"
    assert by_id["a/parametric"]["response"] == "A dog is on the grass. Two cats sit nearby.\nThe dog has a frisbee!"
    assert by_id["b/grounded"]["response"] == "The traffic lights are red."
    assert by_id["g/grounded"]["response"] == by_id["g/parametric"]["response"] == "An empty room."
    for row in rows:
        assert set(row) == ROW_KEYS and row["prompt"] == "Describe the image."
        assert (row["kind"], row["epsilon"]) in {("grounded", -1.0), ("parametric", 1.0)}
        assert PIL.Image.open(row["image"]["path"]).size == (8, 8)
    assert {k: report[k] for k in ("items_read", "items_kept", "rows", "parametric_mentions")} == {
        "items_read": 7,
        "items_kept": 3,
        "rows": 6,
        "parametric_mentions": 2,
    }
    skipped = {k: v for k, v in report["skipped"].items() if v}
    assert skipped == {"no_objects": 1, "missing_field": 1, "bad_image": 1, "no_grounded_text": 1}
    limited, small = switch_rows_from_annotations(llava, objects, limit=2)
    assert small["items_read"] == 2 and len(limited) == 4
    grounded = {r["id"]: r["response"] for r in limited if r["kind"] == "grounded"}
    assert grounded["b/grounded"] == "The traffic lights are red. A puppy crosses the road."  # no synonym given


def test_import_hall_factor(tmp_path):
    (tmp_path / "x.png").write_bytes(png())
    factors = {"a": -1, "b": "1", "c": 1.0, "d": None, "e": 0, "f": "yes", "g": True, "h": " -1 "}
    items = [
        item(k, "x.png", f"Caption {k}.", **({} if v is None else {"hall_factor": v})) for k, v in factors.items()
    ]
    items.append(item("i", "missing.png", "Caption i.", hall_factor=1))
    path = tmp_path / "detail_switch_23k.json"
    path.write_text(json.dumps(items))
    rows, report = import_hall_factor(path)
    assert {r["response"]: r["epsilon"] for r in rows} == {
        "Caption a.": -1.0,
        "Caption b.": 1.0,
        "Caption c.": 1.0,
        "Caption h.": -1.0,
    }
    assert all(r["kind"] == "hall_factor" and set(r) == ROW_KEYS for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    assert report["items_read"] == 9 and report["items_kept"] == report["rows"] == 4
    skipped = {k: v for k, v in report["skipped"].items() if v}
    assert skipped == {"missing_hall_factor": 1, "bad_hall_factor": 3, "bad_image": 1}


@pytest.mark.parametrize(
    "llava_text, objects_text, culprit, expected",
    [
        ("[not json", "{}", "items", "expected a JSON list of items"),
        ('{"id": 1}', "{}", "items", "expected a JSON list of items, got a dict"),
        ("[]", "{oops", "objects", "not valid JSON"),
        ("[]", '[{"a.png": ["dog"]}]', "objects", "got a JSON list"),
        ("[]", '{"a.png": "dog"}', "objects", "expected a list of object names"),
        ("[]", '{"images": [], "annotations": [{"image_id": 9}], "categories": []}', "objects", "malformed"),
    ],
)
def test_malformed_files_raise_naming_the_file(tmp_path, llava_text, objects_text, culprit, expected):
    llava, objects = tmp_path / "items.json", tmp_path / "objects.json"
    llava.write_text(llava_text)
    objects.write_text(objects_text)
    with pytest.raises(ValueError, match=re.escape(expected)) as err:
        switch_rows_from_annotations(llava, objects)
    assert str(tmp_path / f"{culprit}.json") in str(err.value)
    if objects_text == "{}":
        with pytest.raises(ValueError, match=re.escape(str(llava))):
            import_hall_factor(llava)
