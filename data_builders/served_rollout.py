"""Rollouts from a policy served behind an OpenAI-compatible API: vLLM in its own environment (research/stack.md §0),
reached over HTTP, so the training environment never imports it.

    vllm serve llava-hf/llava-1.5-7b-hf --served-model-name policy --enable-lora --max-lora-rank 128 \
        --limit-mm-per-prompt '{"image": 1}' --port 8000
    engine = ServedRolloutEngine(ServedPolicyConfig(base_url="http://127.0.0.1:8000/v1"), RolloutSettings())
    engine.load_adapter("round-1", "/shared/runs/rlaif_v/round-1/final")   # the next requests sample that LoRA

One request per (image, prompt): a chat completion with the image as a data URL, the rollout's temperature, top_p
(and top_k, vLLM's extension), its token cap, `n` samples and a per-request seed, so a batch is reproducible where
the server honours seeds (vLLM does). Requests run `concurrency` at a time. The endpoint's fault policy holds
(data_builders/endpoint.py): transport faults are retried by the client, then raise naming the prompt; 401/403/404
stop the build at once. Every valid reply is cached on disk under a hash of everything that decides it (the served
model or adapter, the image, the prompt, the settings, the seed), so a killed build resumes without asking again.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

from data_builders.configs import RolloutSettings
from data_builders.endpoint import (
    EndpointFatalError,
    ReplyCache,
    ServedPolicyConfig,
    TransientReplyError,
    Usage,
    build_client,
    failure_reason,
    fatal_error,
    image_data_url,
    map_requests,
    redact,
)


class ServedRolloutEngine:
    """The RolloutEngine of data_builders/rollout.py on a served policy; `sample` gives n samples with their finish
    reasons and, on request, token log-probs."""

    def __init__(self, cfg: ServedPolicyConfig, settings: RolloutSettings, cache_dir: str | Path | None = None):
        self.cfg, self.settings = cfg, settings
        self.model = cfg.model  # an adapter's name once `load_adapter` ran
        self.client = build_client(cfg)
        self.cache = ReplyCache(cache_dir) if cache_dir is not None else None
        self.usage = Usage()

    @property
    def name(self) -> str:
        return f"served:{self.model}"

    def generate(self, images: list[bytes], prompts: list[str], seed: int) -> list[str]:
        """One sample per (image, prompt), request i seeded with seed + i."""
        replies = self.sample_many(images, prompts, seed)
        return [reply[0]["text"] for reply in replies]

    def generate_with_finish(self, images: list[bytes], prompts: list[str], seed: int) -> list[tuple[str, bool]]:
        """(text, finished) per prompt: finished is False when the server cut the reply at the token cap."""
        return [(r[0]["text"], r[0]["finish_reason"] != "length") for r in self.sample_many(images, prompts, seed)]

    def sample_many(self, images, prompts, seed: int, n: int = 1, logprobs: bool = False) -> list[list[dict]]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        return map_requests(
            lambda i: self.sample(images[i], prompts[i], seed + i, n, logprobs),
            list(range(len(prompts))),
            self.cfg.concurrency,
            desc="served rollout",
        )

    def sample(self, image: bytes, prompt: str, seed: int, n: int = 1, logprobs: bool = False) -> list[dict]:
        """n samples {text, finish_reason, logprobs (per token, or None)} for one prompt, from the cache or asked."""
        key = self.request_key(image, prompt, seed, n, logprobs)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            return cached["choices"]
        try:
            response = self.client.chat.completions.create(**self.request(image, prompt, seed, n, logprobs))
        except Exception as e:
            fatal = fatal_error(e, self.cfg, "policy server")
            if fatal is not None:
                raise fatal from None
            raise TransientReplyError(f"prompt {prompt[:60]!r}: {failure_reason(e, self.cfg)}") from None
        choices = [read_choice(c, logprobs) for c in (response.choices or [])]
        if len(choices) != n:
            raise TransientReplyError(f"prompt {prompt[:60]!r}: asked {n} samples, the server sent {len(choices)}")
        usage = Usage.of(response)
        self.usage += usage
        if self.cache is not None:
            self.cache.put(key, {"choices": choices, "usage": asdict(usage)})
        return choices

    def request(self, image: bytes, prompt: str, seed: int, n: int, logprobs: bool) -> dict:
        s = self.settings
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(image)}},
            {"type": "text", "text": prompt},
        ]
        kwargs = dict(
            model=self.model,
            messages=[{"role": "user", "content": content}],
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            max_completion_tokens=s.max_new_tokens,
            seed=seed,
        )
        if s.top_k:
            kwargs["extra_body"] = {"top_k": s.top_k}  # vLLM's sampling parameter beyond OpenAI's
        if logprobs:
            kwargs["logprobs"] = True
        return kwargs

    def request_key(self, image: bytes, prompt: str, seed: int, n: int, logprobs: bool) -> str:
        parts = {"model": self.model, "image": hashlib.sha256(image).hexdigest(), "prompt": prompt, "seed": seed}
        parts.update(n=n, logprobs=logprobs, settings=asdict(self.settings), base_url=self.cfg.base_url)
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Ask the server to load the LoRA adapter at `path` (a folder the server can read) as `name` (vLLM's
        /v1/load_lora_adapter; a new name per round, since vLLM keeps a loaded name's weights), and sample it from
        now on. A name the server already holds is taken as loaded: give each adapter a name that changes with its
        weights. The server must run with --enable-lora (and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""
        try:
            self._post("load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        except urllib.error.HTTPError as e:
            detail = redact(e.read().decode(errors="replace")[:300], self.cfg)
            if e.code in (401, 403):
                raise EndpointFatalError(
                    f"policy server {self.cfg.base_url} refused the key ({e.code}) when loading adapter {name!r}; "
                    f"check {self.cfg.api_key_env or 'api_key_env (null: no key sent)'}"
                ) from None
            if e.code == 400 and "already been" in detail:  # vLLM: "... has already been loaded." (a resumed round)
                self.model = name  # it keeps the name's first weights: names that carry their content agree
                return
            raise EndpointFatalError(
                f"policy server {self.cfg.base_url}: loading adapter {name!r} from {path} failed ({e.code}: "
                f"{detail}); is it started with --enable-lora, a --max-lora-rank at least the adapter's, and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True?"
            ) from None
        except urllib.error.URLError as e:
            raise EndpointFatalError(f"policy server {self.cfg.base_url} unreachable: {e.reason}") from None
        self.model = name

    def unload_adapter(self, name: str) -> None:
        """Ask the server to drop adapter `name` (vLLM's /v1/unload_lora_adapter), so a loop that loads one a step
        does not grow the server's table of names. A name the server does not hold (another process dropped it)
        is fine; any other refusal is only printed: sampling goes on with the adapters that are loaded."""
        try:
            self._post("unload_lora_adapter", {"lora_name": name})
        except urllib.error.HTTPError as e:
            if e.code not in (400, 404):
                detail = redact(e.read().decode(errors="replace")[:200], self.cfg)
                print(f"[served] the server kept adapter {name!r} ({e.code}: {detail})")
        except urllib.error.URLError as e:
            raise EndpointFatalError(f"policy server {self.cfg.base_url} unreachable: {e.reason}") from None

    def _post(self, route: str, body: dict) -> None:
        """POST `body` to one of vLLM's routes beside the OpenAI API, with the key the chat requests carry."""
        url = f"{self.cfg.base_url.rstrip('/')}/{route}"
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.client.api_key}"}
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=self.cfg.timeout) as reply:
            reply.read()


def read_choice(choice, logprobs: bool) -> dict:
    """{text, finish_reason, logprobs} of one choice; a choice without a message is not a usable reply."""
    message = getattr(choice, "message", None)
    if message is None:
        raise TransientReplyError("a choice without a message")
    tokens = None
    if logprobs:
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if not content:
            raise TransientReplyError("log-probs were asked for but the reply has none")
        tokens = [t.logprob for t in content]
    return {"text": (message.content or "").strip(), "finish_reason": choice.finish_reason, "logprobs": tokens}
