"""OpenAIExpert through the real openai client against a local scripted server: success, retries, timeouts,
the one repair turn, recorded failures, resume from the cache, and the API key staying out of reprs and caches."""

from __future__ import annotations

import base64
import copy
import json

import pytest

from data_builders.endpoint import OpenAIExpertConfig, Usage, image_data_url, strip_fence
from data_builders.experts import REPORT_SCHEMA, CorrectionRequest, correct_all, summarize_results
from data_builders.openai_expert import OpenAIExpert
from tests.openai_server import openai_server_fixture  # noqa: F401  (provides the openai_server fixture)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24  # only the magic bytes matter to the expert
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 24
RESPONSE = "A red dog sits on the grass. The sky is blue."
GOOD = {
    "sentences": [
        {
            "copied": "A red dog sits on the grass.",
            "score": 2,
            "error_type": "image_recognition_error",
            "objects": ["dog -> cat"],
            "rewritten": "A red cat sits on the grass.",
            "reason": "The animal is a cat.",
        },
        {
            "copied": "The sky is blue.",
            "score": 4,
            "error_type": "correct",
            "objects": [],
            "rewritten": "The sky is blue.",
            "reason": "True.",
        },
    ],
    "added": "A tree stands on the left.",
    "added_reason": "The response missed the tree.",
}
REVISION = "A red cat sits on the grass. The sky is blue. A tree stands on the left."


def request(i: int = 0, image: bytes = PNG) -> CorrectionRequest:
    return CorrectionRequest(f"r{i}", image, f"Describe image {i}.", RESPONSE, "A red cat on grass; a tree.")


def expert_for(server, **kw) -> OpenAIExpert:
    kw = {"timeout": 2.0, "max_retries": 1, "api_key_env": None, **kw}
    return OpenAIExpert(OpenAIExpertConfig(base_url=server.base_url, model="test-vlm", **kw))


def user_text(body: dict) -> str:
    return body["messages"][1]["content"][0]["text"]


def test_valid_reply_sends_image_and_schema_and_counts_usage(openai_server):
    openai_server.script = [("json", GOOD)]
    report, usage = expert_for(openai_server).correct(request())
    assert report.revision == REVISION
    assert report.sentences[0].objects == ["dog -> cat"]
    assert usage == Usage(100, 20)
    (body,) = openai_server.requests
    assert body["model"] == "test-vlm" and body["temperature"] == 0.0
    assert body["messages"][0]["role"] == "system"
    image = body["messages"][1]["content"][1]
    assert image["type"] == "image_url" and image["image_url"]["detail"] == "auto"
    prefix = "data:image/png;base64,"
    assert image["image_url"]["url"].startswith(prefix)
    assert base64.b64decode(image["image_url"]["url"][len(prefix) :]) == PNG
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == REPORT_SCHEMA
    assert body["response_format"]["json_schema"]["strict"] is True
    assert "(1) A red dog sits on the grass.\n(2) The sky is blue." in user_text(body)
    assert openai_server.headers[0]["authorization"] == "Bearer EMPTY"


def test_plain_prompt_mode_jpeg_and_fenced_reply(openai_server):
    openai_server.script = [("text", "```json\n" + json.dumps(GOOD) + "\n```")]
    report, _ = expert_for(openai_server, structured_output=False, image_detail="low").correct(request(image=JPEG))
    assert report.revision == REVISION
    (body,) = openai_server.requests
    assert "response_format" not in body
    image = body["messages"][1]["content"][1]["image_url"]
    assert image["url"].startswith("data:image/jpeg;base64,") and image["detail"] == "low"


@pytest.mark.parametrize("status", [500, 429])
def test_retryable_status_then_success(openai_server, status):
    openai_server.script = [("status", status), ("json", GOOD)]
    report, usage = expert_for(openai_server, max_retries=1).correct(request())
    assert report.revision == REVISION and usage == Usage(100, 20)
    assert len(openai_server.requests) == 2


def test_timeout_is_a_recorded_failure(openai_server):
    openai_server.default = ("sleep", 5.0, ("json", GOOD))
    (result,) = correct_all(expert_for(openai_server, timeout=0.3, max_retries=1), [request()])
    assert result.report is None and "timed out" in result.error.lower()
    assert result.error.startswith("APITimeoutError")
    assert len(openai_server.requests) == 2  # the first try and one client retry


def test_invalid_json_gets_one_repair(openai_server):
    openai_server.script = [("text", "Sure! The report is {not json"), ("json", GOOD)]
    report, usage = expert_for(openai_server).correct(request())
    assert report.revision == REVISION and usage == Usage(200, 40)
    first, second = openai_server.requests
    assert second["messages"][: len(first["messages"])] == first["messages"]
    assistant, repair = second["messages"][-2:]
    assert assistant == {"role": "assistant", "content": "Sure! The report is {not json"}
    assert repair["role"] == "user" and "not JSON" in repair["content"] and "JSON object" in repair["content"]


def test_invalid_json_twice_is_recorded(openai_server):
    openai_server.script = [("text", "no"), ("text", "still no")]
    (result,) = correct_all(expert_for(openai_server), [request()])
    assert result.report is None and result.error.startswith("invalid reply")
    assert len(openai_server.requests) == 2
    assert result.usage == Usage(200, 40)  # the failed replies still cost tokens, and the summary counts them
    assert summarize_results([result])["completion_tokens"] == 40


def test_missing_field_repaired_or_recorded(openai_server):
    bad = copy.deepcopy(GOOD)
    del bad["sentences"][0]["score"]
    openai_server.script = [("json", bad), ("json", GOOD)]
    report, _ = expert_for(openai_server).correct(request())
    assert report.revision == REVISION
    assert "missing score" in openai_server.requests[1]["messages"][-1]["content"]

    openai_server.script = [("json", bad), ("json", bad)]
    (result,) = correct_all(expert_for(openai_server), [request()])
    assert result.error.startswith("invalid reply") and "sentences[0]: missing score" in result.error
    assert len(openai_server.requests) == 4


def test_refusal_is_recorded_without_repair(openai_server):
    openai_server.script = [("refusal", "I can't help with that.")]
    (result,) = correct_all(expert_for(openai_server), [request()])
    assert result.error.startswith("invalid reply: refused")
    assert len(openai_server.requests) == 1


def test_resume_only_sends_failed_requests(openai_server, tmp_path):
    healthy = False

    def reply(body):
        failing = any(f"image {i}." in user_text(body) for i in (4, 5, 6))
        return ("status", 500) if failing and not healthy else ("json", GOOD)

    openai_server.default = reply
    expert = expert_for(openai_server, max_retries=0)
    requests = [request(i) for i in range(1, 7)]
    first = correct_all(expert, requests, cache_dir=tmp_path, concurrency=2)
    assert [r.report is not None for r in first] == [True] * 3 + [False] * 3
    assert all(r.error.startswith("InternalServerError") for r in first[3:])
    assert len(openai_server.requests) == 6

    healthy = True
    openai_server.requests.clear()
    second = correct_all(expert, requests, cache_dir=tmp_path, concurrency=2)
    sent = sorted(i for b in openai_server.requests for i in range(1, 7) if f"image {i}." in user_text(b))
    assert sent == [4, 5, 6]  # the cached rows never reach the server
    assert all(r.report is not None and r.report.revision == REVISION for r in second)
    assert [r.cached for r in second] == [True] * 3 + [False] * 3
    summary = summarize_results(second)
    assert summary["ok"] == 6 and summary["cached"] == 3 and summary["prompt_tokens"] == 300


def test_missing_key_raises_and_key_never_leaks(openai_server, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIExpert(OpenAIExpertConfig(base_url=openai_server.base_url))
    monkeypatch.delenv("MY_VLM_KEY", raising=False)
    with pytest.raises(ValueError, match="MY_VLM_KEY"):
        OpenAIExpert(OpenAIExpertConfig(base_url=openai_server.base_url, api_key_env="MY_VLM_KEY"))

    monkeypatch.setenv("MY_VLM_KEY", "sk-test-SECRET")
    cfg = OpenAIExpertConfig(base_url=openai_server.base_url, api_key_env="MY_VLM_KEY", max_retries=0)
    expert = OpenAIExpert(cfg)
    openai_server.script = [("json", GOOD), ("text", "bad"), ("text", "bad")]  # one ok row, one that fails
    results = correct_all(expert, [request(1), request(2)], cache_dir=tmp_path, concurrency=1)
    assert results[0].report is not None and results[1].error.startswith("invalid reply")
    assert openai_server.headers[0]["authorization"] == "Bearer sk-test-SECRET"  # the key was used
    assert "SECRET" not in repr(expert) and "SECRET" not in repr(cfg)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and not any("SECRET" in p.read_text() for p in files)  # only the valid reply is cached


def test_config_validation_and_helpers():
    for bad in ({"timeout": 0}, {"max_retries": -1}, {"image_detail": "original"}):
        with pytest.raises(ValueError):
            OpenAIExpertConfig(**bad)
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        image_data_url(b"GIF89a")
    assert strip_fence('```\n{"a": 1}\n```') == '{"a": 1}' and strip_fence(' {"a": 1} ') == '{"a": 1}'
