r"""CCEval (Zhai et al. 2023, HallE-Control): object hallucination and coverage of detailed Visual Genome captions,
judged by an LLM. Reference: `bronyayang/HallE_Control` `cceval.py` (`compute_chair_vg`, `converage`).

Protocol: describe the first 100 images of VG's `objects.json` with "Describe this image as detail as possible."
(sampling at temperature 0.2, `max_length=1024`; `eval/model_vg_cap.py`). Ground truth: `vg_info_100.json`,
`{"1": {"gt_objs": [...]}, ..., "100": ...}`, made by GPT-4 from the images' region descriptions and not
published (`--data`: the file or a directory holding it). Items are its keys in numeric order; an item's image is
the record's `image`, else the file name of its `path`, else `<image_id>.jpg` (VG's naming), else none. The
reference pairs the i-th caption with key i+1 by position; here outputs are matched by id: key them by GT key.

Judging, per caption, three requests (temperature 0, a system and a user message each):
1. extraction: the caption's noun objects, without places, scenes and times and without [bracketed] words
   (HallE-Control's marker for an object the model is unsure of);
2. hallucination: list_A = the GT objects, list_B = the extracted ones -> the list_B items matching nothing in
   list_A, by meaning (number ignored, a kind matches its general term: sedan and car);
3. coverage: list_A = the unique GT objects, list_B = unique(extracted + bracketed) -> the list_A items nothing
   in list_B covers. 2 and 3 are asked even when a list is empty, as the reference does.
Reproduced exactly: each reply is parsed as the reference does (the first `re.search(r"\[(.*?)\]")`, so on one
line, split on commas, items stripped of `" '"` so double quotes stay, de-duplicated); bracketed words are
`re.findall(r"\[(.*?)\]")` of the caption; the micro-averaged formulas: CHAIR_s = captions with >= 1
hallucination / captions; CHAIR_i = Σ hallucinated / Σ |unique(extracted ∪ bracketed)|; CHAIR_i_n = the same over
Σ |extracted|; coverage = 1 - Σ uncovered / Σ |unique GT|; avg_length = words of `caption.split(" ")` (a newline
joins two words); avg_object_list_length = mean |unique(extracted ∪ bracketed)| (the reference's "avg objects").
A rate whose denominator is 0 is None.

Differences: the prompts and system message are this project's own wording and examples (`PROMPT_VERSION`),
with the reference's instructions and number of examples (4 and 3; its coverage prompt is not in the public
snapshot, 3 here). The reference used gpt-4-32k-0613 on Azure, temperature 0, with a fixed "I am ChatGPT, a
virtual assistant based on OpenAI's GPT-4 model..." system prompt: numbers comparable to the paper need that
judge. Empty list items are dropped (the reference counts the '' of an empty reply `[]`, or of a caption's `[]`,
as an object). Lists keep their order instead of `set()`'s, so requests and the cache are repeatable. The
extraction is asked once, not once per metric. A failed request (after the client's retries) or a reply without
a list is counted in `judge_errors` or `unparsed` and the sample left out; the reference reads both as an empty
list (no objects, no hallucination). Reference bug: its `__main__` calls `converage()` in both branches, so
`print_metrics` raises KeyError 'CHAIRs'; the paper's CHAIR numbers come from `compute_chair_vg`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from align.eval.benchmarks.base import Benchmark, one_or_mixed

GT_FILE = "vg_info_100.json"
GT_SHAPE = (
    '{"1": {"gt_objs": [object, ...]}, ...}: the objects of each of the first Visual Genome images, made with '
    "GPT-4 from their region descriptions (HallE-Control's prompt/region_cap2obj_prompt.txt; the file itself is "
    "not published, ask the authors or build it)"
)
PROMPT = "Describe this image as detail as possible."  # the reference's query, wording kept
PROMPT_VERSION = "align-cceval-v1"  # goes into every record and cache key; bump it whenever a prompt changes
_LIST = re.compile(r"\[(.*?)\]")  # the reference's pattern, for judge replies and bracketed caption words

SYSTEM = (
    "You annotate text for an image-captioning benchmark. You work only from the text you are given and answer "
    "in exactly the format asked for."
)

OBJECTS_PROMPT = """\
Below is a description of an image. List the physical objects it mentions, as nouns.

Rules:
- Give each object once, in the singular and in lower case, however often the description names or counts it \
("three cups" gives 'cup').
- Leave out places, scenes, settings and times, such as 'kitchen', 'beach', 'town', 'skyline', 'morning' or \
'day': they are not objects.
- Leave out every word inside square brackets: the model marked those as objects it is unsure of, and they are \
counted separately.
- Keep a qualifier only when it names another kind of object ('cutting board'), not for colour, size or material.
- Answer with the Python list alone, on one line, items in single quotes: objects = ['cup', 'table']. Write \
objects = [] when there is none. Write no other square brackets.

Example 1
Description: A brown dog lies on a striped rug in a cosy living room. Next to it stand a wooden chair and a \
pair of [slippers].
objects = ['dog', 'rug', 'chair']

Example 2
Description: Two surfers carry their boards across the beach on a sunny day while seagulls circle above the waves.
objects = ['surfer', 'board', 'seagull', 'wave']

Example 3
Description: On the kitchen counter there is a cutting board with sliced tomatoes, a knife and a [pepper \
grinder]. The city skyline shows through the window behind it.
objects = ['counter', 'cutting board', 'tomato', 'knife', 'window']

Example 4
Description: It is a foggy morning in a quiet town.
objects = []

Description: {caption}
objects = """

MATCHING = """\
Match by meaning, not by spelling:
- number does not matter: 'dogs', 'a dog' and 'two dogs' are all 'dog';
- a kind matches its general term, either way round: 'oak' and 'tree', 'sedan' and 'car';
- different words for the same thing match: 'lamp post' and 'street lamp', 'couch' and 'sofa';
- a whole and its parts match: 'bicycle' and 'wheel', 'pedal' or 'handlebar';
- things that only share a word or look alike do not match: a 'traffic light' is not a 'street lamp', a \
'woman' is not a 'man'.
"""

HALLUCINATION_PROMPT = f"""\
Below are two lists of objects for one image. list_A holds the objects annotated in the image; list_B holds the \
objects that a model's description of the image mentions. Return the items of list_B that match nothing in \
list_A: the objects the description made up.

{MATCHING}
Answer with the Python list alone, on one line, items copied from list_B in single quotes. Write \
hallucination = [] when every item matches. Write no explanation and no other square brackets.

Example 1
list_A = ['dogs', 'wooden bench', 'oak', 'lamp post', 'grass', 'man', 'red jacket', 'path']
list_B = ['dog', 'park bench', 'tree', 'street lamp', 'frisbee', 'woman', 'jacket', 'traffic light']
hallucination = ['frisbee', 'woman', 'traffic light']

Example 2
list_A = ['laptop', 'mug', 'desk', 'papers', 'girl']
list_B = ['notebook computer', 'coffee cup', 'office desk', 'document', 'young woman']
hallucination = []

Example 3
list_A = ['front wheel', 'back wheel', 'pedal', 'handlebar', 'saddle', 'wall']
list_B = ['bicycle', 'wall']
hallucination = []

list_A = {{gt}}
list_B = {{caption_objects}}
hallucination = """

COVERAGE_PROMPT = f"""\
Below are two lists of objects for one image. list_A holds the objects annotated in the image; list_B holds the \
objects that a model's description of the image mentions. Return the items of list_A that nothing in list_B \
covers: the annotated objects the description leaves out.

{MATCHING}
Answer with the Python list alone, on one line, items copied from list_A in single quotes. Write \
uncovered = [] when every item is covered. Write no explanation and no other square brackets.

Example 1
list_A = ['cat', 'sofa', 'cushions', 'window', 'curtain', 'lamp']
list_B = ['kitten', 'couch', 'pillow', 'window']
uncovered = ['curtain', 'lamp']

Example 2
list_A = ['bus', 'road', 'people', 'sign']
list_B = ['double-decker bus', 'street', 'man', 'woman', 'traffic sign']
uncovered = []

Example 3
list_A = ['plate', 'fork', 'pizza']
list_B = []
uncovered = ['plate', 'fork', 'pizza']

list_A = {{gt}}
list_B = {{caption_objects}}
uncovered = """

_PLACEHOLDER = re.compile(r"\{(caption|gt|caption_objects)\}")


def gt_path(data: Path) -> Path:
    data = Path(data)
    path = data if data.is_file() else data / GT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(data)!r} is not CCEval's {GT_FILE} nor a directory holding it; expected {GT_SHAPE}"
        )
    return path


def load(data: Path, split: str | None = None) -> list[dict]:
    """One item per ground-truth key, in numeric key order (the reference's caption order); CCEval has no splits."""
    if split is not None:
        raise ValueError(f"CCEval has no splits (got {split!r})")
    path = gt_path(data)
    try:
        truth = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); expected {GT_SHAPE}") from None
    if not isinstance(truth, dict) or not truth:
        raise ValueError(f"{path}: expected a non-empty JSON object {GT_SHAPE}")
    keys = sorted(truth, key=int) if all(k.isdigit() for k in truth) else list(truth)
    return [_item(path, k, truth[k]) for k in keys]


def _item(path: Path, key: str, rec: object) -> dict:
    objs = rec.get("gt_objs") if isinstance(rec, dict) else None
    if not isinstance(objs, list) or not all(isinstance(o, str) for o in objs):
        raise ValueError(f'{path}: entry {key!r} needs "gt_objs": a list of object names; expected {GT_SHAPE}')
    if isinstance(rec.get("image"), str) and rec["image"]:
        image = rec["image"]
    elif isinstance(rec.get("path"), str) and rec["path"]:
        image = Path(rec["path"]).name  # the reference's output `path` is where its script found the image
    elif isinstance(rec.get("image_id"), (int, str)) and not isinstance(rec["image_id"], bool):
        image = f"{rec['image_id']}.jpg"  # VG_100K/<id>.jpg or VG_100K_2/<id>.jpg (eval/model_vg_cap.py)
    else:
        image = None
    return {"id": key, "image": image, "prompt": PROMPT, "gt_objects": objs}


def unique(items: list[str]) -> list[str]:
    """Non-empty items once each, first occurrence first (the reference's set(), in a repeatable order)."""
    return list(dict.fromkeys(i for i in items if i != ""))


def parse_list(reply: str) -> list[str] | None:
    """The reference's parse: the first [...] on one line, split on commas, each item stripped of spaces and
    single quotes; None when the reply holds no such list."""
    match = _LIST.search(reply)
    if match is None:
        return None
    return unique([item.strip(" '") for item in match.group(1).split(",")])


def messages(template: str, **values: str) -> list[dict]:
    """System + user message; placeholders filled in one pass, so braces inside a caption stay as they are."""
    user = _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _ask(judge, msgs: list[dict], step: str, trace: dict) -> tuple[list[str] | None, str | None]:
    """(parsed list, None), or (None, why) when the request failed or the reply holds no list."""
    reply = judge.complete(msgs, PROMPT_VERSION)
    trace["judge_replies"][step] = reply.text  # kept for inspecting failures and odd lists
    trace["models"].append(reply.model)
    trace["cached"].append(reply.cached)
    if reply.error:
        return None, f"judge error ({step}): {reply.error}"
    items = parse_list(reply.text)
    return (items, None) if items is not None else (None, f"no list in the {step} reply")


def score(item: dict, output: str, judge) -> dict:
    """Extraction, then hallucination, then coverage; the first failure ends the sample (what follows needs it),
    and a rerun asks only from there on, the answered requests coming from the cache."""
    trace: dict = {"judge_replies": {}, "models": [], "cached": []}
    bracketed = unique(_LIST.findall(output))
    gt_unique = unique(item["gt_objects"])
    hallucinated = uncovered = None
    extracted, failure = _ask(judge, messages(OBJECTS_PROMPT, caption=output), "objects", trace)
    if failure is None:
        msgs = messages(HALLUCINATION_PROMPT, gt=str(item["gt_objects"]), caption_objects=str(extracted))
        hallucinated, failure = _ask(judge, msgs, "hallucination", trace)
    if failure is None:
        all_objects = unique(extracted + bracketed)
        msgs = messages(COVERAGE_PROMPT, gt=str(gt_unique), caption_objects=str(all_objects))
        uncovered, failure = _ask(judge, msgs, "coverage", trace)
    return {
        "objects": extracted,
        "bracketed": bracketed,
        "hallucinated": hallucinated,
        "uncovered": uncovered,
        "gt_count": len(gt_unique),
        "words": len(output.split(" ")),
        "failure": failure,
        "judge_model": "+".join(dict.fromkeys(trace["models"])),
        "judge_prompt": PROMPT_VERSION,
        "judge_cached": all(trace["cached"]),
        "judge_replies": trace["judge_replies"],
    }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _overall(rows: list[dict]) -> dict:
    n = len(rows)
    hallucinated = sum(len(r["hallucinated"]) for r in rows)
    extracted = sum(len(r["objects"]) for r in rows)
    objects = sum(len(unique(r["objects"] + r["bracketed"])) for r in rows)
    uncovered = sum(len(r["uncovered"]) for r in rows)
    gt = sum(r["gt_count"] for r in rows)
    coverage = _ratio(uncovered, gt)
    return {
        "chair_s": _ratio(sum(bool(r["hallucinated"]) for r in rows), n),
        "chair_i": _ratio(hallucinated, objects),
        "chair_i_n": _ratio(hallucinated, extracted),
        "coverage": None if coverage is None else 1 - coverage,
        "avg_length": _ratio(sum(r["words"] for r in rows), n),
        "avg_object_list_length": _ratio(objects, n),
        "avg_bracketed_list_length": _ratio(sum(len(r["bracketed"]) for r in rows), n),
        "n": n,
    }


def aggregate(records: list[dict]) -> dict:
    """The reference's metrics over the judged samples; failed samples counted by kind and left out."""
    judged = [r for r in records if r["failure"] is None]
    return {
        "overall": _overall(judged),
        "unparsed": sum((r["failure"] or "").startswith("no list") for r in records),
        "judge_errors": sum((r["failure"] or "").startswith("judge error") for r in records),
        "judge_model": one_or_mixed(r["judge_model"] for r in judged),
        "judge_prompt": ", ".join(sorted({r["judge_prompt"] for r in records})),
    }


BENCHMARK = Benchmark(
    name="cceval",
    description="CCEval detailed VG captions, LLM-judged: CHAIR_s, CHAIR_i with [bracketed] objects, coverage",
    load=load,
    # the reference's `max_length=1024` caps prompt + answer; here the answer alone may take 1024 tokens
    generation={"max_new_tokens": 1024, "do_sample": True, "temperature": 0.2},
    score=score,
    aggregate=aggregate,
    needs_judge=True,
    headline=(("overall", "chair_s", "CHAIR_s"), ("overall", "chair_i", "CHAIR_i"), ("overall", "coverage", "cover")),
    output_ids=("image_id",),
)
