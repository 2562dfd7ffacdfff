"""Object HalBench (Yu et al. 2024, RLHF-V / RLAIF-V): CHAIR on detailed descriptions of COCO images, with the
RLHF-V refined vocabulary and, as the papers report it, objects extracted by an LLM.

Two benchmarks, one scorer (reference: RLHF-V/RLAIF-V `eval/eval_gpt_obj_halbench.py`, numbers as
`eval/summarize_gpt_obj_halbench_review.py` prints them):
- `objhal`: objects found in the answer by rules (the reference without `--use_gpt`);
- `objhal_llm`: objects listed by an LLM judge from the question and answer, then cleaned up (`--use_gpt`).
Text rules, the extraction prompt and the documented deviations: `align.eval.objhal_text`.

Data (`--data DIR`):
- `synonyms_refine.txt`: the refined vocabulary (RLHF-V/RLHF-V `eval/data/synonyms_refine.txt`);
- the ground truth: the COCO 2014 annotation files (`instances_*2014.json`, `captions_*2014.json`, in DIR or
  DIR/annotations), from which `align.eval.coco_objects` builds each image's objects exactly as the reference
  does (instance categories ∪ categories its reference captions mention by this benchmark's rules; cached after
  the first build), else a precomputed `coco2014_image_objects.json` (or `--data` naming such a file, the other
  files beside it). CHAIR's file of that name (OPERA's build) has its caption part from OPERA's tokens and
  vocabulary, so it differs slightly from the reference's own ground truth; the annotation files are exact;
- optionally `questions.jsonl`, lines of `{image_id, question}` (plus `image`, a file name, if not COCO val2014's):
  the benchmark's images and prompts (the reference's 300 images with their description prompts). Without it,
  every ground-truth image is an item marked `optional` (the outputs pick the images, as CHAIR's do), prompted
  with "Please describe this image in detail.".

Answers: "Assistant:" is removed and the text stripped, as the reference does. In `objhal_llm` an answer of at
most 3 whitespace-separated words has no objects and sends no request; a failed request or a reply with no
object list is a failure for that sample: counted in `extraction_errors` (`unparsed` for the replies) and left
out of every metric; rerun to ask again for failed requests (answered ones come from the judge cache).

Metrics (the reference's `compute_chair`): chair_s = answers with >= 1 hallucinated mention / answers;
chair_s_refine ("Response Hall", the headline) = the same / answers with >= 1 vocabulary mention
(`coco_responses`); chair_i ("Object Hall") = hallucinated mentions / mentions (rule-based: a repeated word
counts each time; LLM: names are de-duplicated, different words of one category each count); recall (obj_rec) =
Σ distinct correctly mentioned categories / Σ ground-truth categories; length = mean words per answer, split on
single spaces as the reference does (not a rate). Rates are None when their denominator is 0. Notes: the
extractor, the ground truth's source and, for `objhal_llm`, the judge model(s) and the POS tagger.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from align.eval import tagging
from align.eval.benchmarks.base import Benchmark, custom_prompt_version, one_or_mixed, read_json_lines
from align.eval.chair_text import Vocabulary, caption_words
from align.eval.coco_objects import (
    GroundTruth,
    annotation_files,
    build_image_objects,
    read_image_objects,
    vocabulary_fingerprint,
)
from align.eval.objhal_text import (
    PROMPT,
    PROMPT_VERSION,
    SYNONYMS_FILE,
    answer_text,
    check_prompt,
    extraction_messages,
    load_vocabulary,
    object_mentions,
    parse_object_list,
    refine_phrases,
)

DEFAULT_PROMPT = "Please describe this image in detail."
QUESTIONS_FILE = "questions.jsonl"
OBJECTS_FILE = "coco2014_image_objects.json"
IMAGE_NAME = "COCO_val2014_{:012d}.jpg"
SHORT_ANSWER_WORDS = 3  # answers of at most this many words have no objects, without asking the judge


def ground_truth(root: Path, objects_file: Path | None, vocab: Vocabulary) -> GroundTruth:
    """The annotation files in `root` when there, else the precomputed file (see the module docstring)."""
    files = [] if objects_file is not None else annotation_files(root)
    if files:
        rules = f"objhal-rules-v2-{tagging.text_mode(tagger=False)}:" + vocabulary_fingerprint(
            vocab.objects, vocab.category, vocab.double_words
        )
        return build_image_objects(files, vocab.category, lambda c: caption_categories(c, vocab), rules)
    path = objects_file or root / OBJECTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no Object HalBench ground truth in {root}: put the COCO 2014 annotation files there (instances_*2014"
            f".json, captions_*2014.json, or an annotations/ folder holding them) or a precomputed {OBJECTS_FILE}"
        )
    return GroundTruth(read_image_objects(path), str(path))


def caption_categories(caption: str, vocab: Vocabulary) -> set[str]:
    """The categories a COCO reference caption adds to its image's ground truth (the rule-based path)."""
    return {category for _, category in caption_words(caption, vocab, tagged=False).mentions}


def read_questions(path: Path) -> list[tuple[int, str, str | None]]:
    """(image id, question, image file or None) per line of the questions file, checked."""
    rows, seen = [], set()
    for lineno, rec in read_json_lines(path):
        image_id = rec.get("image_id") if isinstance(rec, dict) else None
        if isinstance(image_id, str) and image_id.isdigit():
            image_id = int(image_id)
        if not isinstance(image_id, int) or isinstance(image_id, bool) or not isinstance(rec.get("question"), str):
            raise ValueError(f"{path}:{lineno}: need {{image_id: integer, question: string}}")
        if image_id in seen:
            raise ValueError(f"{path}:{lineno}: image {image_id} again (one question per image)")
        seen.add(image_id)
        image = rec.get("image")
        rows.append((image_id, rec["question"], image if isinstance(image, str) and image else None))
    if not rows:
        raise ValueError(f"{path} holds no questions")
    return rows


def load(data: Path, split: str | None = None) -> list[dict]:
    """The questions file's images in its order, else every ground-truth image, optional."""
    if split is not None:
        raise ValueError(f"Object HalBench has no splits (got {split!r})")
    data = Path(data)
    root, objects_file = (data.parent, data) if data.is_file() else (data, None)
    vocab_path = root / SYNONYMS_FILE
    truth = ground_truth(root, objects_file, load_vocabulary(vocab_path))
    if (root / QUESTIONS_FILE).is_file():
        questions, optional = read_questions(root / QUESTIONS_FILE), False
        absent = [i for i, _, _ in questions if i not in truth.objects]
        if absent:
            raise ValueError(
                f"{truth.source} has no objects for {len(absent)} of the {len(questions)} images of "
                f"{root / QUESTIONS_FILE} (first: {absent[0]}); use the COCO 2014 train+val annotations"
            )
    else:
        questions, optional = [(i, DEFAULT_PROMPT, None) for i in sorted(truth.objects)], True
    common = {"vocabulary": str(vocab_path), "ground_truth_source": truth.source, "optional": optional}
    return [
        {"id": str(i), "image": image or IMAGE_NAME.format(i), "prompt": q, "question": q}
        | {"objects": truth.objects[i], **common}
        for i, q, image in questions
    ]


def _counts(item: dict, answer: str, mentions: list[tuple[str, str]] | None) -> dict:
    """The per-answer numbers `aggregate` sums; mentions None (a failed extraction) leaves them empty."""
    truth = set(item["objects"])
    if mentions is None:
        return {"mentions": None, "hallucinated": None, "recalled": None, "ground_truth": len(truth), "words": None}
    return {
        "mentions": [list(m) for m in mentions],
        "hallucinated": [list(m) for m in mentions if m[1] not in truth],
        "recalled": sorted({c for _, c in mentions if c in truth}),
        "ground_truth": len(truth),
        "words": len(answer.split(" ")),  # the reference's length: single-space split of the stripped answer
    }


def score(item: dict, output: str) -> dict:
    """Rule-based: the answer's vocabulary words, as the reference's `caption_to_words` finds them."""
    answer = answer_text(output)
    mentions = caption_words(answer, load_vocabulary(item["vocabulary"]), tagged=False).mentions
    return {
        "extractor": "rules",
        **_counts(item, answer, mentions),
        "ground_truth_source": item["ground_truth_source"],
    }


def score_llm(item: dict, output: str, judge, template: str = PROMPT, version: str = PROMPT_VERSION) -> dict:
    """LLM extraction: the judge lists the objects, the names are cleaned up and matched to the vocabulary."""
    answer = answer_text(output)
    vocab = load_vocabulary(item["vocabulary"])
    reply, extracted, failure = None, [], None
    if len(answer.split()) > SHORT_ANSWER_WORDS:
        reply = judge.complete(extraction_messages(item["question"], answer, template), version)
        extracted = None if reply.error else parse_object_list(reply.text)
        if extracted is None:
            failure = f"judge error: {reply.error}" if reply.error else "unparsed reply"
    names = None if extracted is None else refine_phrases(extracted, vocab)
    mentions = None if names is None else object_mentions(names, vocab)
    return {
        "extractor": "llm",
        **_counts(item, answer, mentions),
        "extracted": extracted,
        "names": names,
        "failure": failure,
        "judge_model": reply.model if reply else None,
        "judge_prompt": version,
        "judge_cached": reply.cached if reply else None,
        "judge_reply": reply.text if reply else None,
        "tagger": "textblob-pattern",
        "ground_truth_source": item["ground_truth_source"],
    }


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _overall(rows: list[dict]) -> dict:
    n = len(rows)
    hallucinated_answers = sum(bool(r["hallucinated"]) for r in rows)
    coco = sum(bool(r["mentions"]) for r in rows)
    mentions = sum(len(r["mentions"]) for r in rows)
    hallucinated = sum(len(r["hallucinated"]) for r in rows)
    return {
        "chair_s": _rate(hallucinated_answers, n),
        "chair_s_refine": _rate(hallucinated_answers, coco),
        "chair_i": _rate(hallucinated, mentions),
        "recall": _rate(sum(len(r["recalled"]) for r in rows), sum(r["ground_truth"] for r in rows)),
        "length": sum(r["words"] for r in rows) / n if n else None,
        "n": n,
        "coco_responses": coco,
        "mentions": mentions,
        "hallucinated_mentions": hallucinated,
    }


def aggregate(records: list[dict]) -> dict:
    """The reference's overall metrics over the answers scored, with the notes that say how they were made."""
    scored = [r for r in records if r.get("failure") is None]
    out = {"overall": _overall(scored), "extractor": one_or_mixed(r["extractor"] for r in records)}
    out["ground_truth"] = one_or_mixed(r["ground_truth_source"] for r in records)
    if any(r["extractor"] == "rules" for r in records):  # the LLM path's phrase cleanup is spaCy's there: no exact run
        out.update(tagging.notes(tagger=False))
    if any(r["extractor"] == "llm" for r in records):
        out["extraction_errors"] = len(records) - len(scored)
        out["unparsed"] = sum(r.get("failure") == "unparsed reply" for r in records)
        out["judge_model"] = one_or_mixed(r["judge_model"] for r in scored)
        out["judge_prompt"] = one_or_mixed(r["judge_prompt"] for r in records)
        out["tagger"] = one_or_mixed(r["tagger"] for r in records)
    return out


def with_prompt(template: str) -> Benchmark:
    """`objhal_llm` with a user's extraction prompt (placeholders {question} and {answer}), e.g. the reference's
    own for numbers closer to published ones; its version is `custom-<hash>`, so caches and records tell them apart."""
    check_prompt(template)
    version = custom_prompt_version(template)

    def custom_score(item: dict, output: str, judge) -> dict:
        return score_llm(item, output, judge, template, version)

    return dataclasses.replace(LLM_BENCHMARK, score=custom_score)


HEADLINE = (("overall", "chair_s_refine", "resp hal"), ("overall", "chair_i", "obj hal"))
BENCHMARK = Benchmark(
    name="objhal",
    description="Object HalBench, rule-based object matching (RLHF-V vocabulary): CHAIR_s(_refine), CHAIR_i, recall",
    load=load,
    generation={"max_new_tokens": 512, "do_sample": False},
    score=score,
    aggregate=aggregate,
    headline=HEADLINE,
    output_ids=("image_id",),
)
LLM_BENCHMARK = dataclasses.replace(
    BENCHMARK,
    name="objhal_llm",
    description="Object HalBench with LLM object extraction, as papers report it: response and object hallucination",
    score=score_llm,
    needs_judge=True,
    judge_prompt=with_prompt,
)
