"""The LLM judge through the real openai client against a local scripted server: request shape, the model name
the server reports, the disk cache (a rerun makes no request), transport failures recorded and not cached,
configuration errors raised, and the API key staying out of the config, reprs and cache files."""

from __future__ import annotations

import pytest

from align.eval.judge import Judge, JudgeConfig
from tests.openai_server import openai_server_fixture  # noqa: F401  (provides the openai_server fixture)

MESSAGES = [{"role": "user", "content": "Grade this. End with Rating: N"}]
SECRET = "sk-test-judge-9f8e7d6c5b4a"


def cfg_for(server, tmp_path, **kw) -> JudgeConfig:
    kw = {"timeout": 2.0, "max_retries": 0, "api_key_env": None, "cache_dir": str(tmp_path / "cache"), **kw}
    return JudgeConfig(model="judge-x", base_url=server.base_url, **kw)


def cache_texts(tmp_path) -> list[str]:
    return [p.read_text() for p in (tmp_path / "cache").rglob("*.json")]


def test_reply_text_model_and_request(openai_server, tmp_path):
    openai_server.script = [("text", "Accurate and complete.\nRating: 5")]
    reply = Judge(cfg_for(openai_server, tmp_path, max_tokens=300)).complete(MESSAGES, "v1")
    assert reply.text == "Accurate and complete.\nRating: 5"
    assert reply.model == "judge-x" and not reply.cached and reply.error is None
    (body,) = openai_server.requests
    assert body["model"] == "judge-x" and body["messages"] == MESSAGES
    assert body["temperature"] == 0.0 and body["max_completion_tokens"] == 300
    assert openai_server.headers[0]["authorization"] == "Bearer EMPTY"  # api_key_env=None: local server, no key


def test_model_name_as_the_server_reports_it_also_from_the_cache(openai_server, tmp_path):
    def dated(body):
        body["model"] = "judge-x-2024-05-13"  # the fake server echoes body["model"] in its response
        return ("text", "Rating: 4")

    openai_server.script = [dated]
    cfg = cfg_for(openai_server, tmp_path)
    assert Judge(cfg).complete(MESSAGES).model == "judge-x-2024-05-13"
    again = Judge(cfg).complete(MESSAGES)
    assert again.cached and again.model == "judge-x-2024-05-13" and again.text == "Rating: 4"


def test_rerun_hits_the_cache_and_sends_nothing(openai_server, tmp_path):
    openai_server.default = ("text", "Rating: 3")
    cfg = cfg_for(openai_server, tmp_path)
    first = Judge(cfg).complete(MESSAGES, "v1")
    second = Judge(cfg).complete(MESSAGES, "v1")  # a new process would build a new Judge
    assert not first.cached and second.cached and second.text == first.text
    assert len(openai_server.requests) == 1
    # anything that could change the grade is part of the key: the prompt version, max_tokens, the messages
    Judge(cfg).complete(MESSAGES, "v2")
    Judge(cfg_for(openai_server, tmp_path, max_tokens=99)).complete(MESSAGES, "v1")
    Judge(cfg).complete([{"role": "user", "content": "other"}], "v1")
    assert len(openai_server.requests) == 4


def test_cache_off_asks_every_time(openai_server, tmp_path):
    openai_server.default = ("text", "Rating: 3")
    judge = Judge(cfg_for(openai_server, tmp_path, cache=False))
    assert not judge.complete(MESSAGES).cached and not judge.complete(MESSAGES).cached
    assert len(openai_server.requests) == 2 and not (tmp_path / "cache").exists()


def test_http_500_is_a_recorded_failure_not_cached(openai_server, tmp_path):
    openai_server.script = [("status", 500)]
    cfg = cfg_for(openai_server, tmp_path)
    failed = Judge(cfg).complete(MESSAGES)
    assert failed.text == "" and failed.model == "judge-x" and "InternalServerError" in failed.error
    assert cache_texts(tmp_path) == []
    openai_server.script = [("text", "Rating: 6")]
    retried = Judge(cfg).complete(MESSAGES)  # the rerun asks again and gets a grade
    assert retried.text == "Rating: 6" and not retried.cached and retried.error is None
    assert len(openai_server.requests) == 2


def test_client_retries_transient_errors_before_giving_up(openai_server, tmp_path):
    openai_server.script = [("status", 503), ("status", 429), ("text", "Rating: 2")]
    reply = Judge(cfg_for(openai_server, tmp_path, max_retries=2)).complete(MESSAGES)
    assert reply.text == "Rating: 2" and reply.error is None and len(openai_server.requests) == 3


def test_refusal_is_an_empty_reply_not_an_error(openai_server, tmp_path):
    openai_server.script = [("refusal", "I can't help with that.")]
    reply = Judge(cfg_for(openai_server, tmp_path)).complete(MESSAGES)
    assert reply.text == "" and reply.error is None  # the benchmark's parser records it as unparsed


@pytest.mark.parametrize("status,name", [(401, "AuthenticationError"), (404, "NotFoundError")])
def test_configuration_errors_stop_the_run(openai_server, tmp_path, status, name):
    openai_server.script = [("status", status)]
    with pytest.raises(ValueError, match=rf"judge 'judge-x' at http://127\.0\.0\.1:\d+/v1: {name}"):
        Judge(cfg_for(openai_server, tmp_path)).complete(MESSAGES)


def test_api_key_from_env_only_and_never_stored(openai_server, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    openai_server.script = [("text", "Rating: 5")]
    cfg = cfg_for(openai_server, tmp_path, api_key_env="JUDGE_TEST_KEY")
    judge = Judge(cfg)
    reply = judge.complete(MESSAGES)
    assert openai_server.headers[0]["authorization"] == f"Bearer {SECRET}"
    texts = cache_texts(tmp_path)
    assert len(texts) == 1 and all(SECRET not in t for t in texts)
    assert SECRET not in repr(judge) and SECRET not in repr(cfg) and SECRET not in repr(reply)
    assert SECRET not in str(vars(judge)) and SECRET not in str(vars(cfg))


def test_missing_key_names_the_variable(openai_server, tmp_path, monkeypatch):
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="JUDGE_TEST_KEY is not set"):
        Judge(cfg_for(openai_server, tmp_path, api_key_env="JUDGE_TEST_KEY"))


def test_config_is_checked():
    with pytest.raises(ValueError, match="--judge-model"):
        JudgeConfig(model="")
    with pytest.raises(ValueError, match="concurrency"):
        JudgeConfig(model="m", concurrency=0)
