"""ToyWorld: a seeded synthetic world with a real object-hallucination problem.

Images are 48x48 RGB on a 3x3 grid of 16px cells; each occupied cell holds one coarse glyph (a 4x4 binary
pattern scaled x3) drawn in a colour. Every image belongs to a scene (kitchen, street, park, office) whose
classes co-occur strongly, which gives captions a language prior. A fraction of training captions also name
one *absent* same-scene object at an empty cell, inserted in reading order (so mid-caption, not only at the
end), the way GPT-written detail captions name plausible but unseen objects. A model trained on them
hallucinates in both forms real LVLMs show: misnaming a present object, and adding an absent one.

World v2 (the defaults since issue 18) adds hallucination that comes from the language prior rather than from
model capacity: an image may hold one *faint* object (a scene-typical glyph blended into the background at low
contrast in an empty cell), which captions name without a place ("There is also a fork."), and a share of training
captions of images without one name an absent scene-typical object the same way. Guessing "also a <typical
object>" then pays under maximum likelihood whenever the faint evidence is not read, which is the structure of
real LVLM hallucination (a fork at a dining table), while the pixels still decide it. Since v2c
(`faint_vocabulary="small"`) the faint and made-up objects are each scene's small things (a spoon, a pigeon), which
are never drawn clearly: the "also" sentence can no longer be filled by repeating a clearly drawn object, which is
what v2b's policies mostly did, so a model that does not read the faint glyph has only the prior left.
With `faint_prob=0`, `false_mention_prob=0` and `inject_fraction=0.45` the generator draws exactly the first world
(v1), and with `yes_no_questions=2` its SFT rows are v1's too (the README's v1 figures were trained at commit
b346965, whose policy and training defaults were v1's).

Everything here is a pure function of (world constants, seed): the same seed gives byte-identical images.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

GRID = 3
CELL = 16
IMAGE_SIZE = GRID * CELL
POSITIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]

SCENES: dict[str, list[str]] = {
    "kitchen": ["cup", "fork", "knife", "plate", "bowl", "bottle"],
    "street": ["car", "bus", "bicycle", "truck", "traffic light", "sign"],
    "park": ["dog", "tree", "ball", "bench", "bird", "kite"],
    "office": ["laptop", "phone", "book", "chair", "clock", "lamp"],
}
# Small things of each scene that are only ever drawn faint (world v2c, `faint_vocabulary="small"`): the words a
# caption's "there is also a ..." sentence uses never name a clearly drawn object, so a model that cannot read the
# faint glyph has nothing in the picture to copy and guesses from the scene, the way an LVLM adds a fork to a table.
SMALL: dict[str, list[str]] = {
    "kitchen": ["spoon", "napkin", "jar"],
    "street": ["cone", "hydrant", "pigeon"],
    "park": ["flower", "frisbee", "squirrel"],
    "office": ["pen", "stapler", "eraser"],
}
CLEAR_CLASSES: list[str] = [c for objs in SCENES.values() for c in objs]
CLASSES: list[str] = CLEAR_CLASSES + [c for objs in SMALL.values() for c in objs]  # glyph i belongs to CLASSES[i]
SCENE_OF: dict[str, str] = {c: s for table in (SCENES, SMALL) for s, objs in table.items() for c in objs}
FAINT_VOCABULARIES = ("small", "scene")
PLURALS: dict[str, str] = {
    "knife": "knives",
    "bus": "buses",
    "bench": "benches",
    "traffic light": "traffic lights",
    "dish": "dishes",
    "puppy": "puppies",
}
# Alternative names a caption may use for a class (like COCO's synonym list). Each maps back to the class.
SYNONYMS: dict[str, list[str]] = {
    "cup": ["mug"],
    "dog": ["puppy"],
    "car": ["automobile"],
    "bicycle": ["bike"],
    "phone": ["cellphone"],
    "laptop": ["computer"],
    "plate": ["dish"],
    "book": ["notebook"],
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "white": (245, 245, 245),
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
CAPTION_PROMPTS = [
    "Describe the image in detail.",
    "Give a detailed description of the image.",
    "What do you see in the image?",
]
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's POPE/VQA suffix


def plural(name: str) -> str:
    return PLURALS.get(name, name + "s")


def _make_glyphs(n: int, min_distance: int = 6, seed: int = 1234) -> np.ndarray:
    """n distinct 4x4 binary patterns, pairwise Hamming distance >= min_distance (coarse: a tiny CLIP learns them)."""
    rng = np.random.default_rng(seed)
    glyphs: list[np.ndarray] = []
    while len(glyphs) < n:
        cand = rng.random((4, 4)) < 0.55
        if cand.sum() < 6 or not cand.any(0).all() or not cand.any(1).all():
            continue  # too sparse, or an empty row/column would look like a smaller, shifted glyph
        if all(int((cand != g).sum()) >= min_distance for g in glyphs):
            glyphs.append(cand)
    return np.stack(glyphs)


GLYPHS = _make_glyphs(len(CLASSES))


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """How scenes are sampled. The defaults are the embedded default used by the demo and the toy configs."""

    seed: int = dataclasses.field(
        default=0, metadata={"help": "Seed of the whole world: images, captions, questions."}
    )
    n_train: int = dataclasses.field(default=3000, metadata={"help": "Training images."})
    n_val: int = dataclasses.field(default=200, metadata={"help": "Validation images."})
    n_test: int = dataclasses.field(default=300, metadata={"help": "Test images (used by the hallucination eval)."})
    min_entries: int = dataclasses.field(default=1, metadata={"help": "Fewest distinct object kinds per image."})
    max_entries: int = dataclasses.field(default=4, metadata={"help": "Most distinct object kinds per image."})
    repeat_prob: float = dataclasses.field(default=0.15, metadata={"help": "Chance an object kind appears twice."})
    distractor_prob: float = dataclasses.field(
        default=0.1, metadata={"help": "Chance an object kind comes from another scene (out-of-scene distractor)."}
    )
    inject_fraction: float = dataclasses.field(
        default=0.0,
        metadata={
            "help": "Fraction of TRAIN captions that also name one absent same-scene object at an empty cell "
            "(v1's hallucination source: 0.45)."
        },
    )
    faint_prob: float = dataclasses.field(
        default=0.5,
        metadata={"help": "Chance an image holds one faint scene-typical object in an empty cell (0 in v1)."},
    )
    faint_contrast: float = dataclasses.field(
        default=0.5, metadata={"help": "Opacity of a faint object's glyph over the background (0-1)."}
    )
    faint_vocabulary: str = dataclasses.field(
        default="small",
        metadata={
            "help": "Classes a faint object or a false mention is drawn from: 'small' (each scene's small things, "
            "never drawn clearly; v2c) or 'scene' (the scene's absent clear classes; v2a/v2b)."
        },
    )
    false_mention_prob: float = dataclasses.field(
        default=0.7,
        metadata={
            "help": "Chance a TRAIN caption of an image with no faint object says an absent scene-typical "
            "object is also there (no place named; 0 in v1)."
        },
    )
    yes_no_questions: int = dataclasses.field(
        default=6,
        metadata={
            "help": "Yes/no questions per training image in the SFT rows (even): half about present objects "
            "(the faint one first), half about absent ones (random, then same-scene)."
        },
    )
    synonym_prob: float = dataclasses.field(default=0.2, metadata={"help": "Chance a mention uses a synonym."})
    noise: float = dataclasses.field(default=40.0, metadata={"help": "Std of the background pixel noise (0-255)."})
    jitter: int = dataclasses.field(default=1, metadata={"help": "Max glyph shift in pixels inside its cell (0-2)."})

    def __post_init__(self):
        if not 1 <= self.min_entries <= self.max_entries <= 5:
            raise ValueError(f"need 1 <= min_entries <= max_entries <= 5, got {self.min_entries}, {self.max_entries}")
        probs = (
            "repeat_prob",
            "distractor_prob",
            "inject_fraction",
            "synonym_prob",
            "faint_prob",
            "false_mention_prob",
        )
        for name in (*probs, "faint_contrast"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.faint_vocabulary not in FAINT_VOCABULARIES:
            raise ValueError(f"faint_vocabulary must be one of {FAINT_VOCABULARIES}, got {self.faint_vocabulary!r}")
        if not 0 <= self.jitter <= 2:
            raise ValueError(f"jitter must be in 0..2 (a glyph is 12px in a 16px cell), got {self.jitter}")
        if self.yes_no_questions not in (0, 2, 4, 6):
            raise ValueError(f"yes_no_questions must be 0, 2, 4 or 6, got {self.yes_no_questions}")
        if min(self.n_train, self.n_val, self.n_test) < 1:
            raise ValueError("n_train, n_val and n_test must all be >= 1")

    @property
    def draws_small(self) -> bool:
        """Whether images and captions of this world ever hold the scenes' small classes."""
        return self.faint_vocabulary == "small" and (self.faint_prob > 0 or self.false_mention_prob > 0)

    @property
    def drawn_classes(self) -> list[str]:
        """Every class an image or caption of this world can hold: the clear ones, then the small ones where drawn."""
        return CLASSES if self.draws_small else CLEAR_CLASSES

    def typical(self, scene: str) -> list[str]:
        """The classes typical of `scene` in this world: its clear classes, then its small ones where drawn."""
        return SCENES[scene] + (SMALL[scene] if self.draws_small else [])

    def faint_pool(self, scene: str, present: set[str]) -> list[str]:
        """Classes a faint object or a false "also" mention of `scene` is drawn from, given the present ones."""
        pool = SMALL[scene] if self.faint_vocabulary == "small" else SCENES[scene]
        return [c for c in pool if c not in present]


@dataclasses.dataclass
class SceneObject:
    """One object kind in an image: its class, colour, and the grid cells (0..8, reading order) it occupies.
    A faint object is drawn at low contrast and captions name it without colour or place."""

    name: str
    color: str
    cells: list[int]
    faint: bool = False

    @property
    def count(self) -> int:
        return len(self.cells)


def sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> tuple[str, list[SceneObject]]:
    scene = str(rng.choice(list(SCENES)))
    n_kinds = int(rng.integers(cfg.min_entries, cfg.max_entries + 1))
    names: list[str] = []
    while len(names) < n_kinds:
        pool = SCENES[scene] if rng.random() >= cfg.distractor_prob else CLEAR_CLASSES
        name = str(rng.choice(pool))
        if name not in names:
            names.append(name)
    counts = [2 if rng.random() < cfg.repeat_prob else 1 for _ in names]
    while sum(counts) > 5:
        counts[counts.index(2)] = 1
    cells = [int(c) for c in rng.permutation(GRID * GRID)[: sum(counts)]]
    objects, start = [], 0
    for name, count in zip(names, counts):
        objects.append(SceneObject(name, str(rng.choice(list(COLORS))), sorted(cells[start : start + count])))
        start += count
    objects.sort(key=lambda o: o.cells[0])  # reading order of first appearance: captions follow it
    if cfg.faint_prob > 0 and rng.random() < cfg.faint_prob:  # guarded: v1 worlds draw the same numbers as before
        absent = cfg.faint_pool(scene, set(names))
        empty = [c for c in range(GRID * GRID) if c not in cells]
        if absent and empty:
            faint = SceneObject(str(rng.choice(absent)), str(rng.choice(list(COLORS))), [int(rng.choice(empty))], True)
            objects.append(faint)  # last: the clear objects keep reading order, the faint one is told after them
    return scene, objects


def render(
    objects: list[SceneObject], rng: np.random.Generator, noise: float, jitter: int = 1, faint_contrast: float = 0.5
) -> Image.Image:
    """Draw glyphs on a noisy dark background. Each glyph is 12px in a 16px cell, shifted by up to `jitter` px;
    a faint object's glyph is blended over the noise with opacity `faint_contrast`."""
    img = rng.normal(45.0, noise, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    for obj in objects:
        glyph = np.kron(GLYPHS[CLASSES.index(obj.name)], np.ones((3, 3), dtype=bool))
        for cell in obj.cells:
            row, col = divmod(cell, GRID)
            dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
            y, x = row * CELL + 2 + dy, col * CELL + 2 + dx
            patch = img[y : y + 12, x : x + 12]
            colour = np.array(COLORS[obj.color], dtype=float)
            patch[glyph] = (1 - faint_contrast) * patch[glyph] + faint_contrast * colour if obj.faint else colour
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def image_to_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _say(name: str, rng: np.random.Generator, cfg: WorldConfig, many: bool = False) -> str:
    word = name
    if name in SYNONYMS and rng.random() < cfg.synonym_prob:
        word = str(rng.choice(SYNONYMS[name]))
    return plural(word) if many else word


def _where(cells: list[int]) -> str:
    return " and the ".join(POSITIONS[c] for c in cells)


def describe_faint(name: str, scene: str, rng: np.random.Generator, cfg: WorldConfig) -> str:
    """A sentence naming an object without colour or place, as captions name small or half-seen things."""
    word = _say(name, rng, cfg)
    templates = [f"There is also a {word}.", f"The {scene} also has a {word}.", f"I can also see a {word}."]
    return str(rng.choice(templates))


def describe(obj: SceneObject, rng: np.random.Generator, cfg: WorldConfig) -> str:
    """One caption sentence about one object kind, from a few templates."""
    if obj.count == 1:
        noun, where = f"{obj.color} {_say(obj.name, rng, cfg)}", POSITIONS[obj.cells[0]]
        templates = [
            f"There is a {noun} at the {where}.",
            f"A {noun} is at the {where}.",
            f"At the {where} there is a {noun}.",
            f"I can see a {noun} at the {where}.",
        ]
    else:
        noun, where = f"{obj.color} {_say(obj.name, rng, cfg, many=True)}", _where(obj.cells)
        num = NUMBER_WORDS[obj.count]
        templates = [f"There are {num} {noun} at the {where}.", f"{num.capitalize()} {noun} are at the {where}."]
    return str(rng.choice(templates))


def intro(scene: str, rng: np.random.Generator) -> str:
    return str(rng.choice([f"This is a {scene} scene.", f"The picture shows a {scene}.", f"A {scene} is shown."]))


def caption(
    scene: str,
    objects: list[SceneObject],
    rng: np.random.Generator,
    cfg: WorldConfig,
    inject: bool,
    false_mention: bool = False,
) -> tuple[str, list[SceneObject]]:
    """A 2-6 sentence detailed description: the clear objects in reading order, then the faint one (no place).
    With `inject`, one absent same-scene object is described at an empty cell and its sentence sits in reading
    order among the true ones (v1). With `false_mention` and no faint object, an absent same-scene object is
    named the faint way at the end (v2). Returns (caption, the absent objects it names)."""
    clear = [o for o in objects if not o.faint]
    present = {o.name for o in objects}
    occupied = {c for o in objects for c in o.cells}
    injected: list[SceneObject] = []
    absent = [c for c in SCENES[scene] if c not in present]
    empty = [c for c in range(GRID * GRID) if c not in occupied]
    if inject and absent and empty:
        injected.append(SceneObject(str(rng.choice(absent)), str(rng.choice(list(COLORS))), [int(rng.choice(empty))]))
    ordered = sorted(clear + injected, key=lambda o: o.cells[0])
    sentences = [describe(o, rng, cfg) for o in ordered]
    faint = [o.name for o in objects if o.faint]
    guesses = cfg.faint_pool(scene, present)
    if false_mention and not faint and guesses:
        made_up = str(rng.choice([c for c in guesses if c not in {o.name for o in injected}] or guesses))
        injected.append(SceneObject(made_up, "", [], True))
        faint = [made_up]
    sentences += [describe_faint(name, scene, rng, cfg) for name in faint]
    if len(clear) == 1 or rng.random() < 0.5:
        sentences.insert(0, intro(scene, rng))
    return " ".join(sentences), injected


def pope_question(name: str) -> str:
    return f"Is there a {name} in the image?"


def vocabulary() -> list[str]:
    """Every (lower-cased) word a ToyWorld text or prompt can contain, for the word-level tokenizer."""
    words = set("there is are a at the and i can see this scene shows shown color how many nothing".split())
    words |= set("also has yes no ? . ,".split())
    for text in CAPTION_PROMPTS + [SHORT_ANSWER_SUFFIX, "what is at the", pope_question("x"), "the picture"]:
        words |= set(text.lower().replace("?", " ?").replace(".", " .").split())
    words |= set(SCENES) | set(COLORS) | set(NUMBER_WORDS.values())
    for pos in POSITIONS:
        words |= set(pos.split())
    for name in set(CLASSES) | {s for syns in SYNONYMS.values() for s in syns}:
        words |= set(name.split()) | set(plural(name).split())
    words.discard("x")
    return sorted(words)
