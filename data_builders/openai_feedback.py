"""RLAIF-V's divider and labeler on any OpenAI-compatible chat-completions server (OpenAI, vLLM, proxies).

`OpenAIDivider`: one text-only completion per response splits it into atomic claims about the image, each with a
yes/no question whose "yes" means the claim holds. A reply that is not the JSON asked for gets one repair turn,
then `DividerReplyError`; transport errors propagate (the client has retried them). `divide_all` runs many
responses with bounded concurrency and returns each failure in place of its claims.

`OpenAILabeler`: one completion per question with the image, asked for a one-word yes/no answer with logprobs.
P(yes) = p(yes) / (p(yes) + p(no)), summing the probabilities of the top tokens that strip and lower-case to
"yes" or "no"; without logprobs (or with neither word among them) the reply text decides (1.0 / 0.0). Any failed
check (transport error after the client's retries, refusal, a reply that is neither yes nor no) comes back as
None, is counted in `failures`, and is not cached, so a rerun asks again.

Both take an `OpenAIExpertConfig` and reach the server through data_builders/endpoint.py (client, JSON request,
image data URL, reply cache, usage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import threading
from collections import Counter
from pathlib import Path

from data_builders.claims import CheckRequest, Claim
from data_builders.endpoint import (
    EndpointFatalError,
    OpenAIExpertConfig,
    ReplyCache,
    TransientReplyError,
    Usage,
    build_client,
    failure_reason,
    fatal_error,
    first_message,
    image_data_url,
    json_completion,
    map_requests,
    redact,
    strip_fence,
)

log = logging.getLogger(__name__)

# Part of divider_id / labeler_id, hence of the cache keys: bump them whenever a prompt or message layout changes.
DIVIDER_PROMPT_VERSION = "rlaifv-divide-v1"
LABELER_PROMPT_VERSION = "rlaifv-yesno-v1"

DIVIDER_PROMPT = """\
You split an assistant's answer about an image into atomic claims, so that each claim can be checked against \
the image on its own. You do not see the image.

- A claim is one short, self-contained statement of a single fact about the image: that an object is there, its \
colour, count, position, action, or a relation between two objects. Resolve pronouns ("it", "they") to the \
object they refer to.
- Skip opinions, hedges, and text that states nothing about the image content.
- For each claim write a yes/no question about the image whose answer is "yes" exactly when the claim is true, \
for example claim "the dog is brown" -> question "Is the dog brown?".

Reply with one JSON object and nothing else: {"claims": [{"claim": "...", "question": "..."}]}; an empty list \
when the answer states nothing about the image."""

DIVIDER_REPAIR_PROMPT = (
    "That reply could not be used ({error}). Send the claims again as a single JSON object of the form "
    '{{"claims": [{{"claim": "...", "question": "..."}}]}}, with no text or code fence around it.'
)

CLAIMS_SCHEMA = {
    "type": "object",
    "properties": {
        "claims": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"claim": {"type": "string"}, "question": {"type": "string"}},
                "required": ["claim", "question"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["claims"],
    "additionalProperties": False,
}

LABELER_INSTRUCTION = "Answer with one word, yes or no."
_CLAIM_KEYS = ("claim", "question")
_ANSWER = re.compile(r"\W*(yes|no)\b")


class DividerReplyError(ValueError):
    """The divider model answered, but not with the claims JSON (after one repair turn)."""


def parse_claims(content: str) -> list[Claim]:
    try:
        data = json.loads(strip_fence(content))
    except json.JSONDecodeError as e:
        raise DividerReplyError(f"not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise DividerReplyError("expected an object with a 'claims' list")
    claims = []
    for i, c in enumerate(data["claims"]):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) and c[k].strip() for k in _CLAIM_KEYS):
            raise DividerReplyError(f"claims[{i}]: expected an object with non-empty strings 'claim' and 'question'")
        claims.append(Claim(c["claim"].strip(), c["question"].strip(), "statement"))
    return claims


class OpenAIDivider:
    """Divides responses into claims + yes/no questions with an OpenAI-compatible LLM (text only)."""

    def __init__(self, cfg: OpenAIExpertConfig, client=None, cache_dir: str | Path | None = None):
        self.cfg = cfg
        self.divider_id = f"openai:{cfg.model}:{DIVIDER_PROMPT_VERSION}"
        self.client = client if client is not None else build_client(cfg)  # the key lives only in the client
        self.cache = ReplyCache(cache_dir) if cache_dir is not None else None
        self.usage = Usage()  # tokens of the requests sent (each cache entry keeps its own usage)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIDivider(model={self.cfg.model!r}, base_url={self.cfg.base_url!r}, id={self.divider_id!r})"

    def key(self, prompt: str, response: str) -> str:
        return hashlib.sha256(json.dumps([self.divider_id, prompt, response]).encode()).hexdigest()

    def _complete(self, messages: list[dict], item: Usage) -> str:
        try:
            reply = json_completion(self.client, self.cfg, messages, "claims", CLAIMS_SCHEMA)
        except Exception as e:  # the endpoint's fault policy: fatal stops the run, the rest is retried next run
            if (fatal := fatal_error(e, self.cfg, "divider")) is not None:
                raise fatal from None
            raise TransientReplyError(failure_reason(e, self.cfg)) from None
        paid = Usage.of(reply)
        item += paid
        with self._lock:
            self.usage += paid
        _, message = first_message(reply)
        if getattr(message, "refusal", None):
            raise DividerReplyError(f"refused: {message.refusal}")
        return message.content or ""

    def divide(self, prompt: str, response: str) -> list[Claim]:
        key = self.key(prompt, response)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return [Claim(**c) for c in hit["claims"]]
        item = Usage()  # what this division costs, stored with it
        messages = [
            {"role": "system", "content": DIVIDER_PROMPT},
            {"role": "user", "content": f"Question about the image:\n{prompt}\n\nAnswer to split:\n{response}"},
        ]
        content = self._complete(messages, item)
        try:
            claims = parse_claims(content)
        except DividerReplyError as first:  # one repair turn with the exact complaint; a second failure is final
            repair = [
                {"role": "assistant", "content": content},
                {"role": "user", "content": DIVIDER_REPAIR_PROMPT.format(error=first)},
            ]
            try:
                claims = parse_claims(self._complete(messages + repair, item))
            except DividerReplyError as second:
                raise DividerReplyError(f"{second} (after one repair; first error: {first})") from None
        if self.cache is not None:
            self.cache.put(key, {"claims": [c.to_dict() for c in claims], "usage": dataclasses.asdict(item)})
        return claims


def divide_all(
    divider, items: list[tuple[str, str]], concurrency: int = 4, desc: str = "divide"
) -> list[list[Claim] | Exception]:
    """divider.divide(prompt, response) for every (prompt, response), in input order; a failed item gets its
    exception in place of its claims (never raised for the batch)."""

    def one(item: tuple[str, str]) -> list[Claim] | Exception:
        try:
            return divider.divide(*item)
        except EndpointFatalError:
            raise  # bad key or unknown model: stop now, every item would fail alike
        except Exception as e:
            return e

    return map_requests(one, items, concurrency, desc)


def yes_no_probability(top_logprobs) -> float | None:
    """p(yes) / (p(yes) + p(no)) over tokens such as "Yes", " yes", "NO"; None when neither word is there."""
    p = {"yes": 0.0, "no": 0.0}
    for t in top_logprobs:
        word = t.token.strip().lower()
        if word in p:
            p[word] += math.exp(t.logprob)
    total = p["yes"] + p["no"]
    return p["yes"] / total if total > 0 else None


def text_answer(content: str | None) -> float | None:
    match = _ANSWER.match((content or "").strip().lower())
    return None if match is None else float(match.group(1) == "yes")


class OpenAILabeler:
    """Answers claim questions with an OpenAI-compatible VLM; P(yes) from the first token's logprobs."""

    def __init__(
        self, cfg: OpenAIExpertConfig, client=None, cache_dir: str | Path | None = None, concurrency: int = 8
    ):
        self.cfg = cfg
        self.labeler_id = f"openai:{cfg.model}:{LABELER_PROMPT_VERSION}"
        self.client = client if client is not None else build_client(cfg)  # the key lives only in the client
        self.cache = ReplyCache(cache_dir) if cache_dir is not None else None
        self.concurrency = max(1, concurrency)
        self.usage = Usage()  # tokens of the requests sent (cache hits cost nothing; each entry keeps its usage)
        self.failures: Counter = Counter()  # failed checks by kind: exception class, "refused", "no yes/no answer"
        self.answers: Counter = Counter()  # successful checks by source: "cache", "logprobs", "text"
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAILabeler(model={self.cfg.model!r}, base_url={self.cfg.base_url!r}, id={self.labeler_id!r})"

    def key(self, request: CheckRequest) -> str:
        blob = json.dumps([self.labeler_id, request.claim.question, hashlib.sha256(request.image).hexdigest()])
        return hashlib.sha256(blob.encode()).hexdigest()

    def messages(self, request: CheckRequest) -> list[dict]:
        image = {"url": image_data_url(request.image), "detail": self.cfg.image_detail}
        text = f"{request.claim.question}\n{LABELER_INSTRUCTION}"
        return [
            {"role": "user", "content": [{"type": "image_url", "image_url": image}, {"type": "text", "text": text}]}
        ]

    def _fail(self, kind: str, request: CheckRequest, detail: str) -> None:
        detail = redact(detail, self.cfg)
        with self._lock:
            self.failures[kind] += 1
            first = self.failures[kind] == 1
        if first:  # one line per kind, so a broken server does not flood the log
            log.warning("labeler check %s failed (%s): %s", request.id, kind, detail[:300])

    def _ask(self, request: CheckRequest) -> float | None:
        key = self.key(request)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            with self._lock:
                self.answers["cache"] += 1
            return hit["p_yes"]
        try:
            messages = self.messages(request)
        except ValueError as e:  # an image that is neither PNG nor JPEG: this row cannot be asked
            self._fail("bad image", request, str(e))
            return None
        try:
            reply = self.client.chat.completions.create(
                model=self.cfg.model,
                messages=messages,
                temperature=0.0,
                max_completion_tokens=1,
                logprobs=True,
                top_logprobs=20,
            )
        except Exception as e:  # retries exhausted, timeout, a body that is not JSON: a rerun asks again
            if (fatal := fatal_error(e, self.cfg, "labeler")) is not None:
                raise fatal from None
            self._fail(type(e).__name__, request, str(e))
            return None
        paid = Usage.of(reply)
        with self._lock:
            self.usage += paid
        try:
            choice, message = first_message(reply)
        except TransientReplyError as e:  # no choices, or a choice without its message
            self._fail("no message", request, str(e))
            return None
        if getattr(message, "refusal", None):
            self._fail("refused", request, message.refusal)
            return None
        p, source = None, "logprobs"
        tokens = (choice.logprobs.content or []) if choice.logprobs is not None else []
        for token in tokens:  # the first position where yes or no is among the top tokens
            if (p := yes_no_probability(token.top_logprobs)) is not None:
                break
        if p is None:
            content = message.content
            p, source = text_answer(content), "text"
            if p is None:
                self._fail("no yes/no answer", request, repr(content))
                return None
        with self._lock:
            self.answers[source] += 1
        if self.cache is not None:
            self.cache.put(key, {"p_yes": p, "source": source, "usage": dataclasses.asdict(paid)})
        return p

    def p_yes(self, requests: list[CheckRequest]) -> list[float | None]:
        """P(yes) / (P(yes) + P(no)) per request, in request order; None where the check failed."""
        return map_requests(self._ask, requests, self.concurrency, "label")
