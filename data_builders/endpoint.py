"""An OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style proxies, a local vLLM server), shared by the
expert (data_builders/openai_expert.py), the RLAIF-V divider and labeler (data_builders/openai_feedback.py) and the
LLM judge (align/eval/judge.py): the settings, the client, one JSON-reply request, the image data URL, the disk
reply cache, and token usage with its cost.

The API key is never a setting: `api_key_env` names the environment variable that holds it, `build_client` reads it
there, and it lives only inside the openai client (not in a config, a cache, a record or a repr); `redact` takes it
out of any message we print or store (an error body may echo it).

The fault policy, one for every caller (expert, divider, labeler, judge):
- transport faults (connection, timeout, 408/409/429/5xx) are retried by the openai client itself (`max_retries`,
  exponential backoff), then come back as `TransientReplyError`s, like a reply that is empty, not JSON, missing
  its message or breaking the schema: each is recorded per item with its reason, never cached, and asked again
  on the next run. Only valid replies are cached;
- `fatal_error` turns errors that no retry can fix (401, 403, 404: key, permission, model or route) into one
  `EndpointFatalError` that stops the run at once, naming what to check.
This module imports no torch, transformers or datasets, and `openai` only when a client is built or a fault is
classified.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data_builders.progress import bar

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


@dataclass
class EndpointConfig:
    """Where an OpenAI-compatible endpoint is and how to ask it (the settings every caller shares)."""

    base_url: str | None = field(
        default=None,
        metadata={"help": "API root, e.g. http://127.0.0.1:8000/v1 (vLLM); None = client default (api.openai.com)"},
    )
    model: str = field(default="gpt-4o", metadata={"help": "model name sent with every request"})
    api_key_env: str | None = field(
        default="OPENAI_API_KEY",
        metadata={"help": "name of the environment variable holding the API key; null = no key (local servers)"},
    )
    timeout: float = field(default=120.0, metadata={"help": "seconds per HTTP attempt"})
    max_retries: int = field(
        default=5,
        metadata={"help": "client retries (exponential backoff) on connection errors, timeouts, 408/409/429/5xx"},
    )
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature; 0 for repeatable replies"})
    max_tokens: int = field(default=2048, metadata={"help": "cap on reply tokens (sent as max_completion_tokens)"})
    price_in: float = field(default=0.0, metadata={"help": "USD per 1M prompt tokens, for the cost estimate"})
    price_out: float = field(default=0.0, metadata={"help": "USD per 1M completion tokens, for the cost estimate"})

    def __post_init__(self):
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class OpenAIExpertConfig(EndpointConfig):
    """The endpoint of the OPA-DPO expert and of the RLAIF-V divider and labeler (they send images)."""

    image_detail: str = field(default="auto", metadata={"help": "image_url detail: auto, low or high"})
    structured_output: bool = field(
        default=True,
        metadata={"help": "send response_format json_schema (strict); False for servers without it (prompt only)"},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.image_detail not in ("auto", "low", "high"):
            raise ValueError(f"image_detail must be auto, low or high, got {self.image_detail!r}")


@dataclass
class JudgeConfig(EndpointConfig):
    """The endpoint of the LLM judge of judge-scored benchmarks (align/eval/judge.py); the model must be named."""

    model: str = field(default="", metadata={"help": "judge model name sent with every request, e.g. gpt-4o"})
    max_tokens: int = field(default=1024, metadata={"help": "cap on reply tokens (sent as max_completion_tokens)"})
    cache_dir: str | None = field(default=None, metadata={"help": "reply cache (default $ALIGN_CACHE/judge)"})
    cache: bool = field(default=True, metadata={"help": "False: no cache (every run asks again)"})
    concurrency: int = field(default=4, metadata={"help": "judge requests in flight"})

    def __post_init__(self):
        if not self.model:
            raise ValueError("the judge needs a model name (--judge-model)")
        if self.concurrency < 1:
            raise ValueError(f"judge concurrency must be >= 1, got {self.concurrency}")
        super().__post_init__()


@dataclass
class ServedPolicyConfig(EndpointConfig):
    """A policy served by vLLM (or any OpenAI-compatible server that takes images) that rolls out for a build
    (data_builders/served_rollout.py)."""

    base_url: str | None = field(default="http://127.0.0.1:8000/v1", metadata={"help": "The server's API root."})
    model: str = field(default="policy", metadata={"help": "The served model name (vllm serve --served-model-name)."})
    api_key_env: str | None = field(default=None, metadata={"help": "Env variable with the key; null = no key."})
    concurrency: int = field(default=16, metadata={"help": "Requests in flight."})

    def __post_init__(self):
        super().__post_init__()
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


class EndpointFatalError(ValueError):
    """Every request to this endpoint would fail the same way (bad key, no permission, unknown model or route)."""


class TransientReplyError(RuntimeError):
    """A reply that cannot be used this time (no choices, no message, empty, not JSON, off-schema): recorded for the
    item, never cached, asked again on the next run."""


def redact(text: str, cfg: EndpointConfig | None = None) -> str:
    """`text` without the API key: the value of cfg.api_key_env (an error body may echo the key we sent), and any
    OpenAI-style secret key."""
    key = os.environ.get(cfg.api_key_env) if cfg is not None and cfg.api_key_env else None
    if key and len(key) >= 4:
        text = text.replace(key, "***")
    return _SECRET.sub("sk-***", text)


_SECRET = re.compile(r"sk-[A-Za-z0-9_\-]{8,}")


def fatal_error(exc: BaseException, cfg: EndpointConfig, role: str) -> EndpointFatalError | None:
    """The run-stopping error for `exc` when no retry can fix it, else None (the item is recorded and retried)."""
    import openai

    if not isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)):
        return None
    key = f"the API key variable {cfg.api_key_env}" if cfg.api_key_env else "the API key (api_key_env: none)"
    return EndpointFatalError(
        redact(f"{role} {cfg.model!r} at {cfg.base_url or 'api.openai.com'}: {type(exc).__name__}: {exc} ", cfg)
        + f"(check the model name, the base URL and {key})"
    )


def failure_reason(exc: BaseException, cfg: EndpointConfig) -> str:
    """One line for an item's failure record: the error's type and message, without the key."""
    return redact(f"{type(exc).__name__}: {exc}", cfg)


def first_message(response):
    """choices[0].message of a chat completion, or TransientReplyError when the reply has none (a server may send
    an empty `choices` list or a choice without its message)."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise TransientReplyError("reply has no choices")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise TransientReplyError("reply's first choice has no message")
    return choices[0], message


def map_requests(fn: Callable, items: list, concurrency: int, desc: str) -> list:
    """fn over items on `concurrency` threads, results in input order, with a progress bar. The first
    EndpointFatalError stops the run: queued items are not sent (each checks a shared flag before it starts,
    so at most the requests already in flight go out), and the error is raised."""
    stop = threading.Event()

    def guarded(item):
        if stop.is_set():
            return None  # never sent: the run is stopping on a fatal error
        try:
            return fn(item)
        except EndpointFatalError:
            stop.set()
            raise

    results: list = [None] * len(items)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = {pool.submit(guarded, item): i for i, item in enumerate(items)}
        for future in bar(concurrent.futures.as_completed(futures), total=len(futures), desc=desc):
            results[futures[future]] = future.result()
    finally:
        pool.shutdown(cancel_futures=True)
    return results


def build_client(cfg: EndpointConfig):
    """An openai client for cfg; the key is read from cfg.api_key_env and kept only inside the client."""
    import openai  # lazy: only the OpenAI-backed builders and the judge need it

    if cfg.api_key_env is None:
        api_key = "EMPTY"  # OpenAI-compatible local servers want some value in the header
    else:
        api_key = os.environ.get(cfg.api_key_env)
        if not api_key:
            raise ValueError(
                f"environment variable {cfg.api_key_env} is not set: export {cfg.api_key_env}=<your key>, "
                "or, for a server that needs no key, set api_key_env: null in the config "
                "(--judge-api-key-env none on the align eval command line)"
            )
    return openai.OpenAI(api_key=api_key, base_url=cfg.base_url, timeout=cfg.timeout, max_retries=cfg.max_retries)


def json_completion(client, cfg: OpenAIExpertConfig, messages: list[dict], name: str, schema: dict):
    """One chat completion asking for a JSON reply: the schema is sent as a strict json_schema response format when
    `cfg.structured_output`, else only the prompt asks for it (servers without structured outputs)."""
    kwargs = {}
    if cfg.structured_output:
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": True},
        }
    return client.chat.completions.create(
        model=cfg.model,
        messages=messages,
        temperature=cfg.temperature,
        max_completion_tokens=cfg.max_tokens,
        **kwargs,
    )


def image_data_url(image: bytes) -> str:
    """An encoded PNG or JPEG as a data URL for an image_url message part; ValueError for any other bytes."""
    if image.startswith(b"\xff\xd8\xff"):
        mime = "image/jpeg"
    elif image.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    else:  # not a reply error: the request is bad, not the reply
        raise ValueError(f"image is neither PNG nor JPEG (starts with {image[:8]!r})")
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def strip_fence(content: str) -> str:
    """A reply without the Markdown code fence some models put around JSON."""
    content = content.strip()
    match = _FENCE.match(content)
    return match.group(1).strip() if match else content


class ReplyCache:
    """One JSON file per request hash; written atomically, so a killed run never leaves a torn entry."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def recorded_usage(self) -> Usage:
        """The tokens every cached reply cost when it was paid for (entries that store a `usage`): what the
        endpoint was paid over all runs that share this cache, for the replies that were valid."""
        total = Usage()
        for path in self.root.rglob("*.json"):
            try:
                total += Usage(**json.loads(path.read_text()).get("usage", {}))
            except (json.JSONDecodeError, TypeError, AttributeError):
                continue  # an entry without usage, or not ours
        return total

    def put(self, key: str, value: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, path)


@dataclasses.dataclass
class Usage:
    """Tokens sent and received; `cost_usd` prices them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __iadd__(self, other: Usage) -> Usage:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        return self

    @classmethod
    def of(cls, response) -> Usage:
        """The usage a chat-completions response reports (zero when the server reports none)."""
        if response.usage is None:
            return cls()
        return cls(response.usage.prompt_tokens or 0, response.usage.completion_tokens or 0)

    def cost_usd(self, price_in: float = 0.0, price_out: float = 0.0) -> float:
        """The cost at `price_in` / `price_out` USD per 1M prompt / completion tokens, rounded to 1e-4."""
        return round((self.prompt_tokens * price_in + self.completion_tokens * price_out) / 1e6, 4)
