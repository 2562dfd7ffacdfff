"""An `Expert` backed by any OpenAI-compatible chat-completions VLM (OpenAI, Azure-style proxies, local vLLM).

One request = one chat completion: a system prompt with the correction rules and the JSON format, and a user
message with the question, the reference answer, the response as numbered sentences and the image as a data URL.
A reply that does not parse or validate gets exactly one repair turn; after that the row fails with
`ExpertReplyError` (recorded and cached by `correct_all`). Transport errors (connection, timeout, 429, 5xx) are
retried by the openai client itself (`max_retries`, exponential backoff) and then propagate, so `correct_all`
records them as transient and a rerun tries again.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field

from data_builders.experts import REPORT_SCHEMA, CorrectionRequest, ExpertReplyError, ExpertReport, Usage, sentences_of

# Part of expert_id, hence of the cache key: bump it whenever the prompt or the message layout changes.
PROMPT_VERSION = "opa-sentences-v1"

SYSTEM_PROMPT = """\
You review answers that another assistant gave about an image, and fix them with as little change as possible.

You receive the image, the question, a reference answer (mostly right but possibly incomplete; when it disagrees \
with the image, believe the image) and the assistant's response, split into numbered sentences.

Go through the numbered sentences in order and produce one entry per sentence:
- "copied": the sentence exactly as given.
- "score": 4 when everything the sentence states is true of the image; 3 when it has a small slip such as a wrong \
count, size, colour or position detail; 2 when it names a wrong object or a wrong relation between objects; 1 when \
it is off-topic or talks about things that do not exist in the image.
- "error_type": "correct" for score 4; "image_recognition_error" when the mistake is about what the image shows; \
"language_comprehension_error" when the sentence misunderstands the question or is incoherent.
- "objects": every wrong item paired with its fix as "wrong -> right", for example "dog -> cat" or "three -> two"; \
an empty list for a correct sentence.
- "rewritten": the sentence after the smallest edit that makes it true. Keep the assistant's own words, style and \
length and change only what is wrong; a correct sentence is copied unchanged. Use an empty string when nothing in \
the sentence can be kept.
- "reason": one short sentence justifying the score.

After the sentences, "added" may hold one or two new sentences with important content the response left out (from \
the image or the reference answer), and "added_reason" says why; leave both empty when nothing important is \
missing. Never put new content into "rewritten".

Reply with one JSON object and nothing else, shaped like this:
{"sentences": [{"copied": "...", "score": 4, "error_type": "correct", "objects": [], "rewritten": "...", \
"reason": "..."}], "added": "", "added_reason": ""}"""

REPAIR_PROMPT = (
    "That reply could not be used ({error}). Send the whole report again as a single JSON object in exactly the "
    "required format, with no text or code fence around it."
)

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


@dataclass
class OpenAIExpertConfig:
    base_url: str | None = field(
        default=None,
        metadata={"help": "API root, e.g. http://127.0.0.1:8000/v1 (vLLM); None = client default (api.openai.com)"},
    )
    model: str = field(default="gpt-4o", metadata={"help": "model name sent with every request"})
    api_key_env: str | None = field(
        default="OPENAI_API_KEY",
        metadata={"help": "name of the environment variable holding the API key; None = no key (local servers)"},
    )
    timeout: float = field(default=120.0, metadata={"help": "seconds per HTTP attempt"})
    max_retries: int = field(
        default=5,
        metadata={"help": "client retries (exponential backoff) on connection errors, timeouts, 408/409/429/5xx"},
    )
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature of the expert"})
    max_tokens: int = field(default=2048, metadata={"help": "cap on reply tokens (sent as max_completion_tokens)"})
    image_detail: str = field(default="auto", metadata={"help": "image_url detail: auto, low or high"})
    price_in: float = field(default=0.0, metadata={"help": "USD per 1M prompt tokens, for the cost estimate"})
    price_out: float = field(default=0.0, metadata={"help": "USD per 1M completion tokens, for the cost estimate"})
    structured_output: bool = field(
        default=True,
        metadata={"help": "send response_format json_schema (strict); False for servers without it (prompt only)"},
    )

    def __post_init__(self):
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.image_detail not in ("auto", "low", "high"):
            raise ValueError(f"image_detail must be auto, low or high, got {self.image_detail!r}")


def image_data_url(image: bytes) -> str:
    if image.startswith(b"\xff\xd8\xff"):
        mime = "image/jpeg"
    elif image.startswith(b"\x89PNG\r\n\x1a\n"):
        mime = "image/png"
    else:  # not ExpertReplyError: the request is bad, not the reply
        raise ValueError(f"image is neither PNG nor JPEG (starts with {image[:8]!r})")
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def numbered_sentences(text: str) -> str:
    sentences = sentences_of(text)
    if len(sentences) <= 1:  # nothing to number; the model sees the response as-is
        return text.strip()
    return "\n".join(f"({i}) {s}" for i, s in enumerate(sentences, 1))


def user_text(request: CorrectionRequest) -> str:
    return (
        f"Question:\n{request.prompt}\n\n"
        f"Reference answer:\n{request.reference}\n\n"
        f"Response to review:\n{numbered_sentences(request.response)}"
    )


def strip_fence(content: str) -> str:
    content = content.strip()
    match = _FENCE.match(content)
    return match.group(1).strip() if match else content


def parse_report(content: str) -> ExpertReport:
    try:
        data = json.loads(strip_fence(content))
    except json.JSONDecodeError as e:
        raise ExpertReplyError(f"not JSON: {e}") from None
    return ExpertReport.from_dict(data)


def build_client(cfg: OpenAIExpertConfig):
    """An openai client for cfg; the key is read from cfg.api_key_env and kept only inside the client."""
    import openai  # lazy: only the OpenAI-backed builders need it

    if cfg.api_key_env is None:
        api_key = "EMPTY"  # OpenAI-compatible local servers want some value in the header
    else:
        api_key = os.environ.get(cfg.api_key_env)
        if not api_key:
            raise ValueError(
                f"environment variable {cfg.api_key_env} is not set: export {cfg.api_key_env}=<your key>, "
                "or set api_key_env to None for a server that needs no key"
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


class OpenAIExpert:
    """Corrects responses with an OpenAI-compatible VLM; see the module docstring for the failure policy."""

    def __init__(self, cfg: OpenAIExpertConfig, client=None):
        self.cfg = cfg
        self.expert_id = f"openai:{cfg.model}:{PROMPT_VERSION}"
        # The key only lives inside the client: never on self or the config, so it cannot reach a repr or a cache.
        self.client = client if client is not None else self._build_client(cfg)

    @staticmethod
    def _build_client(cfg: OpenAIExpertConfig):
        return build_client(cfg)

    def __repr__(self) -> str:
        return f"OpenAIExpert(model={self.cfg.model!r}, base_url={self.cfg.base_url!r}, prompt={PROMPT_VERSION!r})"

    def messages(self, request: CorrectionRequest) -> list[dict]:
        image = {"url": image_data_url(request.image), "detail": self.cfg.image_detail}
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [{"type": "text", "text": user_text(request)}, {"type": "image_url", "image_url": image}],
            },
        ]

    def _complete(self, messages: list[dict], usage: Usage) -> tuple[str, str | None]:
        """One chat completion -> (content, finish_reason); usage is added even when the reply is unusable."""
        response = json_completion(self.client, self.cfg, messages, "expert_report", REPORT_SCHEMA)
        if response.usage is not None:
            usage += Usage(response.usage.prompt_tokens or 0, response.usage.completion_tokens or 0)
        if not response.choices:
            raise ExpertReplyError("reply has no choices")
        choice = response.choices[0]
        if getattr(choice.message, "refusal", None):
            raise ExpertReplyError(f"refused: {choice.message.refusal}")
        if not (choice.message.content or "").strip():
            raise ExpertReplyError(f"empty reply (finish_reason={choice.finish_reason})")
        return choice.message.content, choice.finish_reason

    def _parse(self, content: str, finish_reason: str | None) -> ExpertReport:
        try:
            return parse_report(content)
        except ExpertReplyError as e:
            if finish_reason == "length":  # the JSON was cut off: say so, it is the cause to fix (max_tokens)
                raise ExpertReplyError(f"{e}; reply cut off at max_tokens={self.cfg.max_tokens}") from None
            raise

    def correct(self, request: CorrectionRequest) -> tuple[ExpertReport, Usage]:
        usage = Usage()
        try:
            return self._correct(request, usage), usage
        except ExpertReplyError as e:
            e.usage = usage  # failed replies cost tokens too: the build summary counts them
            raise

    def _correct(self, request: CorrectionRequest, usage: Usage) -> ExpertReport:
        messages = self.messages(request)
        content, finish_reason = self._complete(messages, usage)
        try:
            return self._parse(content, finish_reason)
        except ExpertReplyError as first:
            # One repair turn: the model sees its own reply and the exact complaint; a second failure is final.
            repair = [
                {"role": "assistant", "content": content},
                {"role": "user", "content": REPAIR_PROMPT.format(error=first)},
            ]
            content, finish_reason = self._complete(messages + repair, usage)
            try:
                return self._parse(content, finish_reason)
            except ExpertReplyError as second:
                raise ExpertReplyError(f"{second} (after one repair; first error: {first})") from None
