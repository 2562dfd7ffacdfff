"""`align demo`: the embedded default end to end on CPU — build ToyWorld, SFT the base policy, evaluate it.

Everything goes under `--workdir` (default runs/demo): `sft_base/` (checkpoints, final/), and `report.json` in
the eval schema with per-stage timings in `meta`. Rerunning resumes: the dataset is cached, training resumes
from its last checkpoint, and a scored checkpoint is not re-scored.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from align.config import apply_overrides, from_dict
from align.eval.runner import evaluate_checkpoint, format_table
from align.sft import SFTConfig
from align.sft import main as run_sft
from data_builders.toyworld_data import build_toyworld, summarize


def demo_config(workdir: str | Path, seed: int = 0, overrides: list[str] | None = None) -> SFTConfig:
    """The SFT config of the demo: the recipe defaults (= configs/toy/sft_base.yaml) under the workdir."""
    data = apply_overrides(
        {"output_dir": str(Path(workdir) / "sft_base"), "seed": seed, "data": {"world": {"seed": seed}}},
        list(overrides or []),
    )
    return from_dict(SFTConfig, data)


def run_demo(workdir: str | Path = "runs/demo", seed: int = 0, overrides: list[str] | None = None) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(demo_config(workdir, seed, overrides), eval_at_end=False)
    timings = {}

    t = time.time()
    print("[1/3] building ToyWorld (cached after the first run)")
    data = build_toyworld(cfg.data.world, cfg.data.cache_dir)
    for split, s in summarize(data).items():
        print(
            f"      {split:5s} {s['images']:5d} images, {s['objects_per_image']:.2f} objects/image, "
            f"{100 * s['injected_captions']:.0f}% captions name an absent object"
        )
    timings["build_data"] = round(time.time() - t, 1)

    t = time.time()
    print(f"[2/3] SFT of the base policy: {cfg.optim.max_steps} steps, batch {cfg.optim.batch_size}")
    summary = run_sft(cfg)
    timings["sft"] = round(time.time() - t, 1)

    t = time.time()
    print("[3/3] hallucination eval on the ToyWorld test split")
    results = evaluate_checkpoint(summary["final"], cfg.eval)
    timings["eval"] = round(time.time() - t, 1)

    report = {k: v for k, v in results.items() if k != "meta"}
    report["meta"] = {**results["meta"], "stages_seconds": timings, "sft_config": dataclasses.asdict(cfg)}
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    print()
    print(format_table({"base (SFT)": report}))
    c = report["toyworld_chair"]
    print(
        f"\nhallucinated mentions: {100 * c['substitution_share']:.0f}% misnamed present objects, "
        f"{100 * c['addition_share']:.0f}% added absent objects"
    )
    print(f"wrote {workdir / 'report.json'}  ({sum(timings.values()):.0f}s: {timings})")
    return report
