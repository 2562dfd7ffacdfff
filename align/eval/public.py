"""Generate on a public benchmark (POPE, AMBER, CHAIR, Object HalBench, MMHal-Bench, CCEval) and score it.

`align eval` and the checkpoint callback run this for every `eval.benchmarks` name that has an `eval.sources`
entry: the benchmark's own loader reads the annotation files, each item's image is read from the source's image
directory, the model answers the item's prompt with the benchmark's protocol settings (its `generation` dict:
length, sampling), and `score_outputs` scores the answers exactly as `align eval score` scores files from other
tools, so numbers from here and from there compare.

Answers are appended to `<checkpoint>/eval_outputs/<benchmark>[-split]-<hash>.jsonl` batch by batch, as
`{question_id, text}` lines that `align eval score` reads back; the hash covers everything that changes an
answer (data, split, limit, decoding), so a killed run resumes at the first unanswered item and a changed
setting starts a new file instead of mixing answers.

Results are flattened into the project's eval schema (`{benchmark: {metric: value}}`): a benchmark's overall
group and top-level numbers go under its name, every other group under `<name>_<group>`; text notes (which judge,
which tagger) go to `meta`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import defaultdict
from pathlib import Path

from align.config.sections import BenchmarkSource, EvalConfig, GenerationConfig
from align.core.generation import generate
from align.eval.benchmarks import get_benchmark, score_outputs


def limit_items(items: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` items of each split (POPE's three splits stay balanced), order kept."""
    if limit is None:
        return items
    taken: dict[object, int] = defaultdict(int)
    out = []
    for it in items:
        if taken[it.get("split")] < limit:
            taken[it.get("split")] += 1
            out.append(it)
    return out


def image_paths(name: str, items: list[dict], images: Path) -> list[Path]:
    """Each item's image file, all checked before any generation (one missing file should not cost an hour)."""
    if not images.is_dir():
        raise FileNotFoundError(f"{name}: image directory {str(images)!r} does not exist (eval.sources images)")
    nameless = [it["id"] for it in items if not it.get("image")]
    if nameless:
        raise ValueError(f"{name}: {len(nameless)} items name no image file (first: {nameless[0]}); check the data")
    paths = [images / it["image"] for it in items]
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name}: {len(missing)} image files not found in {images} (first: {missing[0].name}); "
            "give the directory holding the benchmark's images, or set limit to evaluate a subset"
        )
    return paths


def decoding(source: BenchmarkSource, protocol: dict, base: GenerationConfig) -> GenerationConfig:
    """The benchmark's protocol (length, sampling) over the eval's decoding settings (batch size)."""
    allowed = {f.name for f in dataclasses.fields(GenerationConfig)}
    cfg = dataclasses.replace(base, **{k: v for k, v in protocol.items() if k in allowed})
    if source.max_new_tokens is not None:
        cfg = dataclasses.replace(cfg, max_new_tokens=source.max_new_tokens)
    return cfg


def outputs_file(checkpoint: Path, source: BenchmarkSource, limit: int | None, gen: GenerationConfig) -> Path:
    decisive = {**dataclasses.asdict(source), "limit": limit, "generation": dataclasses.asdict(gen)}
    decisive["generation"].pop("batch_size")  # batching changes no answer
    digest = hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:10]
    split = f"-{source.split}" if source.split else ""
    return checkpoint / "eval_outputs" / f"{source.name}{split}-{digest}.jsonl"


def read_answers(path: Path) -> dict[str, str]:
    """Answers a previous (possibly killed) run wrote; a torn last line is dropped and regenerated."""
    answers = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            answers[str(rec["question_id"])] = rec["text"]
    return answers


def answer_items(model, processor, name, items, paths, gen: GenerationConfig, out: Path, fixed_length=False):
    """Generate for the items without an answer in `out`, appending each batch as it is done. Items that carry
    their own `max_new_tokens` are generated with it, unless `fixed_length` (the source set one length)."""
    answers = read_answers(out)
    todo = [(it, p) for it, p in zip(items, paths) if it["id"] not in answers]
    by_length: dict[int, list] = defaultdict(list)
    for it, p in todo:
        length = gen.max_new_tokens if fixed_length else it.get("max_new_tokens", gen.max_new_tokens)
        by_length[length].append((it, p))
    out.parent.mkdir(parents=True, exist_ok=True)
    chunk = gen.batch_size * 4  # a few batches between appends: little lost on a kill, few file writes
    with open(out, "a") as f:
        for length, group in by_length.items():
            for start in range(0, len(group), chunk):
                part = group[start : start + chunk]
                images = [{"path": str(p), "bytes": None} for _, p in part]
                prompts = [it["prompt"] for it, _ in part]
                texts = generate(model, processor, images, prompts, gen, desc=name, max_new_tokens=length)
                for (it, _), text in zip(part, texts):
                    answers[it["id"]] = text
                    f.write(json.dumps({"question_id": it["id"], "text": text}) + "\n")
                f.flush()
    return answers


def flatten(name: str, metrics: dict) -> tuple[dict, dict]:
    """({result key: {metric: number}}, {note: text}) from a benchmark's aggregate (see the module docstring)."""
    results: dict[str, dict] = {name: {}}
    notes = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            group = name if key == "overall" else f"{name}_{key.replace('/', '_')}"
            results.setdefault(group, {}).update({k: v for k, v in value.items() if isinstance(v, (int, float))})
            notes.update({f"{name}_{key}_{k}": v for k, v in value.items() if isinstance(v, str)})
        elif isinstance(value, (int, float)):
            results[name][key] = value
        else:
            notes[f"{name}_{key}"] = value
    return {k: v for k, v in results.items() if v}, notes


def run_source(model, processor, source: BenchmarkSource, eval_cfg: EvalConfig, checkpoint: Path, judge=None):
    """Generate and score one public benchmark. Returns (results, generations) as the eval suites do."""
    bench = get_benchmark(source.name)
    if bench.needs_judge and judge is None:
        raise ValueError(f"{bench.name} is graded by an LLM judge: set eval.judge (align eval --judge-model M)")
    items = bench.load(Path(source.data), source.split)
    if all(it.get("optional") for it in items):
        raise ValueError(
            f"{bench.name}: without a split the outputs pick the images; set a split to generate on "
            f"({', '.join(bench.splits) or 'see the benchmark docs'})"
        )
    limit = source.limit or eval_cfg.limit
    items = limit_items(items, limit)
    paths = image_paths(bench.name, items, Path(source.images))
    gen = decoding(source, dict(bench.generation), eval_cfg.generation)
    out = outputs_file(checkpoint, source, limit, gen)
    fixed = source.max_new_tokens is not None
    answers = answer_items(model, processor, bench.name, items, paths, gen, out, fixed_length=fixed)
    scored = score_outputs(bench, items, answers, judge=judge)
    results, notes = flatten(bench.name, scored.metrics)
    meta = {f"{bench.name}_source": dataclasses.asdict(source), f"{bench.name}_outputs": str(out), **notes}
    generations = [
        {
            "benchmark": bench.name,
            "id": it["id"],
            "image": it["image"],
            "prompt": it["prompt"],
            "text": answers[it["id"]],
        }
        for it in items
    ]
    return {**results, "meta": meta}, generations
