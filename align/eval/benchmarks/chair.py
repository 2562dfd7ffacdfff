"""CHAIR (Rohrbach et al. 2018) on COCO, in OPERA's variant (Huang et al. 2024), the one decoding papers report.

Protocol: caption COCO val2014 images with "Please describe this image in detail." (`max_new_tokens` 512);
OPERA's 500 random images are the image ids of its `log/chair_eval_results/<model>/*.jsonl`. Outputs are
OPERA's `{image_id, caption}` JSONL.

Data (`--data DIR`, or the ground-truth file itself with the vocabulary beside it):
- `chair_vocabulary.json`: OPERA's synonym tables (see `align.eval.chair_text`);
- the ground truth, either `coco2014_image_objects.json`: `{image_id: [category, ...]}` for the COCO 2014
  train+val images, the instance-annotation categories plus the categories that the image's reference captions
  mention, as OPERA's evaluator builds them (its `chair.pkl`); or, when that file is absent, the COCO 2014
  annotation files (`instances_*2014.json`, `captions_*2014.json`, in DIR or DIR/annotations), from which
  `align.eval.coco_objects` builds the same sets with this module's caption rules (cached after the first run).
  Built here, the caption part is OPERA's when NLTK's tagger and WordNet are installed (but for deviation 2 in
  `chair_text`), else a few images differ from OPERA's own file; prefer that file when you have it.

Items: with no split, every ground-truth image, each marked `optional`: the outputs pick the images, so an image
without a caption is not missing (see `score_outputs`). `split="opera500"` gives OPERA's 500 images instead, in its
order and required like any benchmark's items: the set to generate for and to compare with published numbers.
An output naming an image outside the ground truth matches no item. OPERA would score it against an empty object
set instead, and every mention would then count as hallucinated.

Metrics (micro-averaged, as OPERA's `compute_chair`): CHAIR_s = captions with >= 1 hallucinated mention /
captions; CHAIR_i = hallucinated mentions / mentions (a repeated mention counts each time); recall = Σ distinct
correctly mentioned categories / Σ ground-truth categories; length = mean tokens per caption after double-word
merging (OPERA's Len; not a rate). Text processing and its documented deviations: `align.eval.chair_text`.
"""

from __future__ import annotations

from pathlib import Path

from align.eval import tagging
from align.eval.benchmarks.base import Benchmark
from align.eval.chair_text import VOCABULARY_FILE, Vocabulary, caption_words, load_vocabulary
from align.eval.coco_objects import (
    GroundTruth,
    annotation_files,
    build_image_objects,
    read_image_objects,
    vocabulary_fingerprint,
)

PROMPT = "Please describe this image in detail."
OBJECTS_FILE = "coco2014_image_objects.json"
IMAGE_NAME = "COCO_val2014_{:012d}.jpg"
SPLITS = ("opera500",)
# OPERA's 500 random val2014 images (shikiw/OPERA log/chair_eval_results/*/*.jsonl, in that order)
OPERA_500 = tuple(
    int(i)
    for i in """
226988 337443 112022 394444 481635 285258 479057 66238 558458 400596 373266 38332 84533 449963 128180 204232
477867 308128 222407 469543 421564 177419 86432 544590 513060 140921 361351 202154 94248 200681 532989 565989
67315 157170 328786 46011 384348 451798 376545 11538 346207 359238 297610 428447 428769 452084 545363 77963
78093 346334 185633 327165 410632 468471 241317 444982 117563 206579 221172 317969 82150 284064 372203 359136
499281 192233 11987 406810 99965 17328 393682 540093 242400 409009 6091 42834 433554 174987 116208 80131 310663
100138 415613 214737 172718 99186 3580 526044 105291 577169 181574 83441 130527 86471 105737 212842 105220
490701 368961 520892 113354 33652 511153 328957 190015 244925 29406 32570 260608 291286 375278 290684 29306
173375 198590 25747 346589 121106 392850 554241 341017 135497 159260 417332 90520 318524 118406 25748 365557
320978 315073 363927 243355 373521 76409 485985 27564 92749 554958 439971 559006 457262 263881 322594 22423
59000 119547 432763 125635 542549 494759 5617 279774 323442 109454 370677 521509 236461 534845 180580 484551
456146 283131 23309 547487 34830 125997 19916 145019 127161 543660 8333 482907 290130 58225 249550 448765 498439
252403 347995 544216 205729 350988 288673 568690 504194 35368 307332 490878 507187 254644 400803 574928 559247
254625 374966 351967 172877 309237 565877 489924 125472 422706 290700 365177 398661 175611 477673 1270 224012
552510 272880 580540 242934 178807 135748 255036 3926 236762 248314 559773 340665 388599 163528 481212 277533
173383 419624 130291 193369 367804 84735 247285 438432 185479 570826 127394 311081 376677 269419 210708 472246
187475 299457 2894 209733 428231 250619 434693 15596 569415 305004 510527 581317 532071 467978 184972 525568
165056 362240 179558 120792 294865 159662 176906 250608 33561 274612 288714 284379 205247 200267 296775 4265
104392 316658 230993 321035 571038 395978 482917 207561 369470 482210 525381 156375 334399 322955 312024 118715
237318 236865 72096 450762 168974 559950 575776 552352 490683 76417 231153 190497 126065 375915 95022 177935
380117 132373 284282 276707 194704 430286 361171 406451 57286 535952 455772 63617 90155 158127 248582 206560
69009 322122 549930 33216 434581 239509 88848 116182 562345 343410 490529 328818 218947 152281 41110 512985
414212 426578 291962 460927 552186 553852 370337 18491 556000 443351 63965 405660 419144 371004 116861 579664
5600 199389 568131 35671 76522 504167 21644 483135 271063 36477 125375 362520 5412 757 396496 81761 130677
318825 48014 421028 479659 369826 406253 548267 335844 299640 121812 107234 153104 216417 286708 547041 293802
252738 43165 218215 299082 152360 205601 174004 31542 305268 2867 72428 158494 147629 581899 369345 372246
261563 461802 138175 103488 215901 514180 396338 579362 289512 306928 453009 112581 504977 228764 151528 248919
580607 200291 296231 505663 41572 509589 357238 466575 271970 305540 462928 270544 134042 120340 418949 520109
50753 329939 351345 25293 543041 568265 467386 242363 554900 115006 75375 419223 137578 408808 243773 436492
556648 298924 562030 501315 436162 323888 211476 473433 165752 573756 187450 43266 150080 453757 354460 221681
349324 225133 452566 124952 26697 126064 557190 137612 408480 277694 74166 102625 540694 518586 81303 383065
169602 19890 236604 270753 457178 577712 414560 388983 245965 147590 46882 518719 176312 580746 541223 22589
196815
""".split()
)


def ground_truth(data: Path) -> tuple[GroundTruth, Path]:
    """(ground truth, vocabulary file) from `--data`: the precomputed file (or a directory holding it), else a
    directory of COCO annotation files; the vocabulary file sits beside either."""
    data = Path(data)
    objects = data if data.is_file() else data / OBJECTS_FILE
    vocab_path = objects.parent / VOCABULARY_FILE
    if objects.is_file():
        load_vocabulary(vocab_path)  # fail now, not at the first score
        return GroundTruth(read_image_objects(objects), str(objects)), vocab_path
    files = annotation_files(data) if data.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"{objects} not found: CHAIR needs {OBJECTS_FILE} ({{image_id: [object, ...]}}, the COCO 2014 ground "
            "truth of OPERA's evaluator) or the COCO 2014 annotation files (instances_*2014.json, "
            f"captions_*2014.json), and {VOCABULARY_FILE}, in the --data directory"
        )
    vocab = load_vocabulary(vocab_path)
    rules = f"opera-chair-v2-{tagging.text_mode()}:" + vocabulary_fingerprint(
        vocab.objects, vocab.category, vocab.double_words
    )
    return build_image_objects(files, vocab.category, lambda c: caption_categories(c, vocab), rules), vocab_path


def caption_categories(caption: str, vocab: Vocabulary) -> set[str]:
    """The categories a reference caption mentions, as OPERA adds them to an image's ground truth."""
    return {category for _, category in caption_words(caption, vocab).mentions}


def load(data: Path, split: str | None = None) -> list[dict]:
    """One item per ground-truth image, optional (split None) or OPERA's 500 (see the module docstring)."""
    if split not in (None, *SPLITS):
        raise ValueError(f"unknown CHAIR split {split!r}: use {', '.join(SPLITS)} or none (the outputs' images)")
    truth, vocab_path = ground_truth(data)
    ids = sorted(truth.objects) if split is None else OPERA_500
    absent = [i for i in ids if i not in truth.objects]
    if absent:
        raise ValueError(f"{truth.source} lacks {len(absent)} of OPERA's images (first: {absent[0]})")
    common = {"prompt": PROMPT, "vocabulary": str(vocab_path), "optional": split is None}
    return [{"id": str(i), "image": IMAGE_NAME.format(i), "objects": truth.objects[i], **common} for i in ids]


def score(item: dict, output: str) -> dict:
    """The caption's mentions, the hallucinated ones (category not in the image's objects), the distinct
    categories recalled, the ground-truth size and the token count."""
    words = caption_words(output, load_vocabulary(item["vocabulary"]))
    truth = set(item["objects"])
    return {
        "mentions": [list(m) for m in words.mentions],
        "hallucinated": [list(m) for m in words.mentions if m[1] not in truth],
        "recalled": sorted({c for _, c in words.mentions if c in truth}),
        "ground_truth": len(truth),
        "tokens": len(words.tokens),
    }


def aggregate(records: list[dict]) -> dict:
    """CHAIR_s, CHAIR_i, recall and length over all captions (rates 0.0 when their denominator is 0)."""
    n = len(records)
    mentions = sum(len(r["mentions"]) for r in records)
    hallucinated = sum(len(r["hallucinated"]) for r in records)
    recalled = sum(len(r["recalled"]) for r in records)
    truth = sum(r["ground_truth"] for r in records)
    overall = {
        "chair_s": sum(bool(r["hallucinated"]) for r in records) / n if n else 0.0,
        "chair_i": hallucinated / mentions if mentions else 0.0,
        "recall": recalled / truth if truth else 0.0,
        "length": sum(r["tokens"] for r in records) / n if n else 0.0,
        "n": n,
        "mentions": mentions,
        "hallucinated_mentions": hallucinated,
    }
    return {"overall": overall, **tagging.notes(fallback_tagger="none (every word read as a noun)")}


BENCHMARK = Benchmark(
    name="chair",
    description="CHAIR object hallucination in detailed COCO captions (OPERA's variant): CHAIR_s, CHAIR_i, recall",
    load=load,
    generation={"max_new_tokens": 512, "do_sample": False},
    score=score,
    aggregate=aggregate,
    splits=SPLITS,
    headline=(("overall", "chair_s", "CHAIR_s"), ("overall", "chair_i", "CHAIR_i")),
    output_ids=("image_id",),
)
