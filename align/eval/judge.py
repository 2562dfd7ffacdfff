"""An LLM judge on any OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style proxies, local vLLM).

Judge-scored benchmarks (MMHal-Bench) send one conversation per sample and parse the reply themselves; this module
only gets replies, reproducibly and cheaply:
- temperature 0 by default, and the model name the server reports (e.g. a dated snapshot) comes back with every
  reply, so each score can say which judge produced it;
- a disk cache (`data_builders.endpoint.ReplyCache`, one JSON file per request hash) keyed by model, messages,
  temperature, max_tokens and the benchmark's prompt version: a rerun makes no request for what it has seen;
- the fault policy of data_builders/endpoint.py: transport errors (connection, timeout, 429, 5xx, retried by the
  openai client first) and unusable replies (a body that is not JSON, no choices, a choice without its message)
  come back as a reply with `error` set, counted in `failures`, never cached, so the next run asks again; errors
  that no retry can fix (bad key, no permission, unknown model or route) raise `EndpointFatalError` at once
  instead of failing every sample alike.

The API key is read from the environment variable named by `api_key_env` (`build_client`) and lives only inside
the openai client: not in the config, the cache, the records or any repr.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_builders.endpoint import (
    JudgeConfig,
    ReplyCache,
    TransientReplyError,
    Usage,
    build_client,
    failure_reason,
    fatal_error,
    first_message,
)


def default_cache_dir() -> Path:
    """$ALIGN_CACHE/judge, else ~/.cache/align/judge: shared by every run, so rescoring other outputs of the same
    benchmark still reuses the replies for answers seen before."""
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align")) / "judge"


@dataclass(frozen=True)
class JudgeReply:
    text: str  # "" when the request failed or the model refused
    model: str  # as the server reported it; the configured name when there was no response
    cached: bool = False
    error: str | None = None  # set when no usable reply came (after the client's retries); never cached
    usage: Usage = field(default_factory=Usage)  # what this reply cost (zero from the cache)


class Judge:
    """Sends conversations to the judge model; see the module docstring for caching and failures."""

    def __init__(self, cfg: JudgeConfig, client=None):
        self.cfg = cfg
        # The key only lives inside the client: never on self or the config, so it cannot reach a repr or a cache.
        self.client = client if client is not None else build_client(cfg)
        self.cache = ReplyCache(cfg.cache_dir or default_cache_dir()) if cfg.cache else None
        self.usage = Usage()  # tokens this run paid for
        self.usage_all_runs = Usage()  # and those of the cached replies used, as recorded when they were paid
        self.sent = 0  # requests sent (the client's own retries of one request count once)
        self.requests = 0  # requests answered: the paid ones
        self.failures: Counter = Counter()  # failed samples by error type
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Judge(model={self.cfg.model!r}, base_url={self.cfg.base_url!r})"

    def key(self, messages: list[dict], prompt_version: str) -> str:
        """Everything that changes the reply, hashed; the endpoint is left out so a proxy change keeps the cache."""
        c = self.cfg
        blob = [c.model, messages, c.temperature, c.max_tokens, prompt_version]
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def complete(self, messages: list[dict], prompt_version: str = "") -> JudgeReply:
        key = self.key(messages, prompt_version)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            with self._lock:
                self.usage_all_runs += Usage(**hit.get("usage", {}))
            return JudgeReply(hit["text"], hit["model"], cached=True)
        try:
            reply = self._request(messages)
        except Exception as e:  # the endpoint's fault policy: fatal stops the run, the rest is retried next run
            if (fatal := fatal_error(e, self.cfg, "judge")) is not None:
                raise fatal from None
            with self._lock:  # an unusable reply by what was wrong with it, other faults by their type
                self.failures[str(e) if isinstance(e, TransientReplyError) else type(e).__name__] += 1
            return JudgeReply("", self.cfg.model, error=failure_reason(e, self.cfg))
        if self.cache is not None:
            entry = {"text": reply.text, "model": reply.model, "prompt_version": prompt_version}
            self.cache.put(key, {**entry, "usage": dataclasses.asdict(reply.usage)})
        return reply

    def _request(self, messages: list[dict]) -> JudgeReply:
        with self._lock:
            self.sent += 1
        response = self.client.chat.completions.create(
            model=self.cfg.model,
            messages=messages,
            temperature=self.cfg.temperature,
            max_completion_tokens=self.cfg.max_tokens,
        )
        paid = Usage.of(response)
        with self._lock:
            self.requests += 1
            self.usage += paid
            self.usage_all_runs += paid
        model = getattr(response, "model", None) or self.cfg.model
        _, message = first_message(response)  # TransientReplyError for no choices or no message
        return JudgeReply(message.content or "", model, usage=paid)  # a refusal has no content

    def summary(self) -> str:
        """One line: requests sent and answered, failures by type, tokens."""
        failed = sum(self.failures.values())
        reasons = f" ({', '.join(f'{k}: {v}' for k, v in sorted(self.failures.items()))})" if failed else ""
        return (
            f"judge {self.cfg.model}: {self.sent} requests sent, {self.requests} answered, {failed} failed{reasons}; "
            f"{self.usage.prompt_tokens} + {self.usage.completion_tokens} tokens this run, "
            f"{self.usage_all_runs.prompt_tokens} + {self.usage_all_runs.completion_tokens} for every reply used"
        )
