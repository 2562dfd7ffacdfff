"""The judge under the endpoint's fault policy (issue 16), against a faulty local server: a reply with no choices,
a body that is not JSON or a choice without its message is a failed sample, never a cached grade; the scoring run
goes on, says what failed and exits 1 (0 with --allow-failures); a rerun against a healthy server asks again for
exactly the failed samples; an error body that echoes the key is printed without it."""

from __future__ import annotations

import json

import pytest

from align.cli import main
from align.eval.judge import Judge, JudgeConfig
from tests.align.eval.test_benchmarks_mmhal import template, write
from tests.openai_server import kill_cli_after, openai_server_fixture  # noqa: F401  (the openai_server fixture)

MESSAGES = [{"role": "user", "content": "grade this"}]
BROKEN = {
    "no choices": ("payload", {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}),
    "not JSON": ("raw", '{"id": "x", "choices": [ this is not json'),
    "no message": (
        "payload",
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop"}],
        },
    ),  # fmt: skip
}


def judge_for(server, tmp_path, **kw) -> Judge:
    cfg = JudgeConfig(model="judge-x", base_url=server.base_url, api_key_env=None, max_retries=0,
                      cache_dir=str(tmp_path / "cache"), **kw)  # fmt: skip
    return Judge(cfg)


@pytest.mark.parametrize("fault", list(BROKEN))
def test_an_unusable_reply_is_a_failure_not_a_cached_grade(openai_server, tmp_path, fault):
    openai_server.script = [BROKEN[fault]]
    judge = judge_for(openai_server, tmp_path)
    reply = judge.complete(MESSAGES)
    assert reply.error and reply.text == "" and sum(judge.failures.values()) == 1
    assert not [p for p in (tmp_path / "cache").rglob("*.json")]  # nothing cached
    openai_server.script = [("text", "Rating: 5")]
    again = judge_for(openai_server, tmp_path).complete(MESSAGES)  # a rerun against a healthy server asks again
    assert again.error is None and again.text == "Rating: 5" and not again.cached
    assert len(openai_server.requests) == 2


def mmhal_argv(server, tmp_path, *extra) -> list[str]:
    data = write(tmp_path / "mmhal" / "response_template.json", template())
    outputs = write(tmp_path / "answers.json", template(answers=True))
    argv = ["eval", "score", "--benchmark", "mmhal", "--outputs", str(outputs), "--data", str(data)]
    argv += ["--judge-model", "judge-x", "--judge-base-url", server.base_url, "--judge-api-key-env", "none"]
    return argv + ["--judge-cache", str(tmp_path / "cache"), "--judge-retries", "0", *extra]


def test_a_scoring_run_with_failed_samples_says_so_exits_1_and_a_rerun_retries_them(openai_server, tmp_path, capsys):
    openai_server.script = [BROKEN["no choices"], BROKEN["not JSON"], BROKEN["no message"]]
    openai_server.default = ("text", "Rating: 5")
    argv = mmhal_argv(openai_server, tmp_path, "--judge-concurrency", "1")
    assert main(argv) == 1  # scores are written, but the run is not a success
    captured = capsys.readouterr()
    assert "4 requests sent, 3 answered, 3 failed (JSONDecodeError: 1, reply has no choices: 1" in captured.out
    assert "3 judged samples failed" in captured.err and "rerun" in captured.err
    report = json.loads((tmp_path / "answers.json.mmhal.scores.json").read_text())
    assert report["metrics"]["judge_errors"] == 3 and report["metrics"]["overall"]["n"] == 1
    assert main(argv) == 0  # the healthy rerun asks exactly the 3 failed samples
    out = capsys.readouterr().out
    assert "3 requests sent, 3 answered, 0 failed" in out
    assert "300 + 60 tokens this run, 400 + 80 for every reply used" in out  # 1 cached reply + 3 paid now
    assert len(openai_server.requests) == 7
    report = json.loads((tmp_path / "answers.json.mmhal.scores.json").read_text())
    assert report["metrics"]["judge_errors"] == 0 and report["metrics"]["overall"] == {
        "avg_score": 5.0, "hallucination_rate": 0.0, "n": 4}  # fmt: skip


def test_allow_failures_keeps_exit_0(openai_server, tmp_path, capsys):
    openai_server.default = ("status", 500)
    assert main(mmhal_argv(openai_server, tmp_path, "--allow-failures")) == 0
    assert "4 judged samples failed" in capsys.readouterr().err


def test_an_error_body_that_echoes_the_key_is_printed_without_it(openai_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JUDGE_FAULT_KEY", "sk-echoed-SECRET-123")
    openai_server.default = ("error", (401, "Incorrect API key provided: sk-echoed-SECRET-123"))
    argv = mmhal_argv(openai_server, tmp_path)
    argv[argv.index("none")] = "JUDGE_FAULT_KEY"
    assert main(argv) == 2  # a bad key stops the run at once, with one line
    err = capsys.readouterr().err
    assert "AuthenticationError" in err and "SECRET" not in err and "JUDGE_FAULT_KEY" in err
    assert len(openai_server.requests) <= 4  # at most the requests already in flight


def test_timeout_and_retries_flags_reach_the_client(openai_server, tmp_path, capsys):
    openai_server.default = ("sleep", 5)
    argv = mmhal_argv(openai_server, tmp_path, "--judge-timeout", "0.2", "--allow-failures")
    assert main(argv) == 0
    assert "APITimeoutError: 4" in capsys.readouterr().out
    assert len(openai_server.requests) == 4  # --judge-retries 0: one attempt each


def test_outputs_that_are_not_utf8_name_the_file(tmp_path, capsys):
    bad = tmp_path / "answers.jsonl"
    bad.write_bytes(b'{"question_id": 1, "text": "caf\xe9"}\n')
    data = write(tmp_path / "mmhal" / "response_template.json", template())
    assert main(["eval", "score", "--benchmark", "mmhal", "--outputs", str(bad), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not UTF-8" in err


def test_a_scoring_run_killed_mid_judging_resumes_losing_nothing(openai_server, tmp_path):
    """kill -9 with judge requests in flight: the rerun repeats at most `concurrency` paid requests and scores
    every sample."""
    import collections
    from pathlib import Path

    argv = mmhal_argv(openai_server, tmp_path, "--judge-concurrency", "2")
    items = template() * 3  # 12 samples, over the 4 that mmhal_argv wrote
    for i, item in enumerate(items):
        item["question"] = f"{item['question']} ({i})"
    write(tmp_path / "mmhal" / "response_template.json", items)
    write(tmp_path / "answers.json", [{**it, "model_answer": f"answer {i}"} for i, it in enumerate(items)])
    openai_server.default = ("sleep", 0.3, ("text", "Rating: 4"))
    received = kill_cli_after(openai_server, argv, Path(__file__).resolve().parents[3], requests=5, timeout=60)
    assert 5 <= received < 12

    openai_server.default = ("text", "Rating: 4")
    assert main(argv) == 0
    report = json.loads((tmp_path / "answers.json.mmhal.scores.json").read_text())
    assert report["counts"]["scored"] == 12 and report["metrics"]["judge_errors"] == 0
    asked = collections.Counter(json.dumps(r["messages"]) for r in openai_server.requests)
    assert len(asked) == 12 and sum(n - 1 for n in asked.values()) <= 2  # at most `concurrency` paid twice
