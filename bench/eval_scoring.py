"""Scoring throughput of CHAIR (OPERA variant), POPE and AMBER's descriptions, one core.

    python bench/eval_scoring.py [--n 10000] [--data $ALIGN_BENCHMARKS] [--seed 0]

CHAIR first scores OPERA's public captions (six sets of 500, LLaVA-1.5, InstructBLIP, MiniGPT-4, Shikra; from
tests/align/eval/data), once, in a fresh process: the figure a user scoring real outputs sees, caches cold.

Then synthetic CHAIR captions, ~90 tokens like OPERA's LLaVA-1.5 captions: sentences built from COCO vocabulary
words (plurals and two-word names included) and filler, scored against random images' ground truth through the same
`score_outputs` path as `align eval score`. POPE answers are short yes/no sentences. AMBER descriptions are built
the same way from AMBER's own vocabulary (relation.json), over its 1,004 images. Target: >= 5,000 CHAIR
responses/s. `--data` is the folder holding `chair/` (the CHAIR vocabulary and objects), `pope/` and `amber/`.
The text processing (NLTK's tagger and WordNet, or the fallback without them), the versions and the CPU go into
the output. Writes bench/results/eval_scoring.json.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_info  # noqa: E402  (this script's folder is on sys.path)

from align.eval import tagging  # noqa: E402
from align.eval.benchmarks import BENCHMARKS, score_outputs  # noqa: E402
from align.eval.chair_text import load_vocabulary  # noqa: E402

OPERA_CAPTIONS = Path(__file__).resolve().parents[1] / "tests/align/eval/data/opera_chair_reference.json.xz"
FILLER = ["the", "image", "shows", "a", "scene", "with", "in", "the", "background", "and", "next", "to", "on", "of"]


def synthetic_captions(words: list[str], n: int, rng: random.Random) -> list[str]:
    def sentence() -> str:
        picks = [rng.choice(words) + ("s" if rng.random() < 0.3 else "") for _ in range(2)]
        return f"There is a {picks[0]} {' '.join(rng.sample(FILLER, 6))} a {picks[1]}."

    return [" ".join(sentence() for _ in range(7)) for _ in range(n)]


def setup() -> dict:
    """What the figures depend on: the scorers' text processing, package versions, the CPU."""
    return {"text": tagging.notes(), **machine_info(("nltk", "textblob", "torch"))}


def time_scoring(name: str, items: list[dict], outputs: dict[str, str], split: str | None, quiet=False) -> dict:
    start = time.perf_counter()
    scored = score_outputs(BENCHMARKS[name], items, outputs, allow_missing=False)
    seconds = time.perf_counter() - start
    n = scored.counts["scored"]
    if not quiet:
        print(f"{name:6} {n:6} responses in {seconds:6.2f} s: {n / seconds:9.0f} responses/s")
    return {"responses": n, "seconds": round(seconds, 3), "per_second": round(n / seconds), "split": split}


def time_repeated(name: str, items: list[dict], outputs: dict[str, str], reps: int) -> dict:
    """A benchmark with fewer items than --n: its whole set scored `reps` times."""
    start = time.perf_counter()
    for _ in range(reps):
        score_outputs(BENCHMARKS[name], items, outputs, allow_missing=False)
    seconds = time.perf_counter() - start
    n = reps * len(items)
    print(f"{name:6} {n:6} responses in {seconds:6.2f} s: {n / seconds:9.0f} responses/s")
    return {"responses": n, "seconds": round(seconds, 3), "per_second": round(n / seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="synthetic responses per benchmark")
    parser.add_argument("--data", default=os.environ.get("ALIGN_BENCHMARKS"), help="folder with chair/ and pope/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/eval_scoring.json")
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data (the folder holding chair/ and pope/) or set ALIGN_BENCHMARKS")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    rng = random.Random(args.seed)
    data = Path(args.data)
    missing = [str(data / name) for name in ("chair", "pope", "amber") if not (data / name).is_dir()]
    if missing:
        parser.error(f"--data {data}: no {', '.join(missing)}; give the folder holding chair/, pope/ and amber/")

    chair_items = BENCHMARKS["chair"].load(data / "chair", None)
    vocab = load_vocabulary(Path(chair_items[0]["vocabulary"]))
    tagging.nltk_tagger(), tagging.wordnet_installed() and tagging.wordnet_lemma("dogs")  # load once, untimed
    results = {"setup": setup()}
    print(f"text processing: {results['setup']['text']}")
    for name, rows in json.loads(lzma.decompress(OPERA_CAPTIONS.read_bytes()))["sets"].items():
        outputs = {str(image_id): caption for image_id, caption, *_ in rows["captions"]}
        items = [it for it in chair_items if it["id"] in outputs]  # the 500 images, as --split opera500 gives
        results.setdefault("chair_opera", {})[name] = time_scoring("chair", items, outputs, None, quiet=True)
    opera = results["chair_opera"]
    n, seconds = sum(r["responses"] for r in opera.values()), sum(r["seconds"] for r in opera.values())
    results["chair_opera_total"] = {"responses": n, "seconds": round(seconds, 3), "per_second": round(n / seconds)}
    print(f"chair  {n:6} OPERA captions in {seconds:6.2f} s: {n / seconds:9.0f} responses/s")
    words = sorted(w for w in vocab.category if " " not in w.strip())
    chosen = rng.sample(chair_items, args.n)
    captions = synthetic_captions(words, args.n, rng)
    results["chair"] = time_scoring("chair", chosen, {it["id"]: c for it, c in zip(chosen, captions)}, None)

    pope_items = BENCHMARKS["pope"].load(data / "pope", "adversarial")
    answers = ["Yes, there is a {} in the image.", "No, there is not.", "Yes.", "No", "I do not see one."]
    outputs = {it["id"]: rng.choice(answers) for it in pope_items}
    results["pope"] = time_repeated("pope", pope_items, outputs, max(1, args.n // len(pope_items)))

    amber_items = BENCHMARKS["amber"].load(data / "amber", "generative")
    amber_words = sorted(json.loads((data / "amber" / "relation.json").read_text()))
    descriptions = synthetic_captions(amber_words, len(amber_items), rng)
    outputs = {it["id"]: d for it, d in zip(amber_items, descriptions)}
    results["amber_generative"] = time_repeated("amber", amber_items, outputs, max(1, args.n // len(amber_items)))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
