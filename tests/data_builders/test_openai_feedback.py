"""OpenAIDivider and OpenAILabeler through the real openai client against a local scripted server: P(yes) from
logprobs and the text fallback, failed checks as None, the repair turn, disk caches, and the API key staying out
of reprs and caches."""

from __future__ import annotations

import base64
import json
import math

import pytest

from data_builders.claims import CheckRequest, Claim
from data_builders.endpoint import OpenAIExpertConfig, TransientReplyError, Usage
from data_builders.openai_feedback import (
    CLAIMS_SCHEMA,
    DividerReplyError,
    OpenAIDivider,
    OpenAILabeler,
    divide_all,
)
from tests.openai_server import openai_server_fixture  # noqa: F401  (provides the openai_server fixture)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
CLAIMS = {
    "claims": [
        {"claim": "there is a dog", "question": "Is there a dog in the image?"},
        {"claim": "the dog is brown", "question": "Is the dog brown?"},
    ]
}
EXPECTED = [
    Claim("there is a dog", "Is there a dog in the image?", "statement"),
    Claim("the dog is brown", "Is the dog brown?", "statement"),
]


def cfg_for(server, **kw) -> OpenAIExpertConfig:
    kw = {"timeout": 2.0, "max_retries": 0, "api_key_env": None, **kw}
    return OpenAIExpertConfig(base_url=server.base_url, model="test-vlm", **kw)


def check(question: str, image: bytes = PNG) -> CheckRequest:
    return CheckRequest(f"r#{question}", image, Claim(question, question, "statement"))


def question_of(body: dict) -> str:
    return body["messages"][0]["content"][1]["text"].split("\n")[0]


def by_question(replies: dict):
    """A server behaviour that answers each request by the question it asks."""
    return lambda body: replies[question_of(body)]


# --- labeler -----------------------------------------------------------------------------------------------------


def test_logprob_variants_give_normalised_p_yes(openai_server):
    top = [("Yes", math.log(0.5)), (" yes", math.log(0.1)), ("No", math.log(0.2)), (" no", math.log(0.05))]
    top += [("Maybe", math.log(0.1)), ("yes.", math.log(0.05))]  # neither word once stripped and lower-cased
    openai_server.script = [("logprobs", top)]
    labeler = OpenAILabeler(cfg_for(openai_server))
    (p,) = labeler.p_yes([check("Is the dog brown?")])
    assert p == pytest.approx(0.6 / 0.85)
    assert labeler.usage == Usage(100, 20) and labeler.answers["logprobs"] == 1 and not labeler.failures

    (body,) = openai_server.requests
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["max_completion_tokens"] == 1 and body["temperature"] == 0.0 and body["model"] == "test-vlm"
    image, text = body["messages"][0]["content"]
    prefix = "data:image/png;base64,"
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith(prefix)
    assert base64.b64decode(image["image_url"]["url"][len(prefix) :]) == PNG
    assert text["text"].startswith("Is the dog brown?\n") and "yes or no" in text["text"]
    assert openai_server.headers[0]["authorization"] == "Bearer EMPTY"


def test_no_rejection_when_no_outweighs_yes(openai_server):
    openai_server.script = [("logprobs", [("no", math.log(0.7)), ("NO", math.log(0.1)), ("Yes", math.log(0.2))])]
    (p,) = OpenAILabeler(cfg_for(openai_server)).p_yes([check("q")])
    assert p == pytest.approx(0.2)


def test_text_fallback_and_unanswerable(openai_server):
    openai_server.default = by_question(
        {
            "plain yes": ("text", "Yes."),
            "plain no": ("text", "**No**, it is not."),
            "not no": ("text", "Nothing"),
            "garbage": ("text", "Perhaps"),
            "odd logprobs": ("logprobs", [(" Yes!", -0.1), ("Sure", -2.0)]),  # no bare yes/no token: the text decides
            "useless logprobs": ("logprobs", [("Maybe", -0.1), ("Perhaps", -2.0)]),
            "refused": ("refusal", "I cannot help with that."),
        }
    )
    labeler = OpenAILabeler(cfg_for(openai_server), concurrency=3)
    questions = ["plain yes", "plain no", "not no", "garbage", "odd logprobs", "useless logprobs", "refused"]
    assert labeler.p_yes([check(q) for q in questions]) == [1.0, 0.0, None, None, 1.0, None, None]
    assert labeler.failures == {"no yes/no answer": 3, "refused": 1}
    assert labeler.answers == {"text": 3}


def test_persistent_errors_are_none_and_counted(openai_server):
    openai_server.default = by_question(
        {
            "ok 1": ("logprobs", [("Yes", 0.0)]),
            "broken": ("status", 500),
            "slow": ("sleep", 5.0, ("text", "yes")),
            "ok 2": ("text", "no"),
        }
    )
    labeler = OpenAILabeler(cfg_for(openai_server, max_retries=1, timeout=0.3), concurrency=4)
    result = labeler.p_yes([check(q) for q in ("ok 1", "broken", "slow", "ok 2")] + [check("bad", image=b"GIF89a")])
    assert result == [1.0, None, None, 0.0, None]
    assert labeler.failures == {"InternalServerError": 1, "APITimeoutError": 1, "bad image": 1}
    sent = sorted(question_of(b) for b in openai_server.requests)
    assert sent == ["broken", "broken", "ok 1", "ok 2", "slow", "slow"]  # each failure had its one client retry


def test_cache_answers_reruns_and_retries_failures(openai_server, tmp_path):
    healthy = False

    def reply(body):
        if question_of(body) == "flaky" and not healthy:
            return ("status", 500)
        return ("logprobs", [("Yes", math.log(0.9)), ("No", math.log(0.1))])

    openai_server.default = reply
    requests = [check("stable"), check("flaky")]
    first = OpenAILabeler(cfg_for(openai_server), cache_dir=tmp_path).p_yes(requests)
    assert first[0] == pytest.approx(0.9) and first[1] is None
    assert len(openai_server.requests) == 2

    healthy = True
    openai_server.requests.clear()
    labeler = OpenAILabeler(cfg_for(openai_server), cache_dir=tmp_path)
    second = labeler.p_yes(requests)
    assert second == pytest.approx([0.9, 0.9])
    assert [question_of(b) for b in openai_server.requests] == ["flaky"]  # only the failed check was asked again
    assert labeler.answers == {"cache": 1, "logprobs": 1} and labeler.usage == Usage(100, 20)

    openai_server.requests.clear()
    assert labeler.p_yes(requests) == pytest.approx([0.9, 0.9])
    assert openai_server.requests == []
    # another image or another model is another question
    OpenAILabeler(cfg_for(openai_server), cache_dir=tmp_path).p_yes([check("stable", image=PNG + b"\x01")])
    other = OpenAIExpertConfig(base_url=openai_server.base_url, model="other-vlm", api_key_env=None, max_retries=0)
    OpenAILabeler(other, cache_dir=tmp_path).p_yes([check("stable")])
    assert len(openai_server.requests) == 2


def test_missing_key_raises_and_key_never_leaks(openai_server, tmp_path, monkeypatch):
    monkeypatch.delenv("MY_VLM_KEY", raising=False)
    with pytest.raises(ValueError, match="MY_VLM_KEY"):
        OpenAILabeler(cfg_for(openai_server, api_key_env="MY_VLM_KEY"))
    with pytest.raises(ValueError, match="MY_VLM_KEY"):
        OpenAIDivider(cfg_for(openai_server, api_key_env="MY_VLM_KEY"))

    monkeypatch.setenv("MY_VLM_KEY", "sk-test-SECRET")
    cfg = cfg_for(openai_server, api_key_env="MY_VLM_KEY")
    labeler = OpenAILabeler(cfg, cache_dir=tmp_path / "labels")
    divider = OpenAIDivider(cfg, cache_dir=tmp_path / "claims")
    openai_server.default = lambda body: ("json", CLAIMS) if "response_format" in body else ("text", "yes")
    assert labeler.p_yes([check("q")]) == [1.0]
    assert divider.divide("Describe.", "A brown dog.") == EXPECTED
    assert [h["authorization"] for h in openai_server.headers] == ["Bearer sk-test-SECRET"] * 2
    for obj in (cfg, labeler, divider):
        assert "SECRET" not in repr(obj)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2 and not any("SECRET" in p.read_text() for p in files)


# --- divider -----------------------------------------------------------------------------------------------------


def test_divider_valid_reply(openai_server):
    openai_server.script = [("json", CLAIMS)]
    divider = OpenAIDivider(cfg_for(openai_server))
    assert divider.divide("Describe the image.", "A brown dog.") == EXPECTED
    assert divider.divider_id == "openai:test-vlm:rlaifv-divide-v1" and divider.usage == Usage(100, 20)
    (body,) = openai_server.requests
    assert body["response_format"]["json_schema"]["schema"] == CLAIMS_SCHEMA
    assert body["response_format"]["json_schema"]["strict"] is True
    system, user = body["messages"]
    assert system["role"] == "system" and isinstance(user["content"], str)  # text only: no image
    assert "Describe the image." in user["content"] and "A brown dog." in user["content"]


def test_divider_plain_prompt_mode_and_fenced_reply(openai_server):
    openai_server.script = [("text", "```json\n" + json.dumps({"claims": []}) + "\n```")]
    assert OpenAIDivider(cfg_for(openai_server, structured_output=False)).divide("Q", "Hello.") == []
    assert "response_format" not in openai_server.requests[0]


@pytest.mark.parametrize(
    "bad, complaint",
    [("Here you go: {not json", "not JSON"), (json.dumps({"claims": [{"claim": "a dog"}]}), "claims[0]")],
)
def test_divider_repairs_once(openai_server, bad, complaint):
    openai_server.script = [("text", bad), ("json", CLAIMS)]
    divider = OpenAIDivider(cfg_for(openai_server))
    assert divider.divide("Q", "A brown dog.") == EXPECTED
    first, second = openai_server.requests
    assert second["messages"][: len(first["messages"])] == first["messages"]
    assistant, repair = second["messages"][-2:]
    assert assistant == {"role": "assistant", "content": bad}
    assert repair["role"] == "user" and complaint in repair["content"]
    assert divider.usage == Usage(200, 40)


def test_divider_invalid_twice_raises(openai_server):
    openai_server.script = [("text", "no"), ("json", {"claims": "none"})]
    with pytest.raises(DividerReplyError, match="'claims' list.*after one repair.*not JSON"):
        OpenAIDivider(cfg_for(openai_server)).divide("Q", "A brown dog.")
    assert len(openai_server.requests) == 2
    assert issubclass(DividerReplyError, ValueError)


def test_divider_cache_and_divide_all(openai_server, tmp_path):
    def reply(body):
        text = body["messages"][1]["content"]
        if "broken" in text:
            return ("status", 500)
        return ("text", "garbage") if "garbled" in text else ("json", CLAIMS)

    openai_server.default = reply
    items = [("Q", "A brown dog."), ("Q", "broken"), ("Q", "garbled"), ("Q2", "A brown dog.")]
    out = divide_all(OpenAIDivider(cfg_for(openai_server), cache_dir=tmp_path), items, concurrency=3)
    assert out[0] == EXPECTED and out[3] == EXPECTED
    assert isinstance(out[1], TransientReplyError) and "InternalServerError" in str(out[1])  # not cached
    assert isinstance(out[2], DividerReplyError)
    assert len(openai_server.requests) == 1 + 1 + 2 + 1

    openai_server.requests.clear()
    divider = OpenAIDivider(cfg_for(openai_server), cache_dir=tmp_path)
    assert divide_all(divider, [items[0], items[3]]) == [EXPECTED, EXPECTED]
    assert openai_server.requests == [] and divider.usage == Usage()
