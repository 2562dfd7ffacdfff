"""MMHal-Bench as a judge-scored benchmark: the template loader, the judge prompt, the reference's single-rating
rule, the aggregate by hand, and `score_outputs` end to end with the real openai client against a local server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.eval.benchmarks import BENCHMARKS, format_metrics, read_outputs, score_outputs
from align.eval.benchmarks.mmhal import (
    PROMPT_VERSION,
    TYPES,
    aggregate,
    judge_messages,
    load,
    parse_rating,
    score,
    with_prompt,
)
from align.eval.judge import Judge, JudgeConfig, JudgeReply
from data_builders.endpoint import EndpointFatalError
from tests.openai_server import openai_server_fixture  # noqa: F401  (provides the openai_server fixture)

MMHAL = BENCHMARKS["mmhal"]
QUESTIONS = [  # (type, question, gt_answer, model answer) in template order
    ("attribute", "What color is the hydrant cap?", "The cap is yellow.", "ANSWER-A The cap is yellow."),
    ("adversarial", "Who sits on the bench?", "No one sits on the bench.", "ANSWER-B A man in a red coat."),
    ("comparison", "Which stool has a vase?", "The left stool.", "ANSWER-C The left one, I think."),
    ("counting", "How many lights are there?", "There are four lights.", "ANSWER-D Four {lights}."),
]


def template(answers: bool = False) -> list[dict]:
    return [
        {
            "question_type": t,
            "question_topic": "outdoor",
            "image_id": f"img{i}",
            "image_src": f"https://example.org/photos/{i}_o.jpg",
            "image_content": ["Fire hydrant", "Bench"],
            "question": q,
            "gt_answer": gt,
            "model_answer": a if answers else "",
        }
        for i, (t, q, gt, a) in enumerate(QUESTIONS)
    ]


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


class StubJudge:
    """Canned replies, for the scorer's unit tests (the real client is exercised below)."""

    def __init__(self, reply: JudgeReply):
        self.reply, self.calls = reply, []

    def complete(self, messages, prompt_version=""):
        self.calls.append((messages, prompt_version))
        return self.reply


@pytest.mark.parametrize(
    "reply,expected",
    [
        ("The answer matches the reference.\nRating: 5", 5),
        ("RATING: 6", 6),  # case-insensitive
        ("rating: 0", 0),
        ("Rating: 2, or maybe Rating: 4", None),  # two different ratings: the reference scores 0
        ("Rating: 3. Final answer, rating: 3", 3),  # the same rating twice is still one rating
        ("The response is fine.", None),
        ("Rating: 7", None),  # off the scale
        ("Rating:5", None),  # the reference wants 'rating: N' literally
        ("**Rating:** 5", None),
    ],
)
def test_parse_rating_single_rating_rule(reply, expected):
    assert parse_rating(reply) == expected


def test_load_file_or_directory_with_either_name(tmp_path):
    data = template()
    for name in ("response_template.json", "mmhal-bench_answer_template.json"):
        write(tmp_path / name.split(".")[0] / name, data)
        assert [it["id"] for it in load(tmp_path / name.split(".")[0])] == ["0", "1", "2", "3"]
    items = load(write(tmp_path / "t.json", data))
    first = items[0]
    assert first["prompt"] == first["question"] == "What color is the hydrant cap?"  # no suffix, as the reference
    assert first["image"] == "0_o.jpg" and first["image_content"] == ["Fire hydrant", "Bench"]
    assert [it["question_type"] for it in items] == ["attribute", "adversarial", "comparison", "counting"]
    assert MMHAL.needs_judge and MMHAL.generation["do_sample"] is False


def test_question_type_falls_back_to_the_index_cycle(tmp_path):
    data = [dict(r) for r in template() * 3]  # 12 records: index 8..11 wrap round to attribute..counting
    for r in data:
        del r["question_type"]
    data[9]["question_type"] = "relation"  # a record's own type wins
    types = [it["question_type"] for it in load(write(tmp_path / "t.json", data))]
    assert types[:8] == list(TYPES) and types[8:] == ["attribute", "relation", "comparison", "counting"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="response_template.json or mmhal-bench_answer_template.json"):
        load(tmp_path)
    with pytest.raises(ValueError, match="no splits"):
        load(write(tmp_path / "t.json", template()), "random")
    with pytest.raises(ValueError, match="record 1 needs at least question and gt_answer"):
        load(write(tmp_path / "bad.json", [template()[0], {"question": "q"}]))


def test_judge_prompt_holds_every_field_and_fills_in_one_pass():
    item = load_items()[3]
    (msg,) = judge_messages(item, "Four {lights}, and {question} quoted.")
    text = msg["content"]
    assert msg["role"] == "user" and "Fire hydrant, Bench" in text and "How many lights are there?" in text
    assert "There are four lights." in text and "Four {lights}, and {question} quoted." in text
    assert "Rating: N" in text and "hallucination" in text.lower()
    for grade in range(7):
        assert f"\n{grade} = " in text


def load_items() -> list[dict]:
    return [
        {"question": q, "gt_answer": gt, "image_content": ["Fire hydrant", "Bench"], "question_type": t}
        | {"question_topic": "outdoor", "id": str(i)}
        for i, (t, q, gt, _) in enumerate(QUESTIONS)
    ]


def test_score_records_parse_failures_and_judge_errors():
    item = load_items()[0]
    ok = score(item, "yellow", StubJudge(JudgeReply("Correct.\nRating: 5", "gpt-x-0613")))
    assert ok["score"] == 5 and ok["hallucination"] is False and ok["failure"] is None
    assert ok["judge_model"] == "gpt-x-0613" and ok["judge_prompt"] == PROMPT_VERSION
    bad = score(item, "yellow", StubJudge(JudgeReply("Looks right to me.", "gpt-x-0613")))
    assert bad["score"] == 0 and bad["hallucination"] is True and bad["failure"] == "no single rating"
    down = score(item, "yellow", StubJudge(JudgeReply("", "gpt-x", error="APIConnectionError: refused")))
    assert down["score"] is None and down["hallucination"] is None
    assert down["failure"] == "judge error: APIConnectionError: refused"


def rec(t: str, s: int | None, model: str = "judge-a", failure: str | None = None) -> dict:
    return {
        "question_type": t,
        "score": s,
        "hallucination": None if s is None else s < 3,
        "failure": failure,
        "judge_model": model,
        "judge_prompt": PROMPT_VERSION,
    }


def test_aggregate_by_hand():
    records = [
        rec("attribute", 6),
        rec("attribute", 2),
        rec("counting", 4),
        rec("counting", 0, failure="no single rating"),
        rec("counting", None, model="judge-x", failure="judge error: boom"),  # left out of every average
    ]
    m = aggregate(records)
    assert m["overall"] == {"avg_score": 3.0, "hallucination_rate": 0.5, "n": 4}
    assert m["attribute"] == {"avg_score": 4.0, "hallucination_rate": 0.5, "n": 2}
    assert m["counting"] == {"avg_score": 2.0, "hallucination_rate": 0.5, "n": 2}
    assert "relation" not in m
    assert (m["unparsed"], m["judge_errors"]) == (1, 1)
    assert m["judge_model"] == "judge-a" and m["judge_prompt"] == PROMPT_VERSION
    table = format_metrics(m)
    assert "3.00" in table and "50.0" in table and "judge_model: judge-a" in table


def test_aggregate_says_when_judges_differ():
    m = aggregate([rec("other", 5, "judge-a"), rec("other", 1, "judge-b"), rec("other", 3, "judge-b")])
    assert m["judge_model"] == "MIXED, not comparable: judge-a (1), judge-b (2)"


def test_filled_template_as_outputs(tmp_path):
    filled = template(answers=True)
    filled[2]["model_answer"] = ""  # unanswered: missing, not an empty answer
    outputs = read_outputs(write(tmp_path / "answers.json", filled))
    assert outputs == {"0": QUESTIONS[0][3], "1": QUESTIONS[1][3], "3": QUESTIONS[3][3]}
    with pytest.raises(ValueError, match="every model_answer is empty"):
        read_outputs(write(tmp_path / "empty.json", template()))


def test_a_judge_benchmark_without_a_judge_says_what_to_pass(tmp_path):
    items = load(write(tmp_path / "t.json", template()))
    with pytest.raises(ValueError, match=r"mmhal is graded by an LLM judge: pass --judge-model MODEL"):
        score_outputs(MMHAL, items, {it["id"]: "x" for it in items})


def grade_by_answer(body: dict):
    """Server behaviour: the grade depends on which model answer the judge prompt holds."""
    content = body["messages"][0]["content"]
    if "ANSWER-A" in content:
        return ("text", "Matches the reference.\nRating: 5")
    if "ANSWER-B" in content:
        return ("text", "Invents a man.\nRating: 1")
    if "ANSWER-C" in content:
        return ("text", "Hedged but right; I'd say 4 out of 6.")  # no 'Rating: N' line
    return ("status", 500)


def test_end_to_end_with_the_judge_server(openai_server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-e2e-secret")
    openai_server.default = grade_by_answer
    items = load(write(tmp_path / "mmhal" / "response_template.json", template()))
    outputs = read_outputs(write(tmp_path / "answers.json", template(answers=True)))
    cfg = JudgeConfig(
        model="judge-x", base_url=openai_server.base_url, api_key_env="JUDGE_TEST_KEY", max_retries=0,
        timeout=2.0, cache_dir=str(tmp_path / "cache"), concurrency=2,
    )  # fmt: skip
    scored = score_outputs(MMHAL, items, outputs, judge=Judge(cfg))
    by_id = {r["id"]: r for r in scored.records}
    assert [by_id[i]["score"] for i in "0123"] == [5, 1, 0, None]
    assert by_id["2"]["failure"] == "no single rating" and by_id["3"]["failure"].startswith("judge error: Internal")
    assert all(r["judge_model"] == "judge-x" and r["judge_prompt"] == PROMPT_VERSION for r in scored.records)
    m = scored.metrics
    assert m["overall"] == {"avg_score": 2.0, "hallucination_rate": 2 / 3, "n": 3}
    assert m["counting"] == {"avg_score": None, "hallucination_rate": None, "n": 0}
    assert (m["unparsed"], m["judge_errors"], m["judge_model"]) == (1, 1, "judge-x")
    assert len(openai_server.requests) == 4 and "sk-e2e-secret" not in json.dumps(scored.records)
    assert all("sk-e2e-secret" not in p.read_text() for p in (tmp_path / "cache").rglob("*.json"))

    # rerun: the three answered requests come from the cache, only the failed one is asked again
    openai_server.default = lambda body: ("text", "Correct count.\nRating: 6")
    again = score_outputs(MMHAL, items, outputs, judge=Judge(cfg))
    assert len(openai_server.requests) == 5 and ANSWER_D in openai_server.requests[-1]["messages"][0]["content"]
    assert [r["judge_cached"] for r in again.records] == [True, True, True, False]
    assert again.metrics["overall"]["avg_score"] == 3.0 and again.metrics["judge_errors"] == 0


ANSWER_D = QUESTIONS[3][3]


def test_user_prompt_template_is_used_and_versioned(openai_server, tmp_path):
    with pytest.raises(ValueError, match=r"lacks \{gt_answer\}"):
        with_prompt("{image_contents} {question} {response}")
    official = "Contents: {image_contents}\nQ: {question}\nStandard: {gt_answer}\nTo rate: {response}\n"
    bench = MMHAL.judge_prompt(official)
    openai_server.default = ("text", "Rating: 3")
    cfg = JudgeConfig(model="judge-x", base_url=openai_server.base_url, api_key_env=None, max_retries=0,
                      cache_dir=str(tmp_path / "cache"))  # fmt: skip
    items = load(write(tmp_path / "t.json", template()))[:1]
    scored = score_outputs(bench, items, {"0": "yellow"}, judge=Judge(cfg))
    content = openai_server.requests[0]["messages"][0]["content"]
    assert content == "Contents: Fire hydrant, Bench\nQ: What color is the hydrant cap?\n" + (
        "Standard: The cap is yellow.\nTo rate: yellow\n"
    )
    (r,) = scored.records
    assert r["score"] == 3 and r["judge_prompt"].startswith("custom-") and r["judge_prompt"] != PROMPT_VERSION
    assert scored.metrics["judge_prompt"] == r["judge_prompt"]


def test_a_bad_key_stops_scoring_without_sending_the_queue(openai_server, tmp_path):
    openai_server.default = ("status", 401)
    items = load(write(tmp_path / "t.json", template() * 5))  # 20 items
    cfg = JudgeConfig(model="judge-x", base_url=openai_server.base_url, api_key_env=None, max_retries=0,
                      cache_dir=str(tmp_path / "cache"), concurrency=1)  # fmt: skip
    with pytest.raises(EndpointFatalError, match="AuthenticationError.*check the model name, the base URL"):
        score_outputs(MMHAL, items, {it["id"]: "x" for it in items}, judge=Judge(cfg))
    assert len(openai_server.requests) <= 2  # the one that failed, and at most one already started


def test_cli_scores_mmhal_with_the_judge_server(openai_server, tmp_path, monkeypatch, capsys):
    """`align eval score --benchmark mmhal --judge-*` end to end: the table, the judge in the report, the key
    nowhere on disk, and a rerun answered from the cache."""
    from align.cli import main

    monkeypatch.setenv("JUDGE_CLI_KEY", "sk-cli-secret")
    openai_server.default = ("text", "Informative and true.\nRating: 5")
    data = write(tmp_path / "mmhal" / "response_template.json", template())
    outputs = write(tmp_path / "answers.json", template(answers=True))
    argv = ["eval", "score", "--benchmark", "mmhal", "--outputs", str(outputs), "--data", str(data)]
    argv += ["--judge-model", "judge-x", "--judge-base-url", openai_server.base_url]
    argv += ["--judge-api-key-env", "JUDGE_CLI_KEY", "--judge-cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "judge judge-x: 4 requests" in out and "avg_score" in out
    report_path = tmp_path / "answers.json.mmhal.scores.json"
    report = json.loads(report_path.read_text())
    assert report["judge"]["model"] == "judge-x" and report["counts"]["scored"] == 4
    written = report_path.read_text() + Path(report["samples"]).read_text()
    written += "".join(p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert "sk-cli-secret" not in written
    assert main(argv) == 0
    assert "judge judge-x: 0 requests" in capsys.readouterr().out and len(openai_server.requests) == 4
    assert main(["eval", "score", "--benchmark", "mmhal", "--outputs", str(outputs), "--data", str(data)]) == 2
