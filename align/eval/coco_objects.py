"""COCO 2014 ground-truth object sets per image, for the CHAIR-style benchmarks (CHAIR, Object HalBench).

Both reference evaluators define an image's objects the same way: the categories of its instance annotations
(each COCO category name mapped to its vocabulary category through the synonym table) together with the
categories that its human reference captions mention, where "mention" is the benchmark's own caption → words
function (so the two benchmarks, with different vocabularies and text rules, get slightly different sets).

Two sources:
- a precomputed JSON `{image_id: [category, ...]}` (`read_image_objects`), e.g. `coco2014_image_objects.json`;
- the COCO 2014 annotation files themselves (`build_image_objects`): `instances_{train,val}2014.json` and
  `captions_{train,val}2014.json`, in a directory or its `annotations/` folder (as the COCO zip unpacks). Any
  subset is accepted (e.g. val only); the source description names the files used and the ones missing. Every
  image listed by a file used gets an entry, an empty one when nothing was found for it.

Building over the full files reads ~1 GB of JSON and tokenises ~600k captions (minutes), so the result is cached
as JSON under `$ALIGN_CACHE/coco_objects/` (default `~/.cache/align`), keyed by the files' names, sizes and
mtimes and by the caller's description of its vocabulary and text rules: a rerun reads the cache at once, and
a changed file or vocabulary builds anew.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from data_builders.progress import bar

INSTANCE_FILES = ("instances_train2014.json", "instances_val2014.json")
CAPTION_FILES = ("captions_train2014.json", "captions_val2014.json")
ANNOTATION_FILES = INSTANCE_FILES + CAPTION_FILES
CACHE_VERSION = 1  # bump when the build itself changes


@dataclass(frozen=True)
class GroundTruth:
    objects: dict[int, list[str]]  # image id → sorted categories
    source: str  # where they came from, for the metrics' notes


def default_cache_dir() -> Path:
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align")) / "coco_objects"


def read_image_objects(path: str | Path) -> dict[int, list[str]]:
    """{image_id: objects} from a precomputed ground-truth file, checked."""
    path = Path(path)
    try:
        truth = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(truth, dict):
        raise ValueError(f"{path}: expected a JSON object {{image_id: [object, ...]}}")
    for key, objs in truth.items():
        if not key.isdigit() or not isinstance(objs, list) or not all(isinstance(o, str) for o in objs):
            raise ValueError(f"{path}: entry {key!r}: need an integer image id and a list of object names")
    return {int(k): v for k, v in truth.items()}


def annotation_files(directory: str | Path) -> list[Path]:
    """The COCO 2014 annotation files present in `directory` or, failing that, in `directory/annotations`."""
    directory = Path(directory)
    for folder in (directory, directory / "annotations"):
        found = [folder / name for name in ANNOTATION_FILES if (folder / name).is_file()]
        if found:
            return found
    return []


def vocabulary_fingerprint(*tables: object) -> str:
    """A short hash of the tables (any JSON-able values; sets are sorted) that decide what a caption mentions."""

    def plain(x):
        if isinstance(x, Mapping):
            return sorted((str(k), plain(v)) for k, v in x.items())
        if isinstance(x, (set, frozenset)):
            return sorted(x)
        return x

    return hashlib.sha256(json.dumps([plain(t) for t in tables]).encode()).hexdigest()[:16]


def describe(files: list[Path]) -> str:
    names = {f.name for f in files}
    missing = [n for n in ANNOTATION_FILES if n not in names]
    text = f"COCO annotations in {files[0].parent}: {', '.join(f.name for f in files)}"
    return text + (f" (absent: {', '.join(missing)})" if missing else "")


def build_image_objects(
    files: list[Path],
    category_of: Mapping[str, str],
    caption_categories: Callable[[str], Iterable[str]],
    rules: str,
    cache_dir: str | Path | None = None,
) -> GroundTruth:
    """Ground truth from COCO annotation files (see the module docstring), cached.

    `category_of` maps a COCO category name to the vocabulary's category; `caption_categories(caption)` gives
    the categories a reference caption mentions; `rules` names both (e.g. "opera-chair:" + a vocabulary
    fingerprint) and is part of the cache key, so a different vocabulary or text rule never reads another's cache.
    """
    if not files:
        raise FileNotFoundError(
            f"no COCO 2014 annotation files given (expected some of {', '.join(ANNOTATION_FILES)})"
        )
    stamps = [(f.name, (st := f.stat()).st_size, st.st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps([CACHE_VERSION, rules, stamps]).encode()).hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / f"{key}.json"
    source = describe(files)
    if (objects := _read_cache(cached)) is not None:
        return GroundTruth(objects, source)
    found: dict[int, set[str]] = {}
    for path in files:
        data = _read_annotations(path)
        for image in data.get("images", []):
            found.setdefault(image["id"], set())
        if path.name in INSTANCE_FILES:
            _add_instances(path, data, category_of, found)
        else:
            _add_captions(path, data, caption_categories, found)
    objects = {i: sorted(cats) for i, cats in sorted(found.items())}
    _write_cache(cached, objects, rules, stamps)
    return GroundTruth(objects, source)


def _read_annotations(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); is the download complete?") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: not a COCO annotation file (no 'annotations' list)")
    return data


def _add_instances(path: Path, data: dict, category_of: Mapping[str, str], found: dict[int, set[str]]) -> None:
    """Each instance's category, through the synonym table (a COCO name missing from it is an error, as in the
    references, where it is a KeyError)."""
    if not isinstance(data.get("categories"), list):
        raise ValueError(f"{path}: an instances file needs its 'categories' list")
    names = {c["id"]: c["name"] for c in data["categories"]}
    unknown = sorted(set(names.values()) - set(category_of))
    if unknown:
        raise ValueError(f"{path}: COCO categories missing from the vocabulary's synonym table: {unknown[:5]}")
    for ann in bar(data["annotations"], desc=path.name, unit="ann", mininterval=1.0):
        found.setdefault(ann["image_id"], set()).add(category_of[names[ann["category_id"]]])


def _add_captions(
    path: Path, data: dict, caption_categories: Callable[[str], Iterable[str]], found: dict[int, set[str]]
) -> None:
    for ann in bar(data["annotations"], desc=path.name, unit="caption", mininterval=1.0):
        found.setdefault(ann["image_id"], set()).update(caption_categories(ann["caption"]))


def _read_cache(path: Path) -> dict[int, list[str]] | None:
    """The cached objects, or None when absent or unreadable (a half-written or damaged file builds anew)."""
    try:
        raw = json.loads(path.read_text())
        return {int(k): v for k, v in raw["objects"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_cache(path: Path, objects: dict[int, list[str]], rules: str, stamps: list) -> None:
    """Written beside its final name and renamed, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    payload = {"version": CACHE_VERSION, "rules": rules, "files": stamps, "objects": objects}
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)
