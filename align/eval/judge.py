"""An LLM judge on any OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style proxies, local vLLM).

Judge-scored benchmarks (MMHal-Bench) send one conversation per sample and parse the reply themselves; this module
only gets replies, reproducibly and cheaply:
- temperature 0 by default, and the model name the server reports (e.g. a dated snapshot) comes back with every
  reply, so each score can say which judge produced it;
- a disk cache (`data_builders.endpoint.ReplyCache`, one JSON file per request hash) keyed by model, messages,
  temperature, max_tokens and the benchmark's prompt version: a rerun makes no request for what it has seen;
- transport errors (connection, timeout, 429, 5xx) are retried by the openai client (`max_retries`, backoff) and
  then come back as a reply with `error` set, never cached, so the next run asks again. Errors that no retry can
  fix (bad key, no permission, unknown model or route) raise at once instead of failing every sample alike.

The API key is read from the environment variable named by `api_key_env` (`build_client`) and lives only inside
the openai client: not in the config, the cache, the records or any repr.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from data_builders.endpoint import JudgeConfig, ReplyCache, Usage, build_client


def default_cache_dir() -> Path:
    """$ALIGN_CACHE/judge, else ~/.cache/align/judge: shared by every run, so rescoring other outputs of the same
    benchmark still reuses the replies for answers seen before."""
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align")) / "judge"


@dataclass(frozen=True)
class JudgeReply:
    text: str  # "" when the request failed or the model refused
    model: str  # as the server reported it; the configured name when there was no response
    cached: bool = False
    error: str | None = None  # set only when no reply came (transport failure after retries); never cached


class Judge:
    """Sends conversations to the judge model; see the module docstring for caching and failures."""

    def __init__(self, cfg: JudgeConfig, client=None):
        self.cfg = cfg
        # The key only lives inside the client: never on self or the config, so it cannot reach a repr or a cache.
        self.client = client if client is not None else build_client(cfg)
        self.cache = ReplyCache(cfg.cache_dir or default_cache_dir()) if cfg.cache else None
        self.usage = Usage()
        self.requests = 0
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
            return JudgeReply(hit["text"], hit["model"], cached=True)
        import openai  # lazy: only judge-scored benchmarks need it

        try:
            reply = self._request(messages)
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            # configuration errors: every sample would fail the same way, so stop with what to check
            raise ValueError(
                f"judge {self.cfg.model!r} at {self.cfg.base_url or 'api.openai.com'}: {type(e).__name__}: {e} "
                "(check the judge model name, base URL and API key variable)"
            ) from None
        except openai.APIError as e:
            return JudgeReply("", self.cfg.model, error=f"{type(e).__name__}: {e}")
        if self.cache is not None:
            self.cache.put(key, {"text": reply.text, "model": reply.model, "prompt_version": prompt_version})
        return reply

    def _request(self, messages: list[dict]) -> JudgeReply:
        response = self.client.chat.completions.create(
            model=self.cfg.model,
            messages=messages,
            temperature=self.cfg.temperature,
            max_completion_tokens=self.cfg.max_tokens,
        )
        with self._lock:
            self.requests += 1
            if response.usage is not None:
                self.usage += Usage(response.usage.prompt_tokens or 0, response.usage.completion_tokens or 0)
        model = getattr(response, "model", None) or self.cfg.model
        if not response.choices:
            return JudgeReply("", model)
        return JudgeReply(response.choices[0].message.content or "", model)  # a refusal has no content
