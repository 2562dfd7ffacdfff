"""`align demo`: the embedded default end to end on CPU: build ToyWorld, SFT the base policy, evaluate it, then
(unless `--base-only`) OPA-DPO data, the OPA step, OPA-DPO and the off-policy DPO baseline, side by side.

Everything goes under `--workdir` (default runs/demo): `sft_base/`, `opa_data/`, `opa_dpo/` (with `opa/`),
`dpo_offpolicy/`; `report.json` is the base policy's eval in the eval schema with per-stage timings in `meta`, and
`comparison.json` maps each model to its eval. Overrides go to the SFT config, or with a prefix to a stage:
`opa_data.limit=200`, `opa_dpo.optim.max_steps=50`. Rerunning resumes every stage, and a finished stage says
"already finished" and does nothing (the evals are cached per checkpoint); `mode` (`--overwrite` / `--resume`) goes
to every stage, and a stage whose config changed is refused without one (align/core/run_dir.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from align.config.loading import apply_overrides, from_dict
from align.config.recipes import OPADPOConfig, SFTConfig
from align.core.run_dir import start_build
from align.eval.runner import evaluate_checkpoint, format_table
from align.eval.table import text_table
from align.recipes import opa_dpo as opa_dpo_recipe
from align.recipes import sft as sft_recipe
from align.rollout.builds import build_opa_data
from data_builders.configs import OPADataConfig
from data_builders.toyworld_data import build_toyworld, summarize

STAGE_PREFIXES = ("opa_data", "opa_dpo")
# `python bench/demo.py` results committed with the code: what the same demo gave over seeds, for reading this run
EXPECTED = Path(__file__).resolve().parents[1] / "bench" / "measured"
EXPECTED_COLUMNS = [
    ("toyworld_chair.chair_s", "CHAIR_s"),
    ("toyworld_chair.chair_i", "CHAIR_i"),
    ("toyworld_chair.recall", "recall"),
    ("toyworld_chair.prior_share", "prior%"),
    ("toyworld_pope_adversarial.f1", "F1 adv"),
]


def split_overrides(overrides: list[str] | None) -> dict[str, list[str]]:
    """`opa_data.x=1` → the data stage, `opa_dpo.x=1` → both DPO runs, anything else → the SFT config."""
    groups: dict[str, list[str]] = {"sft": [], **{p: [] for p in STAGE_PREFIXES}}
    for item in overrides or []:
        head, _, rest = item.partition(".")
        groups[head if head in STAGE_PREFIXES and rest else "sft"].append(rest if head in STAGE_PREFIXES else item)
    return groups


def demo_config(workdir: str | Path, seed: int = 0, overrides: list[str] | None = None) -> SFTConfig:
    """The SFT config of the demo: the recipe defaults (= configs/toy/sft_base.yaml) under the workdir."""
    data = apply_overrides(
        {"run": {"output_dir": str(Path(workdir) / "sft_base"), "seed": seed}, "data": {"world": {"seed": seed}}},
        list(overrides or []),
    )
    return from_dict(SFTConfig, data)


def opa_demo_configs(workdir: str | Path, sft: SFTConfig, groups: dict[str, list[str]]):
    """The demo's OPA-DPO data config and its two training configs (OPA-DPO, off-policy DPO baseline): the recipe
    defaults (= configs/toy/opa_dpo_data.yaml, configs/toy/opa_dpo.yaml), wired to the demo's base policy and world."""
    workdir, base = Path(workdir), str(Path(sft.run.output_dir) / "final")
    world = dataclasses.asdict(sft.data.world)
    data_cfg = from_dict(
        OPADataConfig,
        apply_overrides(
            {
                "output_dir": str(workdir / "opa_data"),
                "policy": base,
                "world": world,
                "cache_dir": sft.data.cache_dir,
                "seed": sft.run.seed,
            },
            groups["opa_data"],
        ),
    )
    common = {
        "dataset": str(Path(data_cfg.output_dir) / "dataset"),
        "model": {"name_or_path": base},
        "data": dataclasses.asdict(sft.data.shared()),
        "eval": dataclasses.asdict(sft.eval),
    }

    def run(name: str) -> dict:
        return {
            "run": {
                "output_dir": str(workdir / name),
                "seed": sft.run.seed,
                "eval_at_end": False,
                "existing": sft.run.existing,
            }
        }

    opa = from_dict(OPADPOConfig, apply_overrides({**common, **run("opa_dpo")}, groups["opa_dpo"]))
    offpolicy = from_dict(
        OPADPOConfig, apply_overrides({**common, **run("dpo_offpolicy"), "baseline": "offpolicy"}, groups["opa_dpo"])
    )
    return data_cfg, opa, offpolicy


def expected_table(path: Path, names: list[str]) -> str | None:
    """The committed bench figures (mean ± std over seeds) for the models of this run, as a table; None if absent.
    One seed's figures move from machine to machine: the spread over seeds says how far."""
    if not path.is_file():
        return None
    bench = json.loads(path.read_text())
    models = bench.get("models", {})
    rows = []
    for name in (n for n in names if n in models):
        cells = [name]
        for key, _ in EXPECTED_COLUMNS:
            m = models[name].get(key)
            cells.append("-" if m is None else f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}")
        rows.append(cells)
    if not rows:
        return None
    seeds = " ".join(str(s) for s in bench.get("seeds", []))
    where = bench.get("machine", {}).get("cpu", "another machine")
    head = f"\nexpected (mean ± std over seeds {seeds}, {path.relative_to(EXPECTED.parents[1])}, on {where}):"
    return head + "\n" + text_table(["checkpoint"] + [label for _, label in EXPECTED_COLUMNS], rows)


def run_alignment(workdir: Path, sft: SFTConfig, groups: dict[str, list[str]], timings: dict) -> dict[str, dict]:
    """OPA-DPO data → OPA step + OPA-DPO → off-policy DPO baseline; returns each model's eval."""
    data_cfg, opa_cfg, offpolicy_cfg = opa_demo_configs(workdir, sft, groups)
    t = time.time()
    how_many = "a caption per training image" if data_cfg.limit is None else f"{data_cfg.limit} captions"
    print(f"[4/6] OPA-DPO data: the base policy samples {how_many}, the oracle corrects them")
    data = start_build(data_cfg, sft.run.existing, tag="opa_data") or build_opa_data(data_cfg)
    print(f"      {data['rows_out']}/{data['rows_in']} rows kept, sentence scores {data['corrected_sentences']}")
    timings["opa_data"] = round(time.time() - t, 1)
    t = time.time()
    print(f"[5/6] OPA step ({opa_cfg.opa.steps} steps), then OPA-DPO ({opa_cfg.optim.max_steps} steps)")
    opa = opa_dpo_recipe.main(opa_cfg)
    timings["opa_dpo"] = round(time.time() - t, 1)
    t = time.time()
    print(f"[6/6] off-policy DPO baseline ({offpolicy_cfg.optim.max_steps} steps) and the evals")
    offpolicy = opa_dpo_recipe.main(offpolicy_cfg)
    checkpoints = {"OPA step": opa["start"], "OPA-DPO": opa["final"], "off-policy DPO": offpolicy["final"]}
    results = {name: evaluate_checkpoint(path, sft.eval, data_cfg=sft.data) for name, path in checkpoints.items()}
    timings["baseline_and_evals"] = round(time.time() - t, 1)
    return results


def first_run_seconds(report_path: Path) -> dict | None:
    """The stage seconds of the run that first wrote `report_path` (None without a readable report)."""
    try:
        meta = json.loads(report_path.read_text())["meta"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta.get("stages_seconds_first_run") or meta.get("stages_seconds")


def write_reports(workdir: Path, results: dict, compared: dict, timings: dict, cfg, first_run: dict | None) -> dict:
    """report.json (the base policy's eval, stage seconds, the SFT config) and comparison.json (every model's eval)."""
    report = {k: v for k, v in results.items() if k != "meta"}
    report["meta"] = {**results["meta"], "stages_seconds": timings, "sft_config": dataclasses.asdict(cfg)}
    if first_run:  # a rerun's stages are mostly "already finished": keep what producing them took
        report["meta"]["stages_seconds_first_run"] = first_run
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    (workdir / "comparison.json").write_text(json.dumps(compared, indent=2))
    return report


def run_demo(
    workdir: str | Path = "runs/demo",
    seed: int = 0,
    overrides: list[str] | None = None,
    base_only: bool = False,
    mode: str = "auto",
) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    groups = split_overrides(overrides)
    cfg = demo_config(workdir, seed, groups["sft"])
    existing = mode if mode != "auto" else cfg.run.existing  # a run.existing override stands unless a flag is given
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, eval_at_end=False, existing=existing))
    n = 3 if base_only else 6
    timings = {}
    first_run = first_run_seconds(workdir / "report.json") if existing != "overwrite" else None

    t = time.time()
    print(f"[1/{n}] building ToyWorld (cached after the first run)")
    data = build_toyworld(cfg.data.world, cfg.data.cache_dir)
    for split, s in summarize(data).items():
        print(
            f"      {split:5s} {s['images']:5d} images, {s['objects_per_image']:.2f} objects/image, "
            f"{100 * s['faint_images']:.0f}% with a faint object, "
            f"{100 * s['injected_captions']:.0f}% captions name an absent object"
        )
    timings["build_data"] = round(time.time() - t, 1)

    t = time.time()
    print(f"[2/{n}] SFT of the base policy: {cfg.optim.max_steps} steps, batch {cfg.optim.batch_size}")
    summary = sft_recipe.main(cfg)
    timings["sft"] = round(time.time() - t, 1)

    t = time.time()
    print(f"[3/{n}] hallucination eval of the base policy on the ToyWorld test split")
    results = evaluate_checkpoint(summary["final"], cfg.eval)
    timings["eval"] = round(time.time() - t, 1)

    compared = {"base (SFT)": results}
    if not base_only:
        compared.update(run_alignment(workdir, cfg, groups, timings))
    report = write_reports(workdir, results, compared, timings, cfg, first_run)
    print()
    print(format_table(compared))
    # the committed figures are for the default settings: with overrides they would mislead
    expected = None if overrides else expected_table(EXPECTED / "demo.json", list(compared))
    if expected:
        print(expected)
    c = report["toyworld_chair"]
    print(
        f"\nbase policy's hallucinated mentions: {100 * c['prior_share']:.0f}% absent scene-typical objects; by "
        f"place, {100 * c['substitution_share']:.0f}% misnamed present objects (said at an occupied cell) and "
        f"{100 * c['addition_share']:.0f}% added (an empty cell or none)"
    )
    print(f"wrote {workdir / 'report.json'} and comparison.json  ({sum(timings.values()):.0f}s: {timings})")
    return report
