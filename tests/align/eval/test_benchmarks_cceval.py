"""CCEval as a judge-scored benchmark: the ground-truth loader, the reference's list parsing, and `score_outputs`
end to end through the real `Judge` and openai client against a local server, with metrics computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.eval.benchmarks import format_metrics, read_outputs, score_outputs
from align.eval.benchmarks.cceval import (
    BENCHMARK,
    COVERAGE_PROMPT,
    GT_FILE,
    HALLUCINATION_PROMPT,
    OBJECTS_PROMPT,
    PROMPT_VERSION,
    aggregate,
    load,
    parse_list,
    score,
)
from align.eval.judge import Judge, JudgeConfig, JudgeReply
from tests.openai_server import openai_server_fixture  # noqa: F401  (provides the openai_server fixture)

GT = {
    "1": {"gt_objs": ["cat", "sofa", "cushion", "lamp"]},
    "2": {"gt_objs": ["dog", "ball", "grass", "grass"]},  # 3 unique: coverage counts unique GT objects
    "3": {"gt_objs": ["car", "road"]},
    "4": {"gt_objs": ["bird"]},
    "5": {"gt_objs": ["horse"]},
}
CAPTIONS = {
    "1": "A cat sleeps on a sofa next to a [blanket].",  # 10 words
    "2": "A dog  runs after a ball and a [frisbee], then\na [frisbee] again.",  # split(" "): 13 'words'
    "3": "Two cars drive down a road.",  # 6 words
    "4": "A bird sits on a branch.",  # the extraction reply has no list
    "5": "A horse grazes.",  # the extraction request fails
}
# step -> caption id -> reply; each step is recognised by its prompt's opening words
REPLIES = {
    "objects": {
        "1": "objects = ['cat', 'sofa', 'table']",
        "2": "objects = [ 'dog' , 'ball', 'frisbee', 'dog', '' ]",  # repeat, empty item, a bracketed word
        "3": "['car', 'road', 'truck']",
        "4": "I see a bird and a branch.",
    },
    "hallucination": {"1": "hallucination = ['table']", "2": "hallucination = []", "3": "The answer: ['truck']"},
    "coverage": {"1": "uncovered = ['cushion', 'lamp']", "2": "uncovered = ['grass']", "3": "uncovered = []"},
}


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def step_of(content: str) -> str:
    """Which of the three prompts a request holds: each ends with its own answer stem."""
    for step, template in (("objects", OBJECTS_PROMPT), ("hallucination", HALLUCINATION_PROMPT)):
        if content.endswith(template.rsplit("\n", 1)[1]):
            return step
    assert content.endswith(COVERAGE_PROMPT.rsplit("\n", 1)[1])
    return "coverage"


def caption_of(content: str, step: str) -> str:
    """Which caption a request is about: its text (extraction) or its GT list (the list comparisons, which send
    the GT as it is for hallucination and de-duplicated for coverage)."""
    for key, caption in CAPTIONS.items():
        gt = GT[key]["gt_objs"]
        if step == "objects" and content.endswith(f"Description: {caption}\nobjects = "):
            return key
        last_a = content.rsplit("list_A = ", 1)[-1]
        if step != "objects" and last_a.startswith((f"{gt}\n", f"{list(dict.fromkeys(gt))}\n")):
            return key
    raise AssertionError(f"unrecognised request: {content[-200:]}")


def route(body: dict):
    """Server behaviour: the reply for this step and caption, so the order of concurrent requests does not matter."""
    content = body["messages"][-1]["content"]
    step = step_of(content)
    key = caption_of(content, step)
    reply = REPLIES[step].get(key)
    return ("text", reply) if reply is not None else ("status", 500)


def judge_cfg(server, tmp_path: Path) -> JudgeConfig:
    return JudgeConfig(
        model="judge-x", base_url=server.base_url, api_key_env=None, max_retries=1, timeout=2.0,
        cache_dir=str(tmp_path / "cache"), concurrency=3,
    )  # fmt: skip


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("objects = ['cat', 'sofa']", ["cat", "sofa"]),
        ("[ 'cat' ,sofa , 'cat', ]", ["cat", "sofa"]),  # stripped, de-duplicated, empty items dropped
        ('["cat", "sofa"]', ['"cat"', '"sofa"']),  # the reference strips " '" only: double quotes stay
        ("first ['a'] then ['b']", ["a"]),  # the first list
        ("objects = []", []),
        ("objects = ['cat',\n'sofa']", None),  # a list across lines is no match for the reference's pattern
        ("There are a cat and a sofa.", None),
    ],
)
def test_parse_list_as_the_reference(reply, expected):
    assert parse_list(reply) == expected


def test_load_file_or_directory_in_numeric_order(tmp_path):
    data = {"10": {"gt_objs": ["tree"], "image_id": 2417}, "2": {"gt_objs": [], "path": "./data/VG_100K/7.jpg"}}
    data["1"] = {"gt_objs": ["cat"], "image": "VG_100K_2/1.jpg"}
    data["3"] = {"gt_objs": ["dog"]}
    path = write(tmp_path / "cc" / GT_FILE, data)
    for where in (path, path.parent):
        items = load(where)
        assert [it["id"] for it in items] == ["1", "2", "3", "10"]
    assert [it["image"] for it in items] == ["VG_100K_2/1.jpg", "7.jpg", None, "2417.jpg"]
    assert items[0]["prompt"] == "Describe this image as detail as possible." and items[0]["gt_objects"] == ["cat"]
    assert BENCHMARK.needs_judge and BENCHMARK.name == "cceval"
    gen = BENCHMARK.generation
    assert gen["do_sample"] is True and gen["temperature"] == 0.2 and gen["max_new_tokens"] == 1024


def test_load_errors_say_what_is_expected(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"vg_info_100\.json nor a directory holding it.*gt_objs.*not published"
    ):
        load(tmp_path)
    with pytest.raises(ValueError, match=r"not valid JSON.*gt_objs"):
        load(write(tmp_path / "bad.json", "{'1': "))
    with pytest.raises(ValueError, match="expected a non-empty JSON object"):
        load(write(tmp_path / "list.json", [{"gt_objs": ["cat"]}]))
    with pytest.raises(ValueError, match=r"""entry '2' needs "gt_objs": a list of object names"""):
        load(write(tmp_path / "nogt.json", {"1": {"gt_objs": ["cat"]}, "2": {"objects": ["dog"]}}))
    with pytest.raises(ValueError, match="entry '1' needs"):
        load(write(tmp_path / "notstr.json", {"1": {"gt_objs": [{"name": "cat"}]}}))
    with pytest.raises(ValueError, match="no splits"):
        load(write(tmp_path / "ok.json", GT), "random")


class StubJudge:
    """Replies by step, for the scorer's unit tests (the real client is exercised below)."""

    def __init__(self, replies: dict[str, str]):
        self.replies, self.calls = replies, []

    def complete(self, messages, prompt_version=""):
        step = step_of(messages[-1]["content"])
        self.calls.append((step, messages, prompt_version))
        return JudgeReply(self.replies[step], "judge-s")


def test_empty_lists_still_get_both_comparisons_as_in_the_reference():
    judge = StubJudge({"objects": "objects = []", "hallucination": "[]", "coverage": "['cat']"})
    item = {"id": "1", "gt_objects": ["cat"]}
    rec = score(item, "It is a [cat], or a fox {caption}.", judge)
    assert [c[0] for c in judge.calls] == ["objects", "hallucination", "coverage"]
    assert all(c[2] == PROMPT_VERSION for c in judge.calls)
    assert "Description: It is a [cat], or a fox {caption}.\nobjects = " in judge.calls[0][1][1]["content"]
    assert judge.calls[1][1][1]["content"].endswith("list_A = ['cat']\nlist_B = []\nhallucination = ")
    assert judge.calls[2][1][1]["content"].endswith("list_A = ['cat']\nlist_B = ['cat']\nuncovered = ")
    assert (rec["objects"], rec["bracketed"], rec["hallucinated"], rec["uncovered"]) == ([], ["cat"], [], ["cat"])
    assert rec["failure"] is None and rec["judge_model"] == "judge-s" and judge.calls[0][1][0]["role"] == "system"


def test_aggregate_with_no_judged_sample():
    rec = {"failure": "no list in the objects reply", "judge_prompt": PROMPT_VERSION, "judge_model": "j"}
    m = aggregate([rec])
    assert m["overall"]["n"] == 0 and m["overall"]["chair_i"] is None and m["overall"]["coverage"] is None
    assert (m["unparsed"], m["judge_errors"], m["judge_model"]) == (1, 0, "none")


def test_aggregate_says_when_judges_differ():
    def rec(model: str) -> dict:
        return {
            "objects": ["cat"],
            "bracketed": [],
            "hallucinated": [],
            "uncovered": [],
            "gt_count": 1,
            "words": 3,
        } | {"failure": None, "judge_model": model, "judge_prompt": PROMPT_VERSION}

    m = aggregate([rec("judge-a"), rec("judge-b"), rec("judge-b")])
    assert m["judge_model"] == "MIXED, not comparable: judge-a (1), judge-b (2)"
    assert m["overall"]["chair_s"] == 0.0 and m["overall"]["coverage"] == 1.0 and m["overall"]["n"] == 3


def test_end_to_end_with_the_judge_server(openai_server, tmp_path):
    openai_server.default = route
    items = load(write(tmp_path / "cceval" / GT_FILE, GT))
    outputs_file = tmp_path / "answers.jsonl"
    write(outputs_file, "\n".join(json.dumps({"question_id": k, "text": v}) for k, v in CAPTIONS.items()))
    outputs = read_outputs(outputs_file)
    scored = score_outputs(BENCHMARK, items, outputs, judge=Judge(judge_cfg(openai_server, tmp_path)))
    by_id = {r["id"]: r for r in scored.records}

    one, two = by_id["1"], by_id["2"]
    assert (one["objects"], one["bracketed"], one["hallucinated"]) == (
        ["cat", "sofa", "table"],
        ["blanket"],
        ["table"],
    )
    assert (two["objects"], two["bracketed"], two["words"]) == (["dog", "ball", "frisbee"], ["frisbee"], 13)
    assert by_id["4"]["failure"] == "no list in the objects reply"
    assert by_id["4"]["judge_replies"] == {"objects": "I see a bird and a branch."}
    assert by_id["5"]["failure"].startswith("judge error (objects): InternalServerError")
    assert all(r["judge_prompt"] == PROMPT_VERSION and r["judge_model"] == "judge-x" for r in scored.records)

    m = scored.metrics
    assert m["overall"] == pytest.approx(
        {
            "chair_s": 2 / 3,  # captions 1 and 3 hallucinate
            "chair_i": 2 / 10,  # 2 hallucinated / unique(extracted + bracketed): 4 + 3 + 3
            "chair_i_n": 2 / 9,  # over the extracted objects only: 3 + 3 + 3
            "coverage": 1 - 3 / 9,  # uncovered 2 + 1 + 0 over unique GT 4 + 3 + 2
            "avg_length": (10 + 13 + 6) / 3,
            "avg_object_list_length": 10 / 3,
            "avg_bracketed_list_length": 2 / 3,
            "n": 3,
        }
    )
    assert (m["unparsed"], m["judge_errors"], m["judge_model"], m["judge_prompt"]) == (1, 1, "judge-x", PROMPT_VERSION)
    table = format_metrics(m)
    assert "66.7" in table and "9.67" in table and "3.33" in table and "judge_model: judge-x" in table

    # 3 requests for each judged caption, 1 for the unparsed one, 2 (a retry) for the failed one
    assert len(openai_server.requests) == 3 * 3 + 1 + 2
    assert all(body["temperature"] == 0 and body["model"] == "judge-x" for body in openai_server.requests)
    contents = [body["messages"][-1]["content"] for body in openai_server.requests]
    hall = "list_A = ['cat', 'sofa', 'cushion', 'lamp']\nlist_B = ['cat', 'sofa', 'table']\nhallucination = "
    cover = "list_A = ['dog', 'ball', 'grass']\nlist_B = ['dog', 'ball', 'frisbee']\nuncovered = "
    assert sum(c.endswith(hall) for c in contents) == 1 and sum(c.endswith(cover) for c in contents) == 1
    cover_one = "list_B = ['cat', 'sofa', 'table', 'blanket']\nuncovered = "  # bracketed words join the coverage list
    assert sum(c.endswith(cover_one) for c in contents) == 1

    # rerun: every answered request comes from the cache (the unparsed reply too); only the failed one is asked
    openai_server.default = lambda body: ("text", "['horse']")
    again = score_outputs(BENCHMARK, items, outputs, judge=Judge(judge_cfg(openai_server, tmp_path)))
    new = [step_of(b["messages"][-1]["content"]) for b in openai_server.requests[12:]]
    assert new == ["objects", "hallucination", "coverage"]
    assert [r["judge_cached"] for r in again.records] == [True, True, True, True, False]
    assert again.records[4]["hallucinated"] == ["horse"] and again.metrics["judge_errors"] == 0
    assert again.metrics["unparsed"] == 1 and again.metrics["overall"]["n"] == 4

    # a third run asks nothing at all
    score_outputs(BENCHMARK, items, outputs, judge=Judge(judge_cfg(openai_server, tmp_path)))
    assert len(openai_server.requests) == 15


def test_a_failure_after_the_extraction_is_recorded_and_excluded(openai_server, tmp_path):
    def flaky(body: dict):
        step = step_of(body["messages"][-1]["content"])
        return {"objects": ("text", "['car']"), "hallucination": ("status", 500)}.get(step, ("text", "[]"))

    openai_server.default = flaky
    items = load(write(tmp_path / GT_FILE, GT))[2:3]
    scored = score_outputs(BENCHMARK, items, {"3": CAPTIONS["3"]}, judge=Judge(judge_cfg(openai_server, tmp_path)))
    (rec,) = scored.records
    assert rec["failure"].startswith("judge error (hallucination)") and rec["objects"] == ["car"]
    assert rec["hallucinated"] is None and rec["uncovered"] is None  # coverage was not asked
    assert list(rec["judge_replies"]) == ["objects", "hallucination"] and len(openai_server.requests) == 3
    assert scored.metrics["judge_errors"] == 1 and scored.metrics["overall"]["n"] == 0
