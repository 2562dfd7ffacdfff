"""Reading ToyWorld text back: sentences, object mentions through a synonym table, the cells a sentence names.

Shared by the CHAIR metric (align/eval/metrics.py) and the oracle expert (data_builders/oracle.py), so both read a
caption the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from data_builders import toyworld as tw


def toyworld_synonyms() -> dict[str, str]:
    """Surface form (singular, plural, synonym) → class, like COCO's synonyms.txt for ToyWorld."""
    table = {}
    for name in tw.CLASSES:
        for form in [name, *tw.SYNONYMS.get(name, [])]:
            table[form] = name
            table[tw.plural(form)] = name
    return table


SYNONYMS = toyworld_synonyms()
POSITION_PATTERN = re.compile(r"\b(" + "|".join(sorted(tw.POSITIONS, key=len, reverse=True)) + r")\b")


def split_sentences(caption: str) -> list[str]:
    return [s.strip() for s in re.split(r"[.!?]+", caption) if s.strip()]


def caption_mentions(caption: str, synonyms: Mapping[str, str] = SYNONYMS) -> list[tuple[str, int]]:
    """(class, sentence index) for each object mention; two-word names are matched before single words."""
    doubles = {k for k in synonyms if " " in k}
    mentions = []
    for si, sentence in enumerate(split_sentences(caption.lower())):
        words, i = re.findall(r"[a-z]+", sentence), 0
        while i < len(words):
            pair = " ".join(words[i : i + 2])
            if pair in doubles:
                mentions.append((synonyms[pair], si))
                i += 2
                continue
            if words[i] in synonyms:
                mentions.append((synonyms[words[i]], si))
            i += 1
    return mentions


def sentence_cells(sentence: str) -> list[int]:
    """Grid cells a sentence names ("top left" is matched before "top")."""
    return [tw.POSITIONS.index(m) for m in POSITION_PATTERN.findall(sentence.lower())]
