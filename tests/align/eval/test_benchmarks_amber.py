"""AMBER discriminative: exact "Yes"/"No" answers, No-positive F1 by hand, dimension and sub-type buckets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from align.eval.benchmarks import BENCHMARKS, score_outputs
from align.eval.benchmarks.amber import load, score

AMBER = BENCHMARKS["amber"]
# id: (type, truth, output); ids 1-2 are generative descriptions, as ids 1-1004 are in the real data
CASES = {
    3: ("discriminative-hallucination", "no", "No"),  # right
    4: ("discriminative-hallucination", "no", "no"),  # neither: lower case
    5: ("discriminative-attribute-state", "yes", "Yes"),  # right
    6: ("discriminative-attribute-state", "no", "Yes."),  # neither: trailing period
    7: ("discriminative-attribute-number", "no", "No"),  # right
    8: ("discriminative-attribute-action", "yes", "No"),  # wrong, answered No
    9: ("discriminative-relation", "yes", "No, there is not"),  # neither
    10: ("relation", "no", "No"),  # right
}
OUTPUTS = {str(i): out for i, (_, _, out) in CASES.items()}


def shared_benchmarks() -> Path | None:
    """The public annotation files, when this machine has them: $ALIGN_BENCHMARKS, else ../shared/benchmarks."""
    here = Path(__file__).resolve()
    env = os.environ.get("ALIGN_BENCHMARKS")
    for d in (
        [Path(env)] if env else [here.parents[3] / "shared" / "benchmarks", here.parents[4] / "shared" / "benchmarks"]
    ):
        if (d / "amber").is_dir():
            return d
    return None


def write_amber(data: Path) -> Path:
    """AMBER's data/ layout: annotations.json indexed by id - 1, query/query_all.json."""
    (data / "query").mkdir(parents=True)
    ann = [{"id": i, "type": "generative", "truth": ["sky"], "hallu": ["cloud"]} for i in (1, 2)]
    ann += [{"id": i, "type": t, "truth": truth} for i, (t, truth, _) in CASES.items()]
    queries = [{"id": i, "image": f"AMBER_{i}.jpg", "query": "Describe this image."} for i in (1, 2)]
    queries += [{"id": i, "image": f"AMBER_{i}.jpg", "query": f"Is it so {i}?"} for i in CASES]
    (data / "annotations.json").write_text(json.dumps(ann))
    (data / "query" / "query_all.json").write_text(json.dumps(queries))
    return data


@pytest.mark.parametrize(
    "output,exact,lenient",
    [
        ("Yes", "yes", "yes"),
        ("No", "no", "no"),
        ("yes", None, "yes"),
        ("Yes.", None, "yes"),
        ("No, there is not", None, "no"),
        (" No", None, "no"),  # no stripping, as in the reference
        ("No\n", None, "yes"),  # POPE parsing only splits on spaces, so "No\n" is not the word 'No'
    ],
)
def test_only_the_exact_strings_count(output, exact, lenient):
    r = score({"dimension": "existence", "subtype": None, "truth": "no"}, output)
    assert r["pred"] == exact and r["lenient"] == lenient and r["correct"] == (exact == "no")


def test_load_items_dimensions_and_splits(tmp_path):
    data = write_amber(tmp_path / "data")
    items = load(data)
    assert [it["id"] for it in items] == [str(i) for i in CASES]  # generative ids left out
    assert items[0] == {
        "id": "3",
        "image": "AMBER_3.jpg",
        "prompt": "Is it so 3?",
        "truth": "no",
        "dimension": "existence",
        "subtype": None,
    }
    assert [it["subtype"] for it in load(data, "attribute")] == ["state", "state", "number", "action"]
    assert [it["id"] for it in load(data, "relation")] == ["9", "10"]  # both relation types
    assert len(load(data, "existence")) == 2 and len(load(data, "discriminative")) == 8
    assert len(load(tmp_path)) == 8  # the repository root holding data/ works too


def test_generative_and_unknown_splits_are_clear_errors(tmp_path):
    data = write_amber(tmp_path / "data")
    with pytest.raises(ValueError, match="generative task is not implemented yet"):
        load(data, "generative")
    with pytest.raises(ValueError, match="unknown AMBER split 'exist'"):
        load(data, "exist")
    with pytest.raises(FileNotFoundError, match="annotations.json not found"):
        load(tmp_path / "nowhere")


def test_no_positive_metrics_by_hand(tmp_path):
    m = score_outputs(AMBER, load(write_amber(tmp_path / "data")), OUTPUTS).metrics
    # truth "no": 3 4 6 7 10; answered exactly "No": 3 7 8 10; both: 3 7 10; right: 3 5 7 10
    o = m["overall"]
    assert (o["precision"], o["recall"], o["accuracy"]) == pytest.approx((3 / 4, 3 / 5, 4 / 8))
    assert o["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6 + 1e-4))
    assert o["n"] == 8 and o["neither"] == 3
    # lenient (POPE parsing): 4 → no, 6 → yes, 9 → no; answered no 3 4 7 8 9 10, right no 3 4 7 10; right 3 4 5 7 10
    assert o["lenient_accuracy"] == pytest.approx(5 / 8)
    assert o["lenient_f1"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5 + 1e-4))


def test_dimension_and_subtype_buckets_by_hand(tmp_path):
    m = score_outputs(AMBER, load(write_amber(tmp_path / "data")), OUTPUTS).metrics
    assert list(m) == [
        "overall",
        "existence",
        "attribute",
        "attribute/state",
        "attribute/number",
        "attribute/action",
        "relation",
    ]
    ex, at, rel = m["existence"], m["attribute"], m["relation"]
    assert (ex["precision"], ex["recall"], ex["accuracy"], ex["neither"]) == pytest.approx((1, 0.5, 0.5, 1))
    assert ex["f1"] == pytest.approx(1 / 1.5001)
    assert (at["precision"], at["recall"], at["accuracy"], at["n"]) == pytest.approx((0.5, 0.5, 0.5, 4))
    assert m["attribute/state"]["f1"] == 0.0  # nobody answered "No": precision and recall 0, not NaN
    assert m["attribute/number"]["accuracy"] == 1.0 and m["attribute/action"]["accuracy"] == 0.0
    assert (rel["precision"], rel["recall"], rel["accuracy"]) == pytest.approx((1, 1, 0.5))


def test_one_dimension_scores_only_its_bucket(tmp_path):
    items = load(write_amber(tmp_path / "data"), "existence")
    scored = score_outputs(AMBER, items, OUTPUTS)
    assert list(scored.metrics) == ["overall", "existence"]
    assert scored.counts["unmatched_outputs"] == 6


def test_real_annotations():
    root = shared_benchmarks()
    if root is None:
        pytest.skip("the AMBER annotation files are not on this machine (../shared/benchmarks/amber)")
    items = load(root / "amber")
    assert len(items) == 14216 and all(int(it["id"]) > 1004 for it in items)
    sizes = {s: len(load(root / "amber", s)) for s in ("existence", "attribute", "relation")}
    assert sizes == {"existence": 4924, "attribute": 7628, "relation": 1664}
    subtypes = [it["subtype"] for it in items if it["dimension"] == "attribute"]
    assert (subtypes.count("state"), subtypes.count("number"), subtypes.count("action")) == (4764, 2072, 792)
    assert all(it["truth"] == "no" for it in items if it["dimension"] == "existence")
