"""HallE-Switch training data (methods.md §4): captions split into grounded and parametric objects, labelled ε.

Every row is an SFT row `{id, image, prompt, response, epsilon, kind}`. HallE-Switch trains a controller
h ← h + ε·W·h on the same captions told two ways: ε = −1 (kind "grounded") keeps only objects the image shows, ε = +1
(kind "parametric") keeps, or on ToyWorld adds, objects the text names but the image lacks. The indication variant
(kind "indication", ε = 0) writes parametric objects as `[word]` instead. Sources:

- ToyWorld (`toyworld_switch_rows`, `toyworld_indication_rows`): grounded and parametric come from ground truth.
- Real LLaVA-format captions with per-image object lists, COCO instances or a detector's output
  (`switch_rows_from_annotations`): a caption's parametric objects are vocabulary words absent from its image's list.
- HallE's own `detail_switch_23k.json` (`import_hall_factor`): ε is read from each item's `hall_factor`.

Real-data readers reuse sft_import's item and image checks; a bad item is skipped and counted by reason, never
raised (a file that is not what is expected, or yields no row at all, is a ValueError naming it).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from datasets import Image

from data_builders import toyworld as tw
from data_builders.preference_import import SkipRow
from data_builders.sft_import import SKIP_REASONS, _checked_path, _item_id, llava_item_rows, read_items
from data_builders.toyworld_text import SYNONYMS, caption_mentions

SWITCH_SKIP_REASONS = (
    *SKIP_REASONS,
    "no_objects",  # the item's image has no entry in the objects file
    "no_grounded_text",  # every sentence of the caption names a parametric object: nothing left for ε = −1
)
HALL_FACTOR_SKIP_REASONS = (*SKIP_REASONS, "missing_hall_factor", "bad_hall_factor")
# a sentence: text holding at least one non-space character, with its closing punctuation (if any)
_SENTENCE = re.compile(r"[^.!?]*[^.!?\s][^.!?]*[.!?]*")
_WORD = re.compile(r"[A-Za-z]+")


def grounded_and_parametric(record: dict) -> tuple[list[str], list[str]]:
    """(classes in the image, classes the training caption names that are not in it) of a ToyWorld record. A faint
    object is in the image, so grounded; `injected` holds v1's injected objects and v2's false "also a X" mentions."""
    grounded = list(dict.fromkeys(o["name"] for o in json.loads(record["objects"])))
    injected = dict.fromkeys(o["name"] for o in json.loads(record["injected"]))
    return grounded, [name for name in injected if name not in grounded]


def _sentences(caption: str) -> list[str]:
    """The caption's sentences as written, each with its closing punctuation; the ones `split_sentences` reads."""
    return [m.group().strip() for m in _SENTENCE.finditer(caption)]


def caption_without(caption: str, names: set[str], synonyms: Mapping[str, str] = SYNONYMS) -> str:
    """The caption without the sentences that mention any class in `names` (any surface form `synonyms` maps to
    it: synonyms, plurals); the other sentences verbatim, joined by single spaces. The ε = −1 text."""
    kept = [s for s in _sentences(caption) if not {c for c, _ in caption_mentions(s, synonyms)} & set(names)]
    return " ".join(kept)


def _mention_spans(text: str, synonyms: Mapping[str, str]) -> list[tuple[int, int, str]]:
    """(start, end, class) of each mention in `text`, read as `caption_mentions` reads them (a two-word name before a
    single word, never across a sentence end) but with the places in the text as written."""
    words = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text)]
    doubles = {k for k in synonyms if " " in k}
    spans, i = [], 0
    while i < len(words):
        start, end, word = words[i]
        if i + 1 < len(words) and not re.search(r"[.!?]", text[end : words[i + 1][0]]):
            pair = f"{word} {words[i + 1][2]}"
            if pair in doubles:
                spans.append((start, words[i + 1][1], synonyms[pair]))
                i += 2
                continue
        if word in synonyms:
            spans.append((start, end, synonyms[word]))
        i += 1
    return spans


def bracket_objects(caption: str, names: set[str], synonyms: Mapping[str, str] = SYNONYMS) -> str:
    """The caption with every mention of a class in `names` written `[word]` as written ("[mug]", "[traffic
    lights]"), HallE's indication format; everything else unchanged."""
    out, last = [], 0
    for start, end, name in _mention_spans(caption, synonyms):
        if name in names:
            out += [caption[last:start], f"[{caption[start:end]}]"]
            last = end
    return "".join(out) + caption[last:]


def _row(row_id: str, image, prompt: str, response: str, epsilon: float, kind: str) -> dict:
    return {"id": row_id, "image": image, "prompt": prompt, "response": response, "epsilon": epsilon, "kind": kind}


def _toyworld_images(split, seed: int):
    """(record with its PNG bytes kept, rng of image i, prompt): the prompt is the rng's first draw, so every row
    of an image, switch or indication, gets the same prompt for the same seed."""
    for i, record in enumerate(split.cast_column("image", Image(decode=False))):
        rng = np.random.default_rng([seed, i])
        yield record, rng, str(rng.choice(tw.CAPTION_PROMPTS))


def toyworld_switch_rows(split, world: tw.WorldConfig, seed: int = 0) -> list[dict]:
    """Per image of a ToyWorld split: an ε = −1 row whose caption names only objects in the image, and an ε = +1 row
    that keeps the caption's absent objects or, where it names none and no faint object is there, adds one the faint
    way ("There is also a spoon.") from the scene's faint pool. Both share a prompt; deterministic in (split, seed)."""
    rows = []
    for record, rng, prompt in _toyworld_images(split, seed):
        grounded, parametric = grounded_and_parametric(record)
        caption, image_id = record["caption"], record["image_id"]
        imagined, grounded_text = caption, caption_without(caption, set(parametric))
        faint = any(o.get("faint") for o in json.loads(record["objects"]))
        pool = world.faint_pool(record["scene"], set(grounded))
        if not parametric and not faint and pool:
            imagined += " " + tw.describe_faint(str(rng.choice(pool)), record["scene"], rng, world)
        rows.append(_row(f"{image_id}/grounded", record["image"], prompt, grounded_text, -1.0, "grounded"))
        rows.append(_row(f"{image_id}/parametric", record["image"], prompt, imagined, 1.0, "parametric"))
    return rows


def toyworld_indication_rows(split, seed: int = 0) -> list[dict]:
    """One row per image: the training caption with its absent objects bracketed ("There is also a [spoon]."), ε = 0,
    kind "indication"; the same prompt as `toyworld_switch_rows` gives the image for the same seed."""
    rows = []
    for record, _, prompt in _toyworld_images(split, seed):
        _, parametric = grounded_and_parametric(record)
        response = bracket_objects(record["caption"], set(parametric))
        rows.append(_row(f"{record['image_id']}/indication", record["image"], prompt, response, 0.0, "indication"))
    return rows


def _norm(name: str) -> str:
    """A name as `caption_mentions` reads words: lower-case letters joined by single spaces ("T-shirt" → "t shirt")."""
    return " ".join(re.findall(r"[a-z]+", name.lower()))


def _vocabulary(names, synonyms: Mapping[str, str] | None) -> dict[str, str]:
    """Surface form → object name: every name, every synonym, and their simple plurals ("+s", "+es" after s, x, z,
    ch, sh; a two-word name pluralises its last word). Names of more than two words are never matched, as
    `caption_mentions` reads at most two words."""
    table: dict[str, str] = {}
    for form, name in [(n, n) for n in names] + list((synonyms or {}).items()):
        if _norm(form) and _norm(name):
            table.setdefault(_norm(form), _norm(name))
    for form, name in list(table.items()):
        table.setdefault(form + "s", name)
        if form.endswith(("s", "x", "z", "ch", "sh")):
            table.setdefault(form + "es", name)
    return table


def _coco_lists(data: dict) -> tuple[dict[str, set[str]], set[str]]:
    names = {c["id"]: _norm(c["name"]) for c in data["categories"]}
    files = {image["id"]: image["file_name"] for image in data["images"]}
    lists: dict[str, set[str]] = {name: set() for name in files.values()}  # an image without annotations: no objects
    for annotation in data["annotations"]:
        lists[files[annotation["image_id"]]].add(names[annotation["category_id"]])
    return lists, set(names.values())


def _plain_lists(data: dict) -> tuple[dict[str, set[str]], set[str]]:
    lists = {}
    for key, value in data.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{key!r}: expected a list of object names, got {value!r:.80}")
        lists[key] = {_norm(v) for v in value}
    return lists, set().union(*lists.values())


def _object_lists(path: Path) -> tuple[dict[str, set[str]], set[str]]:
    """({image file name: object names}, every name) from COCO instances JSON or a plain {file: [names]} object;
    each list is also found by the file's base name. ValueError naming the file when it is neither."""
    expected = "a COCO instances JSON {images, annotations, categories} or a JSON object {image file: [object names]}"
    try:
        data = json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected {expected}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {expected}, got a JSON {type(data).__name__}")
    try:
        coco = {"images", "annotations", "categories"} <= data.keys()
        lists, names = _coco_lists(data) if coco else _plain_lists(data)
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: malformed object lists ({err}); expected {expected}") from None
    for key in list(lists):
        lists.setdefault(Path(key).name, lists[key])
    return lists, names


def switch_rows_from_annotations(
    llava_json: str | Path,
    objects_file: str | Path,
    image_root: str | Path | None = None,
    limit: int | None = None,
    synonyms: dict[str, str] | None = None,
) -> tuple[list[dict], dict]:
    """Switch rows from real captions: per LLaVA item, its first human→gpt turn becomes an ε = −1 row without the
    sentences (split on .!?) that name a parametric object (a vocabulary word absent from the image's object list)
    and an ε = +1 row with the caption as written. Items whose image has no list, no reply, or a missing image are
    skipped by reason (SWITCH_SKIP_REASONS). Report as read_items's, plus parametric_mentions: every mention
    of an object absent from its image. Images are matched by the item's path or its base name."""
    path, image_dir = _checked_path(llava_json, "llava_json", image_root)
    lists, names = _object_lists(Path(objects_file))
    vocabulary, counts = _vocabulary(names, synonyms), Counter()

    def item_rows(item, index: int) -> list[dict]:
        image = item.get("image") if isinstance(item, dict) else None
        present = lists.get(image, lists.get(Path(image).name)) if isinstance(image, str) and image else None
        if present is None and isinstance(image, str) and image:
            raise SkipRow("no_objects", f"image: {image} has no entry in {objects_file}")
        first = llava_item_rows(item, index, path, image_dir)[0]
        if present is None:
            raise SkipRow("no_objects", "image: not a file name, so not in the objects file")
        mentioned = [name for name, _ in caption_mentions(first["response"], vocabulary)]
        parametric = {name for name in mentioned if name not in present}
        grounded = caption_without(first["response"], parametric, vocabulary)
        if not grounded:
            raise SkipRow("no_grounded_text", f"every sentence names an absent object ({', '.join(parametric)})")
        counts["parametric"] += sum(name in parametric for name in mentioned)
        base, image, prompt = _item_id(item, index, path), first["image"], first["prompt"]
        return [
            _row(f"{base}/grounded", image, prompt, grounded, -1.0, "grounded"),
            _row(f"{base}/parametric", image, prompt, first["response"], 1.0, "parametric"),
        ]

    rows, report = read_items(path, limit, item_rows, SWITCH_SKIP_REASONS)
    return rows, {**report, "parametric_mentions": counts["parametric"]}


def _hall_factor(item) -> float:
    """An item's `hall_factor` as ±1.0 (int, float or numeric string), or SkipRow."""
    if not isinstance(item, dict):
        raise SkipRow("malformed_row", "not a JSON object")
    value = item.get("hall_factor")
    if value is None:
        raise SkipRow("missing_hall_factor", "hall_factor: missing")
    try:
        factor = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        factor = None
    if isinstance(value, bool) or factor not in (-1.0, 1.0):
        raise SkipRow("bad_hall_factor", f"hall_factor: {value!r} is not -1 or 1")
    return factor


def import_hall_factor(
    path: str | Path, image_root: str | Path | None = None, limit: int | None = None
) -> tuple[list[dict], dict]:
    """Rows of HallE's own `detail_switch_23k.json` (LLaVA-format items with a `hall_factor`): per item its first
    human→gpt turn with epsilon = hall_factor, kind "hall_factor". Items without a ±1 hall_factor, or bad as LLaVA
    items, are skipped by reason (HALL_FACTOR_SKIP_REASONS); the report is `sft_import.read_items`'s."""
    path, image_dir = _checked_path(path, "llava_json", image_root)

    def item_rows(item, index: int) -> list[dict]:
        epsilon = _hall_factor(item)
        first = llava_item_rows(item, index, path, image_dir)[0]
        row_id = f"{_item_id(item, index, path)}/{index}"  # the index: a file may tell one image both ways
        return [_row(row_id, first["image"], first["prompt"], first["response"], epsilon, "hall_factor")]

    return read_items(path, limit, item_rows, HALL_FACTOR_SKIP_REASONS)
