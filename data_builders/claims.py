"""RLAIF-V's divide-and-check feedback: a response → atomic claims → yes/no questions → a labeler's P(yes).

RLAIF-V splits each response into atomic claims with a fine-tuned LLM, turns each into a yes/no question, and has
an open VLM answer it; a claim is rejected when P(yes)+P(Yes) <= P(no)+P(No) (methods.md §2.3). Here:
- dividers: `ToyWorldDivider` (rules over ToyWorld's caption language: existence, colour, position, count and scene
  claims with structured facts), `SentenceDivider` (one claim per sentence, for any text), and the OpenAI-compatible
  LLM divider in data_builders/openai_feedback.py;
- labelers: `OracleLabeler` (ground truth), the policy itself (align/rollout/labeler.py) and an OpenAI-compatible VLM
  (data_builders/openai_feedback.py). A labeler returns P(yes) per question, or None for a check that failed (the
  response is then left out of this build and checked again on a rerun).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Protocol

from data_builders import toyworld as tw
from data_builders.experts import sentences_of
from data_builders.toyworld_text import caption_mentions, sentence_cells

_NUMBER = {w: n for n, w in tw.NUMBER_WORDS.items()}
CLAIM_KINDS = ("existence", "color", "position", "count", "scene", "statement")


@dataclasses.dataclass
class Claim:
    text: str  # the atomic claim in words
    question: str  # the yes/no question that checks it
    kind: str  # one of CLAIM_KINDS
    facts: dict = dataclasses.field(default_factory=dict)  # for the oracle: cls, color, cell, count, scene

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CheckRequest:
    id: str  # "<response id>#<claim index>"
    image: bytes
    claim: Claim
    objects: str | None = None  # ground truth JSON ({"scene", "objects"} or a list), when the data has it


class Divider(Protocol):
    divider_id: str

    def divide(self, prompt: str, response: str) -> list[Claim]: ...


class Labeler(Protocol):
    labeler_id: str

    def p_yes(self, requests: list[CheckRequest]) -> list[float | None]:
        """P(yes) / (P(yes) + P(no)) per request, or None where the check failed."""
        ...


class ToyWorldDivider:
    """Claims of ToyWorld captions: each object a sentence names exists, has the colour, the place and the count
    the sentence gives; an intro sentence claims the scene."""

    divider_id = "toyworld-rules-v1"

    def divide(self, prompt: str, response: str) -> list[Claim]:
        claims = []
        for sentence in sentences_of(response):
            low = sentence.lower()
            classes = list(dict.fromkeys(cls for cls, _ in caption_mentions(sentence)))
            if not classes:
                claims += [_scene_claim(s) for s in tw.SCENES if re.search(rf"\b{s}\b", low)][:1]
                continue
            words = re.findall(r"[a-z]+", low)
            colour = next((w for w in words if w in tw.COLORS), None)
            count = next((_NUMBER[w] for w in words if w in _NUMBER), None)
            for cls in classes:
                claims.append(Claim(f"there is a {cls}", tw.pope_question(cls), "existence", {"cls": cls}))
            if len(classes) > 1:
                continue  # colour, place and count cannot be tied to one of several objects
            cls = classes[0]
            if colour:
                facts = {"cls": cls, "color": colour}
                claims.append(Claim(f"the {cls} is {colour}", f"Is the {cls} {colour}?", "color", facts))
            for cell in sentence_cells(sentence):
                where, facts = tw.POSITIONS[cell], {"cls": cls, "cell": cell}
                question = f"Is there a {cls} at the {where}?"
                claims.append(Claim(f"a {cls} is at the {where}", question, "position", facts))
            if count and count > 1:
                many = f"{tw.NUMBER_WORDS[count]} {tw.plural(cls)}"
                claims.append(Claim(f"there are {many}", f"Are there {many}?", "count", {"cls": cls, "count": count}))
        return claims


def _scene_claim(scene: str) -> Claim:
    return Claim(f"the picture shows a {scene}", f"Is this a picture of a {scene}?", "scene", {"scene": scene})


class SentenceDivider:
    """One claim per sentence, asked as a whole: for any text, when no LLM divider is at hand."""

    divider_id = "sentences-v1"

    def divide(self, prompt: str, response: str) -> list[Claim]:
        return [
            Claim(s, f'Is this statement about the image true? "{s}"', "statement") for s in sentences_of(response)
        ]


def parse_truth(objects: str) -> tuple[str | None, list[tw.SceneObject]]:
    truth = json.loads(objects)
    scene = truth.get("scene") if isinstance(truth, dict) else None
    rows = truth["objects"] if isinstance(truth, dict) else truth
    return scene, [tw.SceneObject(**o) for o in rows]


def claim_holds(claim: Claim, scene: str | None, objects: list[tw.SceneObject]) -> bool:
    """Whether a structured ToyWorld claim is true of the ground truth."""
    f = claim.facts
    if claim.kind not in CLAIM_KINDS[:-1]:
        raise ValueError(f"the oracle cannot check a {claim.kind!r} claim ({claim.text!r}): use divider: toyworld")
    if claim.kind == "scene":
        return scene is None or f["scene"] == scene  # no scene in the truth: nothing to contradict
    same = [o for o in objects if o.name == f["cls"]]
    if claim.kind == "existence":
        return bool(same)
    if claim.kind == "color":
        return any(o.color == f["color"] for o in same)
    if claim.kind == "position":
        return any(f["cell"] in o.cells for o in same)
    return any(o.count == f["count"] for o in same)  # count


class OracleLabeler:
    """Answers structured ToyWorld claims from ground-truth objects: P(yes) is 1 or 0."""

    labeler_id = "oracle-toyworld-v1"

    def p_yes(self, requests: list[CheckRequest]) -> list[float | None]:
        out = []
        for r in requests:
            if r.objects is None:
                raise ValueError(f"{r.id}: the oracle labeler needs ground-truth objects")
            scene, objects = parse_truth(r.objects)
            out.append(float(claim_holds(r.claim, scene, objects)))
        return out
