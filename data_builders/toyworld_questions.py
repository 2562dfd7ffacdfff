"""ToyWorld's questions: short-answer QA about cells, colours and counts, and POPE-style yes/no questions with
random, popular and adversarial negatives. Pure functions of (scene, objects, generator), like the rest of the
world."""

from __future__ import annotations

import itertools

import numpy as np

from data_builders.toyworld import (
    GRID,
    NUMBER_WORDS,
    POSITIONS,
    SCENE_OF,
    SceneObject,
    WorldConfig,
    plural,
    pope_question,
)


def qa_pairs(scene: str, objects: list[SceneObject], rng: np.random.Generator) -> list[dict]:
    """Short-answer questions: what is at every occupied cell (and one empty cell), plus colour and count.

    The per-cell questions are dense grounding supervision, like the region VQA in LLaVA's training mix: a
    caption holds only a few object-identity words, too weak a signal to learn the glyphs in minutes."""
    # a faint object's cell is neither asked about nor offered as "nothing": its presence is a yes/no question's
    occupied = {c: o for o in objects if not o.faint for c in o.cells}
    empty = [c for c in range(GRID * GRID) if c not in occupied and all(c not in o.cells for o in objects)]
    cells = sorted(occupied) + ([int(rng.choice(empty))] if empty else [])
    out = [
        {
            "question": f"What is at the {POSITIONS[c]}?",
            "answer": f"a {occupied[c].color} {occupied[c].name}" if c in occupied else "nothing",
            "kind": "position",
        }
        for c in cells
    ]
    clear = [o for o in objects if not o.faint]
    obj = clear[int(rng.integers(len(clear)))]
    out.append({"question": f"What color is the {obj.name}?", "answer": obj.color, "kind": "color"})
    out.append(
        {"question": f"How many {plural(obj.name)} are there?", "answer": NUMBER_WORDS[obj.count], "kind": "count"}
    )
    return out


# questions asked without a world config rank and draw from the clear classes only, as every world before v2c did
WITHOUT_SMALL = WorldConfig(faint_vocabulary="scene")


def cooccurrence_rank(name: str, cfg: WorldConfig | None = None) -> list[str]:
    """Classes ranked by how often they co-occur with `name`: same scene first (POPE 'adversarial'); the scenes'
    small classes only where the world draws them."""
    cfg = cfg or WITHOUT_SMALL
    same = [c for c in cfg.typical(SCENE_OF[name]) if c != name]
    return same + [c for c in cfg.drawn_classes if c not in same and c != name]


def pope_questions(
    objects: list[SceneObject],
    rng: np.random.Generator,
    popular: list[str],
    k: int = 3,
    cfg: WorldConfig | None = None,
) -> list[dict]:
    """POPE-style yes/no questions: up to k positives, and as many negatives per sampling split.

    random: uniform over absent classes; popular: the most frequent classes overall; adversarial: the classes
    that co-occur most with the positives. Positives are shared across splits, as in POPE.
    """
    cfg = cfg or WITHOUT_SMALL
    present = [o.name for o in objects]
    positives = list(rng.permutation(present))[:k]
    out = []
    for split in ("random", "popular", "adversarial"):
        used: set[str] = set(present)
        negatives = []
        for pos in positives:
            if split == "random":
                pool = [c for c in cfg.drawn_classes if c not in used]
                choice = str(rng.choice(pool))
            else:
                ranked = popular if split == "popular" else cooccurrence_rank(pos, cfg)
                choice = next(c for c in ranked if c not in used)
            used.add(choice)
            negatives.append(choice)
        for name, label in itertools.chain(((p, "yes") for p in positives), ((n, "no") for n in negatives)):
            out.append({"question": pope_question(str(name)), "object": str(name), "label": label, "split": split})
    return out
