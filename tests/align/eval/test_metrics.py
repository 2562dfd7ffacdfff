"""CHAIR and POPE on hand-computed cases, including the reference scorers' quirks."""

from __future__ import annotations

import pytest

from align.eval.metrics import caption_mentions, chair, parse_yes_no, pope


def test_mentions_map_plurals_synonyms_and_double_words():
    text = "There are two red knives at the top. A puppy is at the left. A blue traffic light is at the center."
    assert [c for c, _ in caption_mentions(text)] == ["knife", "dog", "traffic light"]
    # "light" alone is not a class; a sentence index is kept per mention
    assert caption_mentions("A light. A mug.") == [("cup", 1)]


def test_chair_hand_computed():
    captions = [
        "There is a red cup at the top left. A fork is at the center.",  # fork absent: 1 of 2 mentions bad
        "A dog is at the left. A dog is at the right.",  # duplicate correct mentions count twice
        "A street is shown.",  # no mentions at all
    ]
    gt = [{"cup"}, {"dog", "tree"}, {"car"}]
    occupied = [{0}, {3, 5}, {4}]
    m = chair(captions, gt, occupied)
    assert m["chair_s"] == pytest.approx(1 / 3)
    assert m["chair_i"] == pytest.approx(1 / 4)  # cup, fork, dog, dog: 1 hallucinated of 4 mentions
    assert m["recall"] == pytest.approx((1 + 1 + 0) / (1 + 2 + 1))
    assert m["length"] == pytest.approx((15 + 12 + 4) / 3)
    # the fork sentence names the center (cell 4), empty in image 0: an added absent object
    assert m["addition_share"] == 1.0 and m["substitution_share"] == 0.0


def test_chair_classifies_misnamed_present_object_as_substitution():
    m = chair(["There is a red fork at the top left."], [{"cup"}], [{0}])
    assert m["chair_i"] == 1.0 and m["substitution_share"] == 1.0


def test_chair_prior_share_counts_absent_objects_typical_of_the_scene():
    captions = [
        "There is a red cup at the top left. There is also a fork.",  # fork: absent, typical of the kitchen
        "There is a red cup at the top left. There is also a dog.",  # dog: absent, not a kitchen object
        "A car is at the top. There is also a bus. The street also has a sign.",  # bus, sign: typical, absent
    ]
    kitchen, street = {"cup", "fork", "knife"}, {"car", "bus", "sign"}
    m = chair(captions, [{"cup"}, {"cup"}, {"car"}], typical=[kitchen, kitchen, street])
    assert m["hallucinated_mentions"] == 4 and m["prior_share"] == pytest.approx(3 / 4)
    assert "prior_share" not in chair(captions, [{"cup"}, {"cup"}, {"car"}])


def test_chair_with_and_without_bracketed_objects_hand_computed():
    """HallE's indication marks: "[spoon]" is a mention in chair_i, left out of the hallucinations of chair_i_marked
    (CCEval's CHAIR_i: still among the mentions); decoded "[ spoon ]" and synonyms inside marks count alike."""
    captions = [
        "There is a red cup at the top. There is also a [spoon].",  # a marked absent object: 1 of 2 mentions
        "A [ puppy ] at the left. I can also see a fork.",  # marked dog (present), unmarked fork (absent)
        "Two green knives at the center.",  # clean
    ]
    truth = [{"cup"}, {"dog"}, {"knife"}]
    out = chair(captions, truth)
    assert out["mentions"] == 5 and out["hallucinated_mentions"] == 2
    assert out["chair_i"] == pytest.approx(2 / 5) and out["chair_s"] == pytest.approx(2 / 3)
    assert out["chair_i_marked"] == pytest.approx(1 / 5)  # the fork only; the marked spoon is not counted
    assert out["chair_s_marked"] == pytest.approx(1 / 3)
    assert out["bracketed"] == pytest.approx(2 / 3)  # [spoon], [puppy] over 3 captions
    assert out["bracketed_absent_share"] == pytest.approx(1 / 2)  # the spoon is absent, the puppy is the dog
    assert out["recall"] == pytest.approx(3 / 3)
    plain = chair(["A red cup."], [{"cup"}])
    assert plain["chair_i_marked"] == plain["chair_i"] == 0 and plain["bracketed_absent_share"] == 0


def test_chair_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 captions but 1"):
        chair(["a", "b"], [set()])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Yes", "yes"),
        ("yes, there is", "yes"),
        ("No", "no"),
        ("no.", "no"),
        ("There is not a cup", "no"),
        ("NO", "yes"),  # the official scorer only knows 'No', 'no', 'not'
        ("Yes. There is no dog.", "yes"),  # only the text before the first '.' counts
        ("No, there isn't", "no"),
        ("There isn't", "yes"),  # "isn't" is not 'not' in the official scorer
    ],
)
def test_pope_answer_parsing_matches_official(text, expected):
    assert parse_yes_no(text) == expected


def test_pope_metrics_hand_computed():
    preds = ["yes", "yes", "no", "no", "yes", "no"]
    labels = ["yes", "no", "no", "yes", "yes", "no"]
    m = pope(preds, labels)  # TP=2 FP=1 TN=2 FN=1
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)  # from predictions, not labels


def test_pope_all_no_gives_zero_precision_not_nan():
    m = pope(["no", "no"], ["yes", "no"])
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["yes_ratio"] == 0.0
