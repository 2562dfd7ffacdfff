"""Reference captions per image, the facts of LLaVA-RLHF's fact-augmented reward model (Fact-RLHF).

LLaVA-RLHF reads them from `image_to_caption.json` (zhiqings/LLaVA-RLHF-Data): a JSON object mapping an image file
name (COCO train2017 names, as in LLaVA-Human-Preference-10K's `image` field) to a caption or a list of captions.
`load_captions` reads such a file once; `Facts` looks each row's image up in it and counts the rows that found
captions and those that did not. Those are kept, just without facts. The facts go into a record's meta["facts"],
where the reward-model recipe reads them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePath

FORMAT = "a JSON object mapping image file names to a caption or a list of captions"
MAX_EXAMPLES = 5  # row ids of records without facts, kept in the report


def load_captions(path: str | Path) -> dict[str, list[str]]:
    """{image name: its non-empty captions} from a captions file; a clear error naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"captions file {str(path)!r} does not exist: download image_to_caption.json (zhiqings/LLaVA-RLHF-Data) "
            "there, or set captions: null to import without facts"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"captions file {path}: not valid JSON ({err}); expected {FORMAT}") from None
    if not isinstance(data, dict):
        raise ValueError(f"captions file {path}: got a JSON {type(data).__name__}; expected {FORMAT}")
    captions = {}
    for name, value in data.items():
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise ValueError(f"captions file {path}: the value of {name!r} is not a string or a list of strings")
        captions[name] = [c.strip() for c in value if c.strip()]
    return captions


def image_path(image) -> str | None:
    """The path a row names for its image (a string, or the path of {"bytes", "path"}); None for bytes only."""
    if isinstance(image, dict):
        image = image.get("path")
    return image if isinstance(image, str) and image else None


class Facts:
    """Looks images up in loaded captions: by the path as the row gives it, then by its file name."""

    def __init__(self, captions: Mapping[str, list[str]], source: str | None = None):
        self.captions, self.source = captions, source
        self.with_facts, self.without_facts, self.examples = 0, 0, []

    @classmethod
    def load(cls, path: str | Path) -> Facts:
        return cls(load_captions(path), str(path))

    def of(self, image, row_id: str) -> list[str]:
        """The captions of a row's image (empty when there are none), counted either way."""
        path = image_path(image)
        facts = []
        if path is not None:
            facts = self.captions.get(path) or self.captions.get(PurePath(path.replace("\\", "/")).name) or []
        if facts:
            self.with_facts += 1
        else:
            self.without_facts += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(row_id)
        return list(facts)

    def report(self) -> dict:
        return {
            "captions": self.source,
            "with_facts": self.with_facts,
            "without_facts": self.without_facts,
            "without_examples": self.examples,
        }


def record_facts(record: dict) -> list[str]:
    """The facts a record carries in its meta (`facts`: a list of strings); none when it has no meta or facts."""
    try:
        facts = json.loads(record.get("meta") or "{}").get("facts") or []
    except (json.JSONDecodeError, AttributeError):
        return []
    return [str(f) for f in facts] if isinstance(facts, list) else []
