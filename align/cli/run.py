"""`align build-data`, `align train`, `align demo` and `align validate`: configs in, a recipe run, an exit status."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from align.cli.configs import config_files
from align.config.loading import ConfigError
from align.config.loggers import check_logger_packages
from align.config.registry import RECIPES, load_config
from align.core import console
from align.core.console import BUILD_LOG, DEMO_LOG, TRAIN_LOG
from align.core.run_dir import start_build, with_mode
from data_builders.summary import build_failures


def cmd_validate(args) -> int:
    files = config_files(args.paths or ["configs"])
    if not files:
        raise ConfigError(f"no YAML files under {', '.join(args.paths or ['configs'])}")
    for f in files:
        first = f.read_text().splitlines()[:1]
        if not first or not first[0].startswith("# align "):
            raise ConfigError(
                f"{f}: first line must be a comment with the command that runs it, e.g. '# align train {f}'"
            )
        load_config(f)
        print(f"ok  {f}")
    print(f"{len(files)} config files valid")
    return 0


def run_recipe(cfg):
    """Import the recipe's entry point only now: checking a config never loads torch."""
    module, func = RECIPES[cfg.recipe].entry.split(":")
    with console.session(run_log(cfg), title=f"align {RECIPES[cfg.recipe].command} ({cfg.recipe})"):
        return getattr(importlib.import_module(module), func)(cfg)


def run_log(cfg) -> Path | None:
    """Where a run's full log goes: a training run, `run.output_dir/train.log`; a build, `output_dir/build.log`
    (a build without an output directory, ToyWorld's cache: none)."""
    run = getattr(cfg, "run", None)
    out = run.output_dir if run is not None else getattr(cfg, "output_dir", None)
    return Path(out) / (TRAIN_LOG if run is not None else BUILD_LOG) if out else None


def failure_status(failures: dict[str, int], allowed: bool, what: str) -> int:
    """The exit status of a run that may have failed items: 0 when none failed or the user allows partial
    results, else 1 with a line that says what failed and what to do."""
    if not failures:
        return 0
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(failures.items()))
    verdict = "--allow-failures: exit 0" if allowed else "rerun once the cause is fixed to retry them (exit 1)"
    print(f"{sum(failures.values())} {what} failed ({reasons}); the rest is kept; {verdict}", file=sys.stderr)
    return 0 if allowed else 1


def add_existing_flags(parser, what: str) -> None:
    """`--overwrite` / `--resume`: what to do with a run (or build) already in the output dir (align/core/run_dir.py).
    Without either, a run with the same config resumes or reports itself finished, and a changed one is refused."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--overwrite",
        action="store_true",
        help=f"start {what} afresh: delete the old checkpoints, final/ and summaries first",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help=f"continue {what} from its last checkpoint under this config even if it changed (e.g. more steps)",
    )


def existing_mode(args) -> str:
    return "overwrite" if getattr(args, "overwrite", False) else "resume" if getattr(args, "resume", False) else "auto"


def cmd_run(args, command: str) -> int:
    cfg = load_config(args.config, args.overrides)
    if RECIPES[cfg.recipe].command != command:
        raise ConfigError(
            f"{args.config}: recipe {cfg.recipe!r} runs with `align {RECIPES[cfg.recipe].command}`, "
            f"not `align {command}`"
        )
    check_logger_packages(cfg)  # one line now, not a RuntimeError once the model has loaded
    mode = existing_mode(args)
    if mode != "auto":  # into every run section (else run.existing as configured): recipes act on it
        cfg = with_mode(cfg, mode)
    finished = start_build(cfg, mode) if command == "build-data" else None
    result = finished if finished is not None else run_recipe(cfg)
    if command == "build-data":
        print(json.dumps(result, indent=2))
        return failure_status(build_failures(result), args.allow_failures, "items")
    elif isinstance(result, dict) and "eval" in result:
        from align.eval.runner import format_table

        print(format_table({result["final"]: result["eval"]}))
    return 0


@console.logged(lambda args: Path(args.workdir) / DEMO_LOG, title="align demo")
def cmd_demo(args) -> int:
    from align.demo import run_demo

    run_demo(
        args.workdir, seed=args.seed, overrides=args.overrides, base_only=args.base_only, mode=existing_mode(args)
    )
    return 0
