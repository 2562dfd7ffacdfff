"""Experts that correct a policy's response sentence by sentence, in OPA-DPO's report format.

An expert sees (image, prompt, policy response, reference answer) and returns an `ExpertReport`: for every
sentence of the response, what was copied, a score 1-4 (4 = correct, 3 = minor error such as a count or
colour, 2 = wrong object or relation, 1 = names nothing real), an error type, the object edits ("dog -> cat"),
the minimal rewrite and a reason; plus an optional `added` part for what the response missed. The revision is
the rewrites joined, so correct sentences keep the policy's own wording (on-policy).

`correct_all` runs any expert over many requests with a disk cache keyed by request hash (a rerun is free and
a killed build resumes), bounded concurrency, a progress bar, and one recorded failure per bad row (never an
exception for the batch); the cache (`ReplyCache`) and the token counts (`Usage`) are data_builders/endpoint.py's.
Experts: `OracleExpert` (ground truth, data_builders/oracle.py) and `OpenAIExpert` (any OpenAI-compatible VLM,
data_builders/openai_expert.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Protocol

from data_builders.endpoint import EndpointFatalError, ReplyCache, TransientReplyError, Usage, map_requests

ERROR_TYPES = ("correct", "image_recognition_error", "language_comprehension_error")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences_of(text: str) -> list[str]:
    """The sentences an expert reports on, one per entry: split after . ! ? followed by whitespace."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


class ExpertReplyError(ValueError):
    """The expert answered, but not with a valid report: a permanent failure of this row (cached, not retried).
    `usage` carries the tokens those replies cost, so the summary still counts them."""

    def __init__(self, message: str, usage: Usage | None = None):
        super().__init__(message)
        self.usage = usage


@dataclasses.dataclass
class SentenceEdit:
    copied: str
    score: int
    error_type: str
    objects: list[str]
    rewritten: str
    reason: str


@dataclasses.dataclass
class ExpertReport:
    sentences: list[SentenceEdit]
    added: str = ""
    added_reason: str = ""

    @property
    def revision(self) -> str:
        parts = [s.rewritten.strip() for s in self.sentences] + [self.added.strip()]
        return " ".join(p for p in parts if p)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data) -> ExpertReport:
        """Validate a parsed reply; raises ExpertReplyError naming the first bad field."""
        if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
            raise ExpertReplyError("report: expected an object with a 'sentences' list")
        sentences = []
        for i, s in enumerate(data["sentences"]):
            if not isinstance(s, dict):
                raise ExpertReplyError(f"sentences[{i}]: expected an object")
            missing = [f.name for f in dataclasses.fields(SentenceEdit) if f.name not in s]
            if missing:
                raise ExpertReplyError(f"sentences[{i}]: missing {', '.join(missing)}")
            if s["score"] not in (1, 2, 3, 4) or isinstance(s["score"], bool):
                raise ExpertReplyError(f"sentences[{i}].score: expected 1-4, got {s['score']!r}")
            if s["error_type"] not in ERROR_TYPES:
                raise ExpertReplyError(f"sentences[{i}].error_type: {s['error_type']!r} is not one of {ERROR_TYPES}")
            if not isinstance(s["objects"], list) or not all(isinstance(o, str) for o in s["objects"]):
                raise ExpertReplyError(f"sentences[{i}].objects: expected a list of strings")
            for key in ("copied", "rewritten", "reason"):
                if not isinstance(s[key], str):
                    raise ExpertReplyError(f"sentences[{i}].{key}: expected a string")
            sentences.append(SentenceEdit(**{f.name: s[f.name] for f in dataclasses.fields(SentenceEdit)}))
        added, reason = data.get("added", ""), data.get("added_reason", "")
        if not isinstance(added, str) or not isinstance(reason, str):
            raise ExpertReplyError("added / added_reason: expected strings")
        return cls(sentences, added, reason)


# The JSON schema experts must answer in (structured output); mirrors ExpertReport.to_dict().
REPORT_SCHEMA = {
    "type": "object",
    "properties": {
        "sentences": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "copied": {"type": "string"},
                    "score": {"type": "integer", "enum": [1, 2, 3, 4]},
                    "error_type": {"type": "string", "enum": list(ERROR_TYPES)},
                    "objects": {"type": "array", "items": {"type": "string"}},
                    "rewritten": {"type": "string"},
                    "reason": {"type": "string"},
                },
                "required": ["copied", "score", "error_type", "objects", "rewritten", "reason"],
                "additionalProperties": False,
            },
        },
        "added": {"type": "string"},
        "added_reason": {"type": "string"},
    },
    "required": ["sentences", "added", "added_reason"],
    "additionalProperties": False,
}


@dataclasses.dataclass(frozen=True)
class CorrectionRequest:
    id: str
    image: bytes  # encoded image (PNG/JPEG)
    prompt: str
    response: str
    reference: str
    objects: str | None = None  # ground truth JSON for the oracle: [{name, color, cells}] or {scene, objects}

    def key(self, expert_id: str) -> str:
        blob = json.dumps(
            [
                expert_id,
                hashlib.sha256(self.image).hexdigest(),
                self.prompt,
                self.response,
                self.reference,
                self.objects,
            ]
        )
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclasses.dataclass
class CorrectionResult:
    id: str
    request_hash: str
    report: ExpertReport | None
    error: str | None = None
    usage: Usage = dataclasses.field(default_factory=Usage)
    cached: bool = False

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "request_hash": self.request_hash,
            "report": self.report.to_dict() if self.report else None,
            "error": self.error,
            "usage": dataclasses.asdict(self.usage),
        }

    @classmethod
    def from_dict(cls, data: dict, cached: bool = False) -> CorrectionResult:
        report = ExpertReport.from_dict(data["report"]) if data["report"] else None
        return cls(data["id"], data["request_hash"], report, data["error"], Usage(**data["usage"]), cached)


class Expert(Protocol):
    expert_id: str  # model + prompt version: part of the cache key, so a changed expert never reuses replies

    def correct(self, request: CorrectionRequest) -> tuple[ExpertReport, Usage]:
        """Raise ExpertReplyError for a bad reply, TransientReplyError for a failed request (both recorded, never
        cached), EndpointFatalError when no request can succeed (stops the run)."""
        ...


def _correct_one(expert: Expert, request: CorrectionRequest, cache: ReplyCache | None) -> CorrectionResult:
    """One request through the fault policy (data_builders/endpoint.py): only a valid report is cached; an invalid
    or failed reply is recorded with its reason and asked again on the next run; a fatal error propagates."""
    key = request.key(expert.expert_id)
    if cache is not None and (hit := cache.get(key)) is not None:
        # the key ignores the row id: an identical request from another row reuses the reply under its own id
        return dataclasses.replace(CorrectionResult.from_dict(hit, cached=True), id=request.id)
    try:
        report, usage = expert.correct(request)
    except EndpointFatalError:
        raise
    except ExpertReplyError as e:  # the reply broke the format even after the repair turn
        return CorrectionResult(request.id, key, None, f"invalid reply: {e}", usage=e.usage or Usage())
    except TransientReplyError as e:  # transport failure after the client's retries, or an unusable reply
        return CorrectionResult(request.id, key, None, str(e), usage=getattr(e, "usage", None) or Usage())
    except Exception as e:  # e.g. an image the expert cannot send: recorded, the rest of the batch goes on
        return CorrectionResult(request.id, key, None, f"{type(e).__name__}: {e}")
    result = CorrectionResult(request.id, key, report, usage=usage)
    if cache is not None:
        cache.put(key, result.to_dict())
    return result


def correct_all(
    expert: Expert,
    requests: list[CorrectionRequest],
    cache_dir: str | Path | None = None,
    concurrency: int = 4,
    desc: str = "expert",
) -> list[CorrectionResult]:
    """Correct every request (in input order). Failures come back as results with `error` set; an
    EndpointFatalError (bad key, unknown model) stops the run at once, without sending the queued requests."""
    cache = ReplyCache(cache_dir) if cache_dir is not None else None
    return map_requests(lambda r: _correct_one(expert, r, cache), requests, concurrency, desc)


def summarize_results(results: list[CorrectionResult], price_in: float = 0.0, price_out: float = 0.0) -> dict:
    """Counts, failures by reason, tokens, and cost at the given prices (USD per 1M tokens)."""
    usage = Usage()
    for r in results:
        if not r.cached:
            usage += r.usage
    failures: dict[str, int] = {}
    for r in results:
        if r.error:
            reason = r.error.split(":")[0]
            failures[reason] = failures.get(reason, 0) + 1
    return {
        "requests": len(results),
        "ok": sum(r.report is not None for r in results),
        "cached": sum(r.cached for r in results),
        "failures": failures,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_usd": usage.cost_usd(price_in, price_out),
    }
