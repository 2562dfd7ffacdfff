"""data_builders/endpoint.py: one settings class under the expert's and the judge's, usage and cost, and an import
that pulls in no ML stack."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from data_builders.endpoint import EndpointConfig, JudgeConfig, OpenAIExpertConfig, Usage


def test_expert_and_judge_share_the_endpoint_settings():
    shared = {f.name for f in dataclasses.fields(EndpointConfig)}
    assert shared == {
        "base_url", "model", "api_key_env", "timeout", "max_retries", "temperature", "max_tokens", "price_in",
        "price_out",
    }  # fmt: skip
    assert {f.name for f in dataclasses.fields(OpenAIExpertConfig)} == shared | {"image_detail", "structured_output"}
    assert {f.name for f in dataclasses.fields(JudgeConfig)} == shared | {"cache_dir", "cache", "concurrency"}
    expert, judge = OpenAIExpertConfig(), JudgeConfig(model="judge-x")
    assert (expert.model, expert.max_tokens, judge.max_tokens) == ("gpt-4o", 2048, 1024)
    for cls in (OpenAIExpertConfig, JudgeConfig):
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: JudgeConfig(), "--judge-model"),
        (lambda: JudgeConfig(model="m", timeout=0), "timeout"),
        (lambda: JudgeConfig(model="m", max_tokens=0), "max_tokens"),
        (lambda: OpenAIExpertConfig(max_retries=-1), "max_retries"),
    ],
)
def test_settings_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_usage_adds_up_and_prices_per_million_tokens():
    class Reply:
        def __init__(self, usage):
            self.usage = usage

    usage = Usage()
    usage += Usage.of(Reply(type("U", (), {"prompt_tokens": 1_000_000, "completion_tokens": None})()))
    usage += Usage.of(Reply(None))  # a server that reports no usage adds nothing
    usage += Usage(0, 500_000)
    assert usage == Usage(1_000_000, 500_000)
    assert usage.cost_usd(2.5, 10.0) == 7.5 and usage.cost_usd() == 0.0


def test_endpoint_and_configs_import_no_ml_stack():
    code = (
        "import sys, data_builders.endpoint, data_builders.configs, data_builders.spans; "
        "print([m for m in ('torch', 'transformers', 'datasets', 'peft', 'openai') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
