"""POPE as a benchmark: loading the question files, official answer parsing, per-split metrics, id matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.eval.benchmarks import BENCHMARKS, score_outputs
from align.eval.benchmarks.pope import PROMPT_SUFFIX, load, score
from tests.shared_data import benchmark_dir

POPE = BENCHMARKS["pope"]
LABELS = ["yes", "no", "yes", "no"]


def shared_benchmarks() -> Path:
    return benchmark_dir("pope", "coco_pope_adversarial.json").parent


def write_pope(root: Path, splits=("adversarial", "random")) -> Path:
    """Four questions per split, question ids 1..4 in each (as in the real files)."""
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        with (root / f"coco_pope_{split}.json").open("w") as f:
            for qid, label in enumerate(LABELS, 1):
                q = {"question_id": qid, "image": f"img{qid}.jpg", "text": f"Is there a thing {qid}?", "label": label}
                f.write(json.dumps(q) + "\n")
    return root


@pytest.mark.parametrize(
    "output,expected",
    [
        ("Yes", "yes"),
        ("There is not a dog", "no"),  # 'not' anywhere in the first sentence means no
        ("Yes. There is no dog.", "yes"),  # only the text before the first '.' counts
        ("No, there isn't", "no"),
        ("Yes, no doubt", "no"),  # commas are dropped, then 'no' is a word: the official scorer says no
        ("NO", "yes"),  # only 'No', 'no', 'not' are known
        ("", "yes"),  # an empty answer parses as yes, as in the reference
    ],
)
def test_score_uses_official_parsing(output, expected):
    item = {"split": "random", "label": "yes"}
    r = score(item, output)
    assert r["pred"] == expected and r["correct"] == (expected == "yes")


def test_load_directory_ids_prompt_and_splits(tmp_path):
    items = load(write_pope(tmp_path))
    assert [it["id"] for it in items[:2]] == ["adversarial/1", "adversarial/2"]
    assert {it["split"] for it in items} == {"adversarial", "random"} and len(items) == 8
    assert items[0]["prompt"] == "Is there a thing 1?" + PROMPT_SUFFIX
    assert items[0]["prompt"].endswith("\nAnswer the question using a single word or phrase.")
    assert items[0]["image"] == "img1.jpg" and items[0]["bare_id"] == "1"
    assert len(load(tmp_path, "random")) == 4
    assert {it["split"] for it in load(tmp_path / "coco_pope_random.json", None)} == {"random"}


def test_load_errors_name_the_problem(tmp_path):
    write_pope(tmp_path)
    with pytest.raises(FileNotFoundError, match="no 'popular' split; it has adversarial, random"):
        load(tmp_path, "popular")
    with pytest.raises(ValueError, match="holds the 'random' split, not 'adversarial'"):
        load(tmp_path / "coco_pope_random.json", "adversarial")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "nowhere", None)
    (tmp_path / "coco_pope_random.json").write_text('{"question_id": 1, "text": "q", "label": "yes"}\n\n{"bad"\n')
    with pytest.raises(ValueError, match=r"coco_pope_random.json:3: not valid JSON"):
        load(tmp_path, "random")
    (tmp_path / "coco_pope_random.json").write_text('{"question_id": 1, "text": "q", "label": "Yes"}\n')
    with pytest.raises(ValueError, match=r":1: label must be 'yes' or 'no'"):
        load(tmp_path, "random")


def test_per_split_metrics_and_means_by_hand(tmp_path):
    items = load(write_pope(tmp_path))
    outputs = {
        # adversarial: yes, yes, no, no against yes, no, yes, no → TP 1, FP 1, TN 1, FN 1
        **{f"adversarial/{i}": o for i, o in enumerate(["Yes", "Yes", "No", "There is not"], 1)},
        # random: every answer right, one 'No' hidden after a comma
        **{f"random/{i}": o for i, o in enumerate(["Yes", "No", "Yes, it is", "No, not at all"], 1)},
    }
    m = score_outputs(POPE, items, outputs).metrics
    adv, rnd = m["adversarial"], m["random"]
    assert (adv["accuracy"], adv["precision"], adv["recall"], adv["f1"]) == pytest.approx((0.5, 0.5, 0.5, 0.5))
    assert adv["yes_ratio"] == pytest.approx(0.5) and adv["n"] == 4
    assert rnd["accuracy"] == 1.0 and rnd["f1"] == 1.0 and rnd["yes_ratio"] == 0.5
    assert m["f1_mean"] == pytest.approx(0.75) and m["accuracy_mean"] == pytest.approx(0.75)


def test_yes_ratio_counts_predictions_not_labels(tmp_path):
    items = load(write_pope(tmp_path), "random")
    m = score_outputs(POPE, items, {str(i): "Yes" for i in range(1, 5)}).metrics["random"]
    assert m["yes_ratio"] == 1.0 and m["recall"] == 1.0 and m["precision"] == 0.5


def test_bare_ids_match_one_split_but_not_several(tmp_path):
    write_pope(tmp_path)
    bare = {str(i): "Yes" for i in range(1, 5)}
    assert score_outputs(POPE, load(tmp_path, "adversarial"), bare).counts["scored"] == 4
    with pytest.raises(ValueError, match=r"bare ids such as '1' name an item in several splits.*--split"):
        score_outputs(POPE, load(tmp_path), bare)


def test_missing_outputs_raise_unless_allowed(tmp_path):
    items = load(write_pope(tmp_path), "random")
    outputs = {"1": "Yes", "2": "No", "3": "Yes"}
    with pytest.raises(ValueError, match=r"1 of 4 pope items have no output \(first: random/4\).*--allow-missing"):
        score_outputs(POPE, items, outputs)
    scored = score_outputs(POPE, items, outputs, allow_missing=True)
    assert scored.counts == {"items": 4, "scored": 3, "missing": 1, "unmatched_outputs": 0}
    assert scored.metrics["random"]["n"] == 3 and scored.metrics["random"]["accuracy"] == 1.0


def test_real_question_files():
    root = shared_benchmarks()
    counts = {s: len(load(root / "pope", s)) for s in ("adversarial", "popular", "random")}
    assert counts == {"adversarial": 3000, "popular": 3000, "random": 2910}
    adversarial = load(root / "pope", "adversarial")
    assert sum(it["label"] == "yes" for it in adversarial) == 1500
    assert len(load(root / "pope", None)) == 8910
