"""Expert report validation, the revision, and the runner's cache (independent of any expert)."""

from __future__ import annotations

import pytest

from data_builders.endpoint import Usage
from data_builders.experts import (
    CorrectionRequest,
    ExpertReplyError,
    ExpertReport,
    SentenceEdit,
    correct_all,
    summarize_results,
)


def edit(copied, rewritten, score=4, error_type="correct"):
    return {
        "copied": copied,
        "score": score,
        "error_type": error_type,
        "objects": [],
        "rewritten": rewritten,
        "reason": "r",
    }


def test_revision_joins_rewrites_and_added_and_skips_dropped_sentences():
    report = ExpertReport.from_dict(
        {"sentences": [edit("A cat.", "A cat."), edit("A kite.", "", 1, "image_recognition_error")], "added": "A dog."}
    )
    assert report.revision == "A cat. A dog."
    assert ExpertReport.from_dict(report.to_dict()) == report


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"sentences": "x"}, "'sentences' list"),
        ({"sentences": [{"copied": "a"}]}, "sentences[0]: missing score"),
        ({"sentences": [edit("a", "a", score=5)]}, "sentences[0].score"),
        ({"sentences": [edit("a", "a", score=True)]}, "sentences[0].score"),
        ({"sentences": [edit("a", "a", error_type="typo")]}, "sentences[0].error_type"),
        ({"sentences": [{**edit("a", "a"), "objects": "dog -> cat"}]}, "sentences[0].objects"),
        ({"sentences": [], "added": 3}, "added"),
    ],
)
def test_invalid_reports_name_the_field(bad, message):
    with pytest.raises(ExpertReplyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ExpertReport.from_dict(bad)


class CountingExpert:
    """Returns the response as its own revision; counts calls; fails on demand."""

    expert_id = "counting-v1"

    def __init__(self, fail: set[str] = frozenset(), bad: set[str] = frozenset()):
        self.calls: list[str] = []
        self.fail, self.bad = fail, bad

    def correct(self, request):
        self.calls.append(request.id)
        if request.id in self.fail:
            raise ConnectionError("endpoint down")
        if request.id in self.bad:
            raise ExpertReplyError("not JSON", Usage(7, 3))
        return ExpertReport([SentenceEdit(request.response, 4, "correct", [], request.response, "ok")]), Usage(10, 2)


def requests(n):
    return [CorrectionRequest(f"r{i}", b"img%d" % i, "Describe.", f"Response {i}.", "Ref.") for i in range(n)]


def test_failures_are_recorded_and_retried_and_finished_rows_kept(tmp_path):
    expert = CountingExpert(fail={"r1"}, bad={"r2"})
    first = correct_all(expert, requests(4), cache_dir=tmp_path, concurrency=2)
    assert [r.id for r in first] == ["r0", "r1", "r2", "r3"]  # input order, whatever the completion order
    assert first[1].error == "ConnectionError: endpoint down" and first[2].error == "invalid reply: not JSON"
    summary = summarize_results(first, price_in=1.0, price_out=2.0)
    assert summary["ok"] == 2 and summary["failures"] == {"ConnectionError": 1, "invalid reply": 1}
    assert summary["prompt_tokens"] == 27 and summary["completion_tokens"] == 7

    expert.fail = set()
    expert.calls.clear()
    second = correct_all(expert, requests(4), cache_dir=tmp_path)
    assert sorted(expert.calls) == ["r1", "r2"]  # every failure is asked again: no failure is ever cached
    assert [r.cached for r in second] == [True, False, False, True]
    assert second[1].report.revision == "Response 1." and second[2].error == "invalid reply: not JSON"
    assert summarize_results(second)["prompt_tokens"] == 17  # cached rows cost nothing this time


def test_a_cache_hit_keeps_the_requesting_row_id(tmp_path):
    a, b = (CorrectionRequest(i, b"same", "Describe.", "Same.", "Ref.") for i in ("row-a", "row-b"))
    correct_all(CountingExpert(), [a], cache_dir=tmp_path)
    (hit,) = correct_all(CountingExpert(), [b], cache_dir=tmp_path)
    assert hit.cached and hit.id == "row-b"
