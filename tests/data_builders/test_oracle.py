"""The oracle expert: replaces misnamed objects in place, fixes attributes, drops only what names nothing real,
adds what was missed, keeps correct wording, and its revisions are hallucination-free on real ToyWorld rows."""

from __future__ import annotations

import json

import pytest

from data_builders.experts import CorrectionRequest
from data_builders.oracle import OracleExpert
from data_builders.toyworld_data import objects_from_json
from data_builders.toyworld_text import caption_mentions

OBJECTS = [
    {"name": "sign", "color": "green", "cells": [0]},
    {"name": "bicycle", "color": "red", "cells": [1]},
    {"name": "cup", "color": "blue", "cells": [4, 8]},
]


def correct(response: str, objects=OBJECTS, scene: str | None = "street"):
    truth = {"scene": scene, "objects": objects} if scene else objects
    request = CorrectionRequest("r", b"", "Describe the image in detail.", response, "", json.dumps(truth))
    report, usage = OracleExpert().correct(request)
    assert usage.prompt_tokens == 0
    return report


def test_correct_sentences_keep_the_policys_wording():
    report = correct("a street is shown. a green sign is at the top left.")
    assert [s.score for s in report.sentences] == [4, 4]
    assert report.sentences[1].rewritten == "a green sign is at the top left."
    assert (
        report.added
        == "there is a red bicycle at the top. there are two blue cups at the center and the bottom right."
    )


def test_misnamed_object_is_replaced_at_its_place():
    (edit,) = correct("i can see a green puppy at the top.").sentences
    assert edit.rewritten == "i can see a red bicycle at the top."
    assert edit.score == 2 and edit.error_type == "image_recognition_error"
    assert edit.objects == ["dog -> bicycle", "green -> red"]


@pytest.mark.parametrize(
    ("sentence", "rewritten", "fix"),
    [
        ("there is a yellow sign at the top left.", "there is a green sign at the top left.", "yellow -> green"),
        ("there is a red bike at the right.", "there is a red bike at the top.", "right -> top"),
        ("there is a blue cup at the center.", "there are two blue cups at the center and the bottom right.", None),
    ],
)
def test_attribute_errors_score_three(sentence, rewritten, fix):
    (edit,) = correct(sentence).sentences
    assert (edit.score, edit.rewritten) == (3, rewritten)
    assert fix is None or fix in edit.objects


def test_absent_objects_and_repeats_are_dropped_and_missed_ones_added():
    report = correct(
        "this is a kitchen scene. there is a green sign at the top left. a green sign is at the left. "
        "a purple kite is at the bottom left. a green sign is at the top left."
    )
    scores = [(s.score, s.error_type) for s in report.sentences]
    assert scores == [
        (3, "image_recognition_error"),  # a street scene, not a kitchen
        (4, "correct"),
        (1, "image_recognition_error"),  # no second sign, and the left is empty
        (1, "image_recognition_error"),  # no kite at all
        (1, "language_comprehension_error"),  # the same sign again
    ]
    assert report.sentences[3].objects == ["kite -> nothing"]
    assert report.revision == (
        "this is a street scene. there is a green sign at the top left. there is a red bicycle at the top. "
        "there are two blue cups at the center and the bottom right."
    )


def test_without_the_scene_scene_claims_are_not_judged():
    (edit,) = correct("a park is shown.", scene=None).sentences
    assert edit.score == 4


def test_oracle_needs_ground_truth():
    with pytest.raises(ValueError, match="row r: the oracle expert needs ground-truth objects"):
        OracleExpert().correct(CorrectionRequest("r", b"", "p", "a cup.", "", None))


def test_revisions_of_captions_name_exactly_the_ground_truth(small_world):
    """On every train caption (30% name an absent object), the revision mentions only real objects, all of them."""
    for row in small_world["train"]:
        truth = {o.name for o in objects_from_json(row["objects"])}
        report = correct(row["caption"], json.loads(row["objects"]), scene=row["scene"])
        assert {c for c, _ in caption_mentions(report.revision)} == truth, (row["caption"], report.revision)
        injected = objects_from_json(row["injected"])
        if not injected:  # a clean caption is correct as it stands
            assert all(s.score == 4 for s in report.sentences) and report.added == ""


def test_an_object_named_at_an_already_described_place_is_moved_to_where_it_is():
    report = correct("there is a green sign at the top left. i can see a red bike at the top left.")
    assert [s.rewritten for s in report.sentences] == [
        "there is a green sign at the top left.",
        "i can see a red bike at the top.",
    ]


def test_a_faint_object_named_without_a_place_is_kept_a_made_up_one_dropped_a_missed_one_added():
    objects = [*OBJECTS, {"name": "car", "color": "white", "cells": [2], "faint": True}]
    kept = correct("a green sign is at the top left. there is also a car.", objects)
    assert [s.score for s in kept.sentences] == [4, 4] and kept.sentences[1].rewritten == "there is also a car."
    assert "car" not in kept.added
    made_up = correct("a green sign is at the top left. the street also has a bus.")
    assert made_up.sentences[1].score == 1 and made_up.sentences[1].rewritten == ""
    missed = correct("a green sign is at the top left.", objects)
    assert missed.added.endswith("there is also a car.")
