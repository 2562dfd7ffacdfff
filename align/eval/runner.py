"""`align eval`: score one checkpoint, every checkpoint of a run directory, or a list; print a table; write JSON.

Each checkpoint gets `eval_results.json` (schema `{benchmark: {metric: value}, "meta": {...}}`) and
`eval_generations.jsonl` beside it. A checkpoint already scored with the same settings is not redone
unless `force=True`, so a killed sweep resumes where it stopped. "Same settings" leaves out the fields that only
say *when* to evaluate (`at_checkpoints`, `checkpoint_limit`), so results a training run's checkpoint evals wrote
are reused by `align eval` with the same `--limit`.

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

from align.config import from_dict
from align.eval.table import text_table
from align.sections import DataConfig, EvalConfig
from data_builders.toyworld import WorldConfig

RESULTS_FILE = "eval_results.json"
TABLE_COLUMNS = [
    ("toyworld_chair", "chair_s", "CHAIR_s"),
    ("toyworld_chair", "chair_i", "CHAIR_i"),
    ("toyworld_chair", "recall", "recall"),
    ("toyworld_chair", "length", "len"),
    ("toyworld_chair", "addition_share", "add%"),
    ("toyworld_pope", "f1_mean", "POPE F1"),
    ("toyworld_pope_adversarial", "f1", "F1 adv"),
    ("toyworld_pope", "yes_ratio_mean", "yes"),
]


SCHEDULING_FIELDS = ("at_checkpoints", "checkpoint_limit")  # when to evaluate, not what: not part of the cache key


def _toyworld_suite(model, processor, data_cfg: DataConfig, eval_cfg: EvalConfig) -> tuple[dict, list[dict]]:
    from align.eval.toyworld import evaluate_toyworld

    return evaluate_toyworld(model, processor, data_cfg.world, eval_cfg, data_cfg.cache_dir)


EVAL_SUITES: dict[str, Callable[..., tuple[dict, list[dict]]]] = {"toyworld": _toyworld_suite}


def check_benchmarks(names: list[str]) -> None:
    """Fail when the config is built, not after hours of training, on a benchmark no suite implements."""
    if not names:
        raise ValueError("eval.benchmarks: name at least one benchmark")
    unknown = [n for n in names if n not in EVAL_SUITES]
    if unknown:
        raise ValueError(f"eval.benchmarks: unknown {unknown}; implemented: {', '.join(EVAL_SUITES)}")


def eval_settings(eval_cfg: EvalConfig) -> dict:
    """The settings that decide an eval's numbers (the cache key), without the scheduling fields."""
    settings = dataclasses.asdict(eval_cfg)
    for name in SCHEDULING_FIELDS:
        settings.pop(name, None)
    return settings


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


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
    """The data section of the run that wrote this checkpoint (align_config.yaml here or in a parent)."""
    for d in [checkpoint, *checkpoint.resolve().parents][:3]:
        f = d / "align_config.yaml"
        if f.is_file():
            raw = yaml.safe_load(f.read_text()) or {}
            if "data" in raw:
                return from_dict(DataConfig, raw["data"], prefix="data.")
    return DataConfig(world=WorldConfig())


def checkpoint_step(checkpoint: Path) -> int | None:
    m = re.fullmatch(r"checkpoint-(\d+)", checkpoint.name)
    if m:
        return int(m.group(1))
    state = checkpoint.parent / "train_summary.json"
    if checkpoint.name == "final" and state.is_file():
        return json.loads(state.read_text()).get("train", {}).get("global_step")
    return None


def evaluate_checkpoint(
    checkpoint, eval_cfg: EvalConfig, model=None, processor=None, force=False, data_cfg: DataConfig | None = None
) -> dict:
    """Score one checkpoint (loading it unless a live model is given) and write the JSON beside it."""
    from align.models import load_policy

    checkpoint = Path(checkpoint)
    out = checkpoint / RESULTS_FILE
    settings = eval_settings(eval_cfg)
    if out.is_file() and not force:
        cached = json.loads(out.read_text())
        if cached.get("meta", {}).get("eval_settings") == settings:
            return cached
    data_cfg = data_cfg or run_data_config(checkpoint)
    if model is None:
        model, processor = load_policy(checkpoint)
    was_training = model.training
    model.eval()
    results, generations, meta = {}, [], {}
    try:
        for name in eval_cfg.benchmarks:
            scores, gens = EVAL_SUITES[name](model, processor, data_cfg, eval_cfg)
            meta.update(scores.pop("meta", {}))
            results.update(scores)
            generations += gens
    finally:
        model.train(was_training)
    results["meta"] = {**meta, "checkpoint": str(checkpoint), "step": checkpoint_step(checkpoint)}
    results["meta"]["eval_settings"] = settings
    out.write_text(json.dumps(results, indent=2))
    with open(checkpoint / "eval_generations.jsonl", "w") as f:
        for g in generations:
            f.write(json.dumps(g) + "\n")
    return results


def format_table(results: dict[str, dict]) -> str:
    """Plain-text table: one row per checkpoint, rates as percentages."""
    cols = [c for c in TABLE_COLUMNS if any(c[0] in r and c[1] in r[c[0]] for r in results.values())]
    header = ["checkpoint"] + [c[2] for c in cols]
    rows = []
    for name, r in results.items():
        cells = [name]
        for bench, metric, _ in cols:
            v = r.get(bench, {}).get(metric)
            cells.append("-" if v is None else (f"{v:.2f}" if metric == "length" else f"{100 * v:.1f}"))
        rows.append(cells)
    return text_table(header, rows)
