"""`align eval`: score one checkpoint, every checkpoint of a run directory, or a list; print a table; write JSON.

Each checkpoint gets `eval_results.json` (schema `{benchmark: {metric: value}, "meta": {...}}`) and
`eval_generations.jsonl` beside it. A benchmark already scored on a checkpoint with the same settings is not
redone unless `force=True`, so a killed sweep resumes where it stopped, and scoring a new benchmark keeps the
others' numbers; a checkpoint whose weight files changed since (re-saved: `weights_fingerprint`, their sizes
and modification times) is scored again. "Same settings" leaves out the fields that only say *when* to evaluate
(`at_checkpoints`, `checkpoint_limit`), so results a training run's checkpoint evals wrote are reused by
`align eval` with the same `--limit`.

`EVAL_SUITES` maps each name `EvalConfig.benchmarks` may hold to the function that generates and scores it; a new
generation benchmark is one entry there.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from align.config.loading import from_dict
from align.config.sections import DataConfig, EvalConfig
from align.core.distributed import is_main
from align.core.models import load_policy
from align.core.run_dir import has_model, weights_fingerprint
from align.core.switch import switch_value
from align.eval.benchmarks import BENCHMARKS
from align.eval.judge import Judge
from align.eval.public import run_source
from align.eval.table import text_table
from align.eval.toyworld import evaluate_toyworld
from data_builders.toyworld import WorldConfig

RESULTS_FILE = "eval_results.json"
TABLE_COLUMNS = [
    ("toyworld_chair", "chair_s", "CHAIR_s"),
    ("toyworld_chair", "chair_i", "CHAIR_i"),
    ("toyworld_chair", "recall", "recall"),
    ("toyworld_chair", "length", "len"),
    ("toyworld_chair", "prior_share", "prior%"),
    ("toyworld_pope", "f1_mean", "POPE F1"),
    ("toyworld_pope_adversarial", "f1", "F1 adv"),
    ("toyworld_pope", "yes_ratio_mean", "yes"),
]


SCHEDULING_FIELDS = ("at_checkpoints", "checkpoint_limit")  # when to evaluate, not what: not part of the cache key


def _toyworld_suite(model, processor, data_cfg: DataConfig, eval_cfg: EvalConfig) -> tuple[dict, list[dict]]:
    return evaluate_toyworld(model, processor, data_cfg.world, eval_cfg, data_cfg.cache_dir)


EVAL_SUITES: dict[str, Callable[..., tuple[dict, list[dict]]]] = {"toyworld": _toyworld_suite}


def eval_settings(eval_cfg: EvalConfig) -> dict:
    """The settings that decide an eval's numbers (the cache key), without the scheduling fields."""
    settings = dataclasses.asdict(eval_cfg)
    for name in SCHEDULING_FIELDS:
        settings.pop(name, None)
    if settings.get("switch") is None:
        settings.pop("switch", None)  # no switch: the key results from before the switch existed were stored under
    return settings


def is_checkpoint(path: Path) -> bool:
    return has_model(path)


def resolve_checkpoints(path: str | Path) -> list[Path]:
    """A checkpoint dir → [it]; a run dir → its checkpoint-N dirs by step, then final/."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist: give a checkpoint or a run directory")
    if is_checkpoint(path):
        return [path]
    found = sorted((p for p in path.glob("checkpoint-*") if is_checkpoint(p)), key=lambda p: int(p.name.split("-")[1]))
    if (path / "final").is_dir() and is_checkpoint(path / "final"):
        found.append(path / "final")
    if not found:
        raise FileNotFoundError(
            f"{str(path)!r} holds no model (no config.json / adapter_config.json, no checkpoint-*/ or final/ inside)"
        )
    return found


def run_data_config(checkpoint: Path) -> DataConfig:
    """The data section of the run that wrote this checkpoint (align_config.yaml here or in a parent): its
    DataConfig fields (an SFT run's section also says where its training rows came from)."""
    for d in [checkpoint, *checkpoint.resolve().parents][:3]:
        f = d / "align_config.yaml"
        if f.is_file():
            raw = yaml.safe_load(f.read_text()) or {}
            if "data" in raw:
                known = {field.name for field in dataclasses.fields(DataConfig)}
                data = {k: v for k, v in (raw["data"] or {}).items() if k in known}
                return from_dict(DataConfig, data, prefix="data.")
    return DataConfig(world=WorldConfig())


def checkpoint_step(checkpoint: Path) -> int | None:
    m = re.fullmatch(r"checkpoint-(\d+)", checkpoint.name)
    if m:
        return int(m.group(1))
    state = checkpoint.parent / "train_summary.json"
    if checkpoint.name == "final" and state.is_file():
        return json.loads(state.read_text()).get("train", {}).get("global_step")
    return None


def benchmark_settings(eval_cfg: EvalConfig, name: str) -> dict:
    """What decides one benchmark's numbers, so adding a benchmark to an eval, or changing another's source, does
    not redo the ones already scored: a public benchmark's source, item limit, decoding and judge; a suite's
    eval settings without the sources and the judge."""
    settings = eval_settings(eval_cfg)
    source = next((s for s in settings.pop("sources") if s["name"] == name), None)
    judge = settings.pop("judge")
    if source is None:
        return {**settings, "benchmarks": [name]}
    switch = {"switch": settings["switch"]} if "switch" in settings else {}
    return {
        "source": source,
        "limit": source["limit"] or settings["limit"],
        "generation": settings["generation"],
        "judge": judge,
        **switch,
    }


def _read_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluate_checkpoint(
    checkpoint, eval_cfg: EvalConfig, model=None, processor=None, force=False, data_cfg: DataConfig | None = None
) -> dict:
    """Score one checkpoint (loading it unless a live model is given) and write the JSON beside it.

    Each benchmark's numbers are kept in `eval_results.json` with the settings that produced them
    (`meta.benchmarks`) and the fingerprint of the weights they scored; a benchmark already scored with the same
    settings on the same weight files is reused unless `force`, others are scored, and the file keeps every
    benchmark ever scored there. The return value holds the requested ones.
    """
    if not is_main():  # one process of several: the main one scores and writes; the others have nothing to return
        return {}
    checkpoint = Path(checkpoint)
    out = checkpoint / RESULTS_FILE
    stored = _read_results(out)
    entries = stored.get("meta", {}).get("benchmarks", {})
    wanted = {name: benchmark_settings(eval_cfg, name) for name in eval_cfg.benchmarks}
    weights = weights_fingerprint(checkpoint)
    todo = [n for n in wanted if force or _stale(entries.get(n, {}), wanted[n], weights)]
    if todo:
        scored, generations = _score_benchmarks(checkpoint, eval_cfg, todo, model, processor, data_cfg)
        for name, (scores, meta) in scored.items():
            for key in entries.get(name, {}).get("keys", []):
                stored.pop(key, None)
            stored.update(scores)
            entries[name] = {"settings": wanted[name], "weights": weights, "keys": list(scores), "meta": meta}
        _write_generations(checkpoint / "eval_generations.jsonl", generations, set(todo))
    head = {
        "checkpoint": str(checkpoint),
        "step": checkpoint_step(checkpoint),
        "eval_settings": eval_settings(eval_cfg),
    }
    if todo:
        out.write_text(json.dumps(_results_view(stored, entries, list(entries), head), indent=2))
    return _results_view(stored, entries, list(wanted), head)


def _stale(entry: dict, settings: dict, weights: dict) -> bool:
    """A cached benchmark entry scored other settings or other weights (an entry from before weights were recorded
    counts as other weights)."""
    return entry.get("settings") != settings or entry.get("weights") != weights


def _results_view(stored: dict, entries: dict, names: list[str], head: dict) -> dict:
    """The named benchmarks' results, their notes and settings under `meta`."""
    view = {key: stored[key] for name in names for key in entries[name]["keys"]}
    notes = {k: v for name in names for k, v in entries[name]["meta"].items()}
    view["meta"] = {**notes, **head, "benchmarks": {name: entries[name] for name in names}}
    return view


def _score_benchmarks(checkpoint: Path, eval_cfg: EvalConfig, names: list[str], model, processor, data_cfg):
    """{name: (results, meta)} and the generations, for the benchmarks to (re)score."""
    data_cfg = data_cfg or run_data_config(checkpoint)
    if model is None:
        model, processor = load_policy(checkpoint)
    sources = {s.name: s for s in eval_cfg.sources}
    judge = None
    if eval_cfg.judge is not None and any(n in sources for n in names):
        judge = Judge(eval_cfg.judge)
    was_training = model.training
    model.eval()
    scored, generations = {}, []
    try:
        with switch_value(model, eval_cfg.switch):  # a HallE switch's ε for every benchmark (None: as it is)
            for name in names:
                if name in sources:
                    scores, gens = run_source(model, processor, sources[name], eval_cfg, checkpoint, judge)
                else:
                    scores, gens = EVAL_SUITES[name](model, processor, data_cfg, eval_cfg)
                meta = scores.pop("meta", {})
                scored[name] = (
                    (scores, meta) if eval_cfg.switch is None else (scores, {**meta, "switch": eval_cfg.switch})
                )
                generations += [{"benchmark": name, **g} for g in gens]
    finally:
        model.train(was_training)
    return scored, generations


def _write_generations(path: Path, generations: list[dict], rescored: set[str]) -> None:
    """The new generations, plus the kept lines of benchmarks not rescored this time."""
    kept = []
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if json.loads(line).get("benchmark") not in rescored]
    with open(path, "w") as f:
        for line in kept:
            f.write(line + "\n")
        for g in generations:
            f.write(json.dumps(g) + "\n")


def table_columns() -> list[tuple[str, str, str]]:
    """(result key, metric, label): ToyWorld's columns, then each public benchmark's headline numbers."""
    public = [
        (name if group in ("", "overall") else f"{name}_{group.replace('/', '_')}", metric, f"{name}:{label}")
        for name, bench in BENCHMARKS.items()
        for group, metric, label in bench.headline
    ]
    return TABLE_COLUMNS + public


def format_table(results: dict[str, dict]) -> str:
    """Plain-text table: one row per checkpoint, the columns some checkpoint has; rates as percentages."""
    cols = [c for c in table_columns() if any(c[0] in r and c[1] in r[c[0]] for r in results.values())]
    header = ["checkpoint"] + [c[2] for c in cols]
    rows = []
    for name, r in results.items():
        cells = [name]
        for bench, metric, _ in cols:
            v = r.get(bench, {}).get(metric)
            on_own_scale = metric.endswith(("length", "score"))
            cells.append("-" if v is None else (f"{v:.2f}" if on_own_scale else f"{100 * v:.1f}"))
        rows.append(cells)
    return text_table(header, rows)
