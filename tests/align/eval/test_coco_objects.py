"""COCO 2014 ground truth from annotation files: a tiny hand-written instances/captions set, the cache, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.eval import coco_objects
from align.eval.benchmarks.objhal import caption_categories
from align.eval.coco_objects import annotation_files, build_image_objects, read_image_objects, vocabulary_fingerprint
from align.eval.objhal_text import parse_synonyms

VOCAB = parse_synonyms(
    "person, man, woman, brother\ndog, puppy\ncat, kitten\nchair, seat\ntoilet\n"
    "dining table, table, coffee table\nfire hydrant, hydrant\n"
)
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 62, "name": "chair"}]


def instances(images: list[int], anns: list[tuple[int, int]]) -> dict:
    return {
        "images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in images],
        "annotations": [{"id": n, "image_id": i, "category_id": c} for n, (i, c) in enumerate(anns)],
        "categories": CATEGORIES,
    }


def captions(images: list[int], caps: list[tuple[int, str]]) -> dict:
    return {
        "images": [{"id": i} for i in images],
        "annotations": [{"id": n, "image_id": i, "caption": c} for n, (i, c) in enumerate(caps)],
    }


def write_val(root: Path) -> Path:
    """Three val images: 1 has a person and a dog annotated, 2 a chair, 3 nothing; captions add more."""
    root.mkdir(parents=True, exist_ok=True)
    inst = instances([1, 2, 3], [(1, 1), (1, 18), (1, 18), (2, 62)])
    caps = captions(
        [1, 2, 3],
        [
            (1, "A man walks two puppies."),  # person, dog: nothing new
            (1, "My brother at a coffee table."),  # refined terms: person, dining table
            (2, "The seat of a toilet."),  # toilet/seat rule: toilet only, no chair from the caption
            (3, "An empty street."),
        ],
    )
    (root / "instances_val2014.json").write_text(json.dumps(inst))
    (root / "captions_val2014.json").write_text(json.dumps(caps))
    return root


EXPECTED = {1: ["dining table", "dog", "person"], 2: ["chair", "toilet"], 3: []}
RULES = "test-rules:" + vocabulary_fingerprint(VOCAB.objects, VOCAB.category, VOCAB.double_words)


def build(root: Path, cache: Path, rules: str = RULES):
    files = annotation_files(root)
    return build_image_objects(files, VOCAB.category, lambda c: caption_categories(c, VOCAB), rules, cache)


def test_instances_and_captions_by_hand(tmp_path):
    truth = build(write_val(tmp_path / "coco"), tmp_path / "cache")
    assert truth.objects == EXPECTED
    assert truth.source == (
        f"COCO annotations in {tmp_path / 'coco'}: instances_val2014.json, captions_val2014.json "
        "(absent: instances_train2014.json, captions_train2014.json)"
    )


def test_train_and_val_together_and_the_annotations_folder(tmp_path):
    root = write_val(tmp_path / "coco" / "annotations")
    (root / "instances_train2014.json").write_text(json.dumps(instances([9], [(9, 1)])))
    (root / "captions_train2014.json").write_text(json.dumps(captions([9, 10], [(10, "A kitten.")])))
    assert annotation_files(tmp_path / "coco") == [root / n for n in coco_objects.ANNOTATION_FILES]
    truth = build(tmp_path / "coco", tmp_path / "cache")
    assert truth.objects == EXPECTED | {9: ["person"], 10: ["cat"]} and "absent" not in truth.source


def test_second_build_reads_the_cache(tmp_path, monkeypatch):
    root, cache = write_val(tmp_path / "coco"), tmp_path / "cache"
    first = build(root, cache)
    (cached,) = cache.glob("*.json")
    assert json.loads(cached.read_text())["objects"] == {str(k): v for k, v in EXPECTED.items()}

    def no_reading(path):
        raise AssertionError(f"read {path} although the cache holds the result")

    monkeypatch.setattr(coco_objects, "_read_annotations", no_reading)
    assert build(root, cache) == first
    with pytest.raises(AssertionError, match="although the cache"):  # other rules: another cache entry
        build(root, cache, rules="other-rules")
    monkeypatch.undo()
    cached.write_text("{not json")
    assert build(root, cache) == first and json.loads(cached.read_text())  # a damaged cache file builds anew
    (root / "captions_val2014.json").write_text(json.dumps(captions([1, 2, 3], [(3, "A dog.")])))
    assert build(root, cache).objects == {1: ["dog", "person"], 2: ["chair"], 3: ["dog"]}  # a changed file


def test_cache_defaults_to_align_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "align"))
    files = annotation_files(write_val(tmp_path / "coco"))
    build_image_objects(files, VOCAB.category, lambda c: caption_categories(c, VOCAB), RULES)
    assert len(list((tmp_path / "align" / "coco_objects").glob("*.json"))) == 1


def test_errors(tmp_path):
    root = write_val(tmp_path / "coco")
    inst = instances([1], [(1, 5)]) | {"categories": CATEGORIES + [{"id": 5, "name": "airplane"}]}
    (root / "instances_val2014.json").write_text(json.dumps(inst))
    with pytest.raises(ValueError, match=r"categories missing from the vocabulary's synonym table: \['airplane'\]"):
        build(root, tmp_path / "cache")
    (root / "instances_val2014.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="instances_val2014.json: not valid JSON.*download complete"):
        build(root, tmp_path / "cache")
    (root / "instances_val2014.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        build(root, tmp_path / "cache")
    assert annotation_files(tmp_path / "empty") == []
    with pytest.raises(FileNotFoundError, match="no COCO 2014 annotation files"):
        build_image_objects([], VOCAB.category, lambda c: [], RULES, tmp_path / "cache")


def test_read_precomputed_objects(tmp_path):
    path = tmp_path / "objects.json"
    path.write_text(json.dumps({"42": ["dog"], "7": []}))
    assert read_image_objects(path) == {42: ["dog"], 7: []}
    path.write_text('{"x": ["dog"]}')
    with pytest.raises(ValueError, match="entry 'x': need an integer image id"):
        read_image_objects(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_image_objects(path)
