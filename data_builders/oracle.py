"""The oracle expert: corrects a response from ground-truth object annotations, as OPA-DPO's GPT-4V expert does.

Per sentence, in order:
- a sentence that names no object (an intro) is kept, unless it names the wrong scene (fixed, score 3; only when
  the ground truth gives the scene: one out-of-scene object alone does not tell it);
- an object mention is matched to the ground-truth object at the cell the sentence names, else to the object of
  the same class elsewhere; a misnamed object is *replaced* by the true one at that place ("dog -> cat",
  score 2), a wrong colour, count or position is fixed (score 3), and the policy's own words are kept;
- a sentence that names an object without a place (how captions name a faint object) is kept when a faint object
  of that class is there;
- a sentence whose object matches nothing real, or only repeats what an earlier sentence already said, is
  dropped (score 1);
- objects no kept sentence mentions are added at the end (`added`).

Dropping only what names nothing real matters: corrections that merely delete wrong sentences taught a feasibility
model to say less (recall collapsed, CHAIR_i did not improve; see shared research notes, stack.md section 6).
"""

from __future__ import annotations

import json
import re

from data_builders import toyworld as tw
from data_builders.endpoint import Usage
from data_builders.experts import CorrectionRequest, ExpertReport, SentenceEdit, sentences_of
from data_builders.toyworld_text import SYNONYMS, caption_mentions, sentence_cells

_NUMBER = {w: n for n, w in tw.NUMBER_WORDS.items()}


def _sub(sentence: str, old: str, new: str) -> str:
    """Replace the first whole-word `old` (case-insensitive) by `new`."""
    return re.sub(rf"\b{re.escape(old)}\b", new, sentence, count=1, flags=re.IGNORECASE)


def _surface(sentence: str, cls: str) -> str | None:
    """The words the sentence used for class `cls` (a synonym or plural), longest first."""
    forms = sorted((f for f, c in SYNONYMS.items() if c == cls), key=len, reverse=True)
    low = sentence.lower()
    return next((f for f in forms if re.search(rf"\b{re.escape(f)}\b", low)), None)


def _phrase(obj: tw.SceneObject) -> str:
    """A plain sentence about `obj` in the policy's lower-case style (a faint object: without colour or place)."""
    if obj.faint:
        return f"there is also a {obj.name}."
    if obj.count == 1:
        return f"there is a {obj.color} {obj.name} at the {tw.POSITIONS[obj.cells[0]]}."
    where = " and the ".join(tw.POSITIONS[c] for c in obj.cells)
    return f"there are {tw.NUMBER_WORDS[obj.count]} {obj.color} {tw.plural(obj.name)} at the {where}."


def _edit(copied: str, rewritten: str, score: int, objects: list[str], reason: str, error=None) -> SentenceEdit:
    error = error or ("correct" if score == 4 else "image_recognition_error")
    return SentenceEdit(copied, score, error, objects, rewritten, reason)


class OracleExpert:
    """Ground-truth expert for ToyWorld (or any data with per-object class, colour and grid cells)."""

    expert_id = "oracle-toyworld-v1"

    def correct(self, request: CorrectionRequest) -> tuple[ExpertReport, Usage]:
        if request.objects is None:
            raise ValueError(f"row {request.id}: the oracle expert needs ground-truth objects")
        truth = json.loads(request.objects)
        # ground truth: a list of {name, color, cells}, or {"scene": ..., "objects": [...]} to also check scene claims
        scene = truth.get("scene") if isinstance(truth, dict) else None
        objects = [tw.SceneObject(**o) for o in (truth["objects"] if isinstance(truth, dict) else truth)]
        at = {cell: o for o in objects for cell in o.cells}
        covered: set[int] = set()  # cells some kept sentence already describes
        edits = [self._sentence(s, objects, at, scene, covered) for s in sentences_of(request.response)]
        missing = [o for o in objects if not set(o.cells) <= covered]
        added = " ".join(_phrase(o) for o in missing)
        reason = f"the response left out {', '.join(o.name for o in missing)}" if missing else ""
        return ExpertReport(edits, added, reason), Usage()

    def _sentence(self, sentence, objects, at, scene, covered: set[int]) -> SentenceEdit:
        mentions = [cls for cls, _ in caption_mentions(sentence)]
        if not mentions:
            named = [s for s in tw.SCENES if re.search(rf"\b{s}\b", sentence.lower())]
            if scene and named and named[0] != scene:
                return _edit(sentence, _sub(sentence, named[0], scene), 3, [f"{named[0]} -> {scene}"], "wrong scene")
            return _edit(sentence, sentence, 4, [], "no object claim to check")
        claimed, cells = mentions[0], sentence_cells(sentence)
        at_place = next((at[c] for c in cells if c in at), None)
        elsewhere = next((o for o in objects if o.name == claimed and not set(o.cells) <= covered), None)
        if at_place is not None and not set(at_place.cells) <= covered:
            target = at_place  # the object really at the named place (misnamed, or described with wrong details)
        elif elsewhere is not None:
            target = elsewhere  # the named place is empty or already described: the object is elsewhere
        elif at_place is not None:
            reason = f"repeats the {at_place.name} already described"
            return _edit(sentence, "", 1, [], reason, "language_comprehension_error")
        else:
            where = f" at the {tw.POSITIONS[cells[0]]}" if cells else ""
            return _edit(sentence, "", 1, [f"{claimed} -> nothing"], f"there is no {claimed}{where}")
        covered.update(target.cells)
        return self._fix(sentence, claimed, cells, target)

    def _fix(self, sentence: str, claimed: str, cells: list[int], target: tw.SceneObject) -> SentenceEdit:
        if target.faint and not cells:  # named the way captions name faint objects: only the class is checked
            return _edit(sentence, sentence, 4, [], "correct")
        words = re.findall(r"[a-z]+", sentence.lower())
        colour = next((w for w in words if w in tw.COLORS), None)
        count = next((_NUMBER[w] for w in words if w in _NUMBER), 1)
        place_ok = sorted(cells) == target.cells and count == target.count
        if not place_ok and len(cells) > 1 or count != target.count:  # restating counts needs a new sentence
            fixes = [f"{claimed} -> {target.name}"] if claimed != target.name else []
            return _edit(sentence, _phrase(target), 2 if fixes else 3, fixes + ["count/position"], "count or place")
        out, fixes, score = sentence, [], 4
        if claimed != target.name:
            surface = _surface(sentence, claimed) or claimed
            name = tw.plural(target.name) if target.count > 1 else target.name
            out, score = _sub(out, surface, name), 2
            fixes.append(f"{claimed} -> {target.name}")
        if colour and colour != target.color:
            out, score = _sub(out, colour, target.color), min(score, 3)
            fixes.append(f"{colour} -> {target.color}")
        if not place_ok:  # one cell named, the object is elsewhere
            old = tw.POSITIONS[cells[0]] if cells else None
            new = tw.POSITIONS[target.cells[0]]
            out = _sub(out, old, new) if old else out.rstrip(".") + f" at the {new}."
            score = min(score, 3)
            fixes.append(f"{old or 'no place'} -> {new}")
        reason = (
            "correct" if score == 4 else f"the {target.color} {target.name} is at the {tw.POSITIONS[target.cells[0]]}"
        )
        return _edit(sentence, out, score, fixes, reason)
