"""Rollouts from a served policy (data_builders/served_rollout.py) against a loopback OpenAI-compatible server: the
request carries the image as a data URL, the sampling settings and a per-request seed; replies come back in order,
with n samples, finish reasons and log-probs; the reply cache makes a killed build's rerun ask nothing again;
adapters load by path and are sampled by name; faults follow the endpoint's policy."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from PIL import Image

from data_builders.configs import RolloutSettings
from data_builders.endpoint import EndpointFatalError, TransientReplyError
from data_builders.rollout import roll_out
from data_builders.served_rollout import ServedPolicyConfig, ServedRolloutEngine
from tests.openai_server import completion, openai_server_fixture  # noqa: F401  (the fixture)


def _png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _engine(server, tmp_path=None, **kw) -> ServedRolloutEngine:
    cfg = ServedPolicyConfig(base_url=server.base_url, max_retries=0, timeout=5, **kw)
    settings = RolloutSettings(temperature=0.7, top_p=0.9, top_k=30, max_new_tokens=48, batch_size=4)
    return ServedRolloutEngine(cfg, settings, cache_dir=None if tmp_path is None else tmp_path / "cache")


def echo(body: dict) -> tuple:
    """A reply that names the request's prompt and seed, so order and seeding are visible."""
    text = body["messages"][0]["content"][1]["text"]
    return ("text", f"{text} seed {body['seed']}")


def test_requests_carry_the_image_settings_and_seed_and_replies_keep_their_order(openai_server):
    openai_server.default = echo
    engine = _engine(openai_server)
    images, prompts = [_png(10), _png(20), _png(30)], ["a", "b", "c"]
    assert engine.generate(images, prompts, seed=100) == ["a seed 100", "b seed 101", "c seed 102"]
    body = next(r for r in openai_server.requests if r["messages"][0]["content"][1]["text"] == "b")
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == images[1]
    assert (body["model"], body["temperature"], body["top_p"], body["top_k"]) == ("policy", 0.7, 0.9, 30)
    assert body["max_completion_tokens"] == 48 and body["n"] == 1
    assert "authorization" not in openai_server.headers[0] or "EMPTY" in openai_server.headers[0]["authorization"]


def test_n_samples_finish_reasons_and_log_probs(openai_server):
    def n_choices(body):
        out = completion(body, "x")
        tokens = [
            {"token": t, "logprob": lp, "bytes": [97], "top_logprobs": []} for t, lp in (("a", -0.5), (" cup", -1.25))
        ]
        message = {"role": "assistant", "content": " a cup. "}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": {"content": tokens}}
        cut = {**choice, "index": 1, "finish_reason": "length"}
        out["choices"] = [choice, cut]
        return ("payload", out)

    openai_server.default = n_choices
    engine = _engine(openai_server)
    samples = engine.sample(_png(1), "Describe.", seed=7, n=2, logprobs=True)
    assert [s["text"] for s in samples] == ["a cup.", "a cup."]
    assert [s["finish_reason"] for s in samples] == ["stop", "length"] and samples[0]["logprobs"] == [-0.5, -1.25]
    assert openai_server.requests[-1]["n"] == 2 and openai_server.requests[-1]["logprobs"] is True
    openai_server.default = ("text", "no log-probs here")
    with pytest.raises(TransientReplyError, match="log-probs"):
        engine.sample(_png(2), "Describe.", seed=8, logprobs=True)


def test_a_killed_build_resumes_from_the_reply_cache(openai_server, tmp_path):
    openai_server.default = echo
    prompts = [{"id": f"p{i}", "image": _png(i), "prompt": f"q{i}"} for i in range(6)]
    first = roll_out(_engine(openai_server, tmp_path), prompts, tmp_path / "samples.jsonl", RolloutSettings(), 0)
    asked = len(openai_server.requests)
    (tmp_path / "samples.jsonl").unlink()  # as if killed before the batches were written: the replies are cached
    again = roll_out(_engine(openai_server, tmp_path), prompts, tmp_path / "samples.jsonl", RolloutSettings(), 0)
    assert again == first and len(openai_server.requests) == asked == 6


def test_requests_run_at_most_concurrency_at_a_time(openai_server):
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow(body):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return ("text", "ok")

    openai_server.default = slow
    assert _engine(openai_server, concurrency=3).generate([_png(i) for i in range(9)], ["q"] * 9, 0) == ["ok"] * 9
    assert 1 < peak[0] <= 3


def test_adapters_load_by_path_and_are_sampled_by_name(openai_server):
    openai_server.default = echo
    engine = _engine(openai_server)
    engine.load_adapter("round-1", "/shared/runs/round-1/final")
    assert openai_server.adapter_requests == [{"lora_name": "round-1", "lora_path": "/shared/runs/round-1/final"}]
    engine.generate([_png(1)], ["q"], 0)
    assert openai_server.requests[-1]["model"] == "round-1" and engine.name == "served:round-1"
    openai_server.adapter_reply = (400, "LoRA is not enabled")
    with pytest.raises(EndpointFatalError, match="enable-lora"):
        engine.load_adapter("round-2", "/elsewhere")
    assert engine.model == "round-1"  # still the last adapter that loaded
    fresh = _engine(openai_server)  # a resumed build asks for a name the server holds: vLLM's 400 means loaded
    fresh.load_adapter("round-1", "/shared/runs/round-1/final")
    assert fresh.model == "round-1"
    fresh.unload_adapter("round-1")
    fresh.unload_adapter("round-1")  # gone already (another process dropped it): not an error
    assert openai_server.adapter_unloads == ["round-1", "round-1"] and "round-1" not in openai_server.loaded_adapters


def test_faults_follow_the_endpoint_policy(openai_server):
    openai_server.script = [("error", (401, "bad key"))]
    with pytest.raises(EndpointFatalError):
        _engine(openai_server).generate([_png(1)], ["q"], 0)
    openai_server.script = [("status", 500)]
    with pytest.raises(TransientReplyError, match="'q'"):
        _engine(openai_server).generate([_png(1)], ["q"], 0)
    openai_server.script = [("payload", {"choices": []})]
    with pytest.raises(TransientReplyError, match="asked 1 samples"):
        _engine(openai_server).generate([_png(1)], ["q"], 0)


def test_adapter_loads_carry_the_key_and_a_refused_key_is_named_not_shown(openai_server, monkeypatch):
    monkeypatch.setenv("POLICY_KEY", "secret-policy-key-123")
    engine = _engine(openai_server, api_key_env="POLICY_KEY")
    engine.load_adapter("round-1", "/a")
    assert openai_server.adapter_headers[-1]["authorization"] == "Bearer secret-policy-key-123"
    openai_server.adapter_reply = (401, '{"error": "bad key secret-policy-key-123"}')
    with pytest.raises(EndpointFatalError, match="POLICY_KEY") as refused:
        engine.load_adapter("round-2", "/b")
    assert "secret-policy-key-123" not in str(refused.value)
