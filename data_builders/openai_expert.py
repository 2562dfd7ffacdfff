"""An `Expert` backed by any OpenAI-compatible chat-completions VLM (OpenAI, Azure-style proxies, local vLLM).

One request = one chat completion: a system prompt with the correction rules and the JSON format, and a user
message with the question, the reference answer, the response as numbered sentences and the image as a data URL.
A reply that does not parse or validate gets exactly one repair turn; after that the row fails with
`ExpertReplyError`. Transport errors (connection, timeout, 429, 5xx) are retried by the openai client itself
(`max_retries`, exponential backoff), then come back as `TransientReplyError`; 401/403/404 raise
`EndpointFatalError`. `correct_all` records every failure per row, never caches it, and a rerun asks again (the
fault policy of data_builders/endpoint.py). The settings (`OpenAIExpertConfig`), the client and the request
are data_builders/endpoint.py's.
"""

from __future__ import annotations

import json

from data_builders.endpoint import (
    OpenAIExpertConfig,
    TransientReplyError,
    Usage,
    build_client,
    failure_reason,
    fatal_error,
    first_message,
    image_data_url,
    json_completion,
    strip_fence,
)
from data_builders.experts import REPORT_SCHEMA, CorrectionRequest, ExpertReplyError, ExpertReport, sentences_of

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


def parse_report(content: str) -> ExpertReport:
    try:
        data = json.loads(strip_fence(content))
    except json.JSONDecodeError as e:
        raise ExpertReplyError(f"not JSON: {e}") from None
    return ExpertReport.from_dict(data)


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
        usage += Usage.of(response)
        choice, message = first_message(response)
        if getattr(message, "refusal", None):
            raise ExpertReplyError(f"refused: {message.refusal}")
        if not (message.content or "").strip():
            raise ExpertReplyError(f"empty reply (finish_reason={choice.finish_reason})")
        return message.content, choice.finish_reason

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
        except (ExpertReplyError, TransientReplyError) as e:
            e.usage = usage  # failed replies cost tokens too: the build summary counts them
            raise
        except Exception as e:  # the endpoint's fault policy: fatal stops the run, the rest is retried next run
            if (fatal := fatal_error(e, self.cfg, "expert")) is not None:
                raise fatal from None
            transient = TransientReplyError(failure_reason(e, self.cfg))
            transient.usage = usage
            raise transient from None

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
