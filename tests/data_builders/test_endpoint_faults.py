"""The expert and the RLAIF-V labeler under the endpoint's fault policy (issue 16), against a faulty local server:
every fault is recorded for its item and never cached, so a rerun against a healthy server asks again for exactly
the failed items and recovers them all; a rejected key stops the run at once."""

from __future__ import annotations

import pytest

from data_builders.claims import CheckRequest, Claim
from data_builders.endpoint import EndpointFatalError, OpenAIExpertConfig
from data_builders.experts import correct_all, summarize_results
from data_builders.openai_expert import OpenAIExpert
from data_builders.openai_feedback import OpenAILabeler
from tests.data_builders.test_openai_expert import GOOD, PNG, request
from tests.openai_server import openai_server_fixture  # noqa: F401  (provides the openai_server fixture)

COMPLETION = {"id": "x", "object": "chat.completion", "created": 0, "model": "m"}
FAULTS = {  # what a broken server or model can send; each must cost the item, not the run
    "500": ("status", 500),
    "429": ("status", 429),
    "not JSON": ("raw", '{"id": "x", "choices": ['),
    "no choices": ("payload", {**COMPLETION, "choices": []}),
    "no message": ("payload", {**COMPLETION, "choices": [{"index": 0, "finish_reason": "stop"}]}),
    "empty reply": ("text", ""),
    "off-schema": ("json", {"sentences": "not a list"}),
}


def cfg_for(server, **kw) -> OpenAIExpertConfig:
    return OpenAIExpertConfig(base_url=server.base_url, model="vlm", api_key_env=None, max_retries=0, **kw)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_an_expert_fault_is_recorded_never_cached_and_retried_on_rerun(openai_server, tmp_path, fault):
    # an off-schema reply gets its one repair turn, which fails the same way
    openai_server.script = [FAULTS[fault]] * (2 if fault == "off-schema" else 1)
    openai_server.default = ("json", GOOD)
    requests = [request(1), request(2)]
    first = correct_all(OpenAIExpert(cfg_for(openai_server)), requests, tmp_path, concurrency=1)
    assert first[0].error and first[0].report is None and first[1].report is not None
    assert summarize_results(first)["failures"] and summarize_results(first)["ok"] == 1
    sent = len(openai_server.requests)
    second = correct_all(OpenAIExpert(cfg_for(openai_server)), requests, tmp_path, concurrency=1)
    assert [r.report is not None for r in second] == [True, True]  # 0 rows lost once the fault clears
    assert [r.cached for r in second] == [False, True]  # only the failed row was asked again
    assert len(openai_server.requests) == sent + 1


def test_a_rejected_key_stops_the_expert_at_once(openai_server, tmp_path):
    openai_server.default = ("status", 401)
    requests = [request(i) for i in range(20)]
    with pytest.raises(EndpointFatalError, match="expert 'vlm' at .*AuthenticationError.*check the model name"):
        correct_all(OpenAIExpert(cfg_for(openai_server)), requests, tmp_path, concurrency=2)
    assert len(openai_server.requests) <= 4  # what the 2 workers had in flight, not the 20 queued


def check(i: int) -> CheckRequest:
    return CheckRequest(f"r{i}", PNG, Claim(f"claim {i}", f"is there a cat {i}?", "statement"))


@pytest.mark.parametrize("fault", ["500", "not JSON", "no choices", "no message"])
def test_a_labeler_fault_is_counted_never_cached_and_retried_on_rerun(openai_server, tmp_path, fault):
    openai_server.script = [FAULTS[fault]]
    openai_server.default = ("logprobs", [("Yes", -0.1), ("No", -2.5)])
    labeler = OpenAILabeler(cfg_for(openai_server), cache_dir=tmp_path, concurrency=1)
    assert [p is None for p in labeler.p_yes([check(1), check(2)])] == [True, False]
    assert sum(labeler.failures.values()) == 1
    again = OpenAILabeler(cfg_for(openai_server), cache_dir=tmp_path, concurrency=1)
    assert all(p is not None for p in again.p_yes([check(1), check(2)]))
    assert again.answers["cache"] == 1 and len(openai_server.requests) == 3


def test_a_rejected_key_stops_the_labeler_at_once(openai_server, tmp_path):
    openai_server.default = ("status", 403)
    labeler = OpenAILabeler(cfg_for(openai_server), cache_dir=tmp_path, concurrency=2)
    with pytest.raises(EndpointFatalError, match="labeler 'vlm'.*PermissionDeniedError"):
        labeler.p_yes([check(i) for i in range(20)])
    assert len(openai_server.requests) <= 4  # what the 2 workers had in flight, not the 20 queued
