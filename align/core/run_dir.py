"""What a training run's output_dir holds, and what this invocation does with it (torch-free, no Trainer):

    fresh     nothing trained there yet (or `--overwrite`): train from scratch
    resume    a run with this config that stopped before its end: continue from its last checkpoint (or `--resume`:
              continue under a changed config, e.g. a larger optim.max_steps)
    finished  a run with this config saved final/ and train_summary.json: train nothing, rewrite nothing

`run.existing` (the CLI's `--resume` / `--overwrite`) picks the mode; in the default `auto` a saved config
(`align_config.yaml`, written when the run began) that differs from this one is refused with the differing keys,
so a command never trains on top of a different run. `config_diff` is the comparison; `run_state` the decision;
`clear_run` what `--overwrite` deletes. align/core/trainer.py (`start_run`, `train_and_save`) acts on them.
`start_build` is the same for `align build-data` output dirs (a finished build is reported, a changed one refused).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from align.config.loading import ConfigError, to_dict
from align.config.sections import RunConfig
from data_builders.summary import build_failures

MODES = ("auto", "resume", "overwrite")
FRESH, RESUME, FINISHED = "fresh", "resume", "finished"
CONFIG_FILE = "align_config.yaml"
SUMMARY_FILE = "train_summary.json"
ADAPTER_DIR = "adapter"  # a merged LoRA run's adapter, kept beside final/ where a recipe asks (RLAIF-V's rounds)
SWITCH_CONFIG = "switch_config.json"  # a HallE switch saved beside the base it names (align/core/switch.py)
MODEL_MARKERS = ("config.json", "adapter_config.json", SWITCH_CONFIG)  # a folder holding one of these is a model
CHECKPOINT = re.compile(r"checkpoint-(\d+)")

# Keys (matched by their last dotted part, at any depth) that are not part of what a run computes, so changing one
# is not a changed run: the mode of this invocation (`existing`), where the run and the ToyWorld cache live (a run
# dir moved elsewhere, or a cache on another disk, holds the same run: ToyWorld is rebuilt bit for bit from its
# seed), where logs are sent, how many checkpoints are kept on disk, and how many endpoint requests a build keeps
# in flight. Everything else counts, logging_steps and
# save_steps included: they change the stored loss history and which checkpoints (and checkpoint evals) exist.
UNCOMPARED = ("existing", "output_dir", "cache_dir", "report_to", "save_total_limit", "concurrency")
# Keys added after runs were saved, with the value a run saved without them ran under (their default, which keeps
# the old behaviour), so that a run made by an earlier version is not refused as changed for lacking them.
ADDED_KEYS = {"packing": False, "precompute_ref_logps": False}
_UNSET = object()


@dataclasses.dataclass(frozen=True)
class RunState:
    state: str  # FRESH, RESUME or FINISHED
    last: Path | None = None  # the checkpoint to resume from
    changes: tuple[str, ...] = ()  # the config changes a `--resume` accepted


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: leaf value}; lists are leaves (a list of sections compares as one value)."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """The keys whose values differ, as `optim.max_steps: 100 -> 3` (`(unset)` for a key one side lacks), sorted;
    the UNCOMPARED keys are left out."""
    a, b = flatten(old), flatten(new)
    for key in set(b) - set(a):
        if key.rsplit(".", 1)[-1] in ADDED_KEYS:
            a[key] = ADDED_KEYS[key.rsplit(".", 1)[-1]]
    keys = sorted(k for k in set(a) | set(b) if k.rsplit(".", 1)[-1] not in UNCOMPARED)
    return [f"{k}: {_show(a, k)} -> {_show(b, k)}" for k in keys if a.get(k, _UNSET) != b.get(k, _UNSET)]


def _show(values: dict, key: str) -> str:
    if key not in values:
        return "(unset)"
    value = values[key]
    return value if isinstance(value, str) else json.dumps(value)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's checkpoint-N directories, by step."""
    out = Path(output_dir)
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step that holds a trainer state (a kill mid-save leaves one without)."""
    done = [p for p in checkpoints(output_dir) if (p / "trainer_state.json").is_file()]
    return done[-1] if done else None


def has_model(path: Path) -> bool:
    return any((path / name).is_file() for name in MODEL_MARKERS)


def read_config(path: Path) -> dict | None:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else None


def save_run_config(config: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def run_state(output_dir: str | Path, config: dict, mode: str = "auto") -> RunState:
    """Fresh, resume (from which checkpoint) or finished, for `config` (the run's config as a dict) on
    `output_dir` in `mode` (MODES). Raises ConfigError in `auto` when the directory holds a run of another config."""
    if mode not in MODES:
        raise ConfigError(f"run.existing: {mode!r} is not one of {', '.join(MODES)}")
    out = Path(output_dir)
    if mode == "overwrite":
        return RunState(FRESH)
    last = last_checkpoint(out)
    if last is None and not (out / "final").exists() and not (out / SUMMARY_FILE).is_file():
        return RunState(FRESH)
    changes = saved_config_changes(out, config, mode)
    if not changes and (out / SUMMARY_FILE).is_file() and has_model(out / "final"):
        return RunState(FINISHED)
    return RunState(RESUME, last, tuple(changes))


def saved_config_changes(out: Path, config: dict, mode: str, missing_ok: bool = False, build=False) -> list[str]:
    """How `config` differs from the one saved in `out` (a missing one is a change unless `missing_ok`); in `auto`
    mode any change raises ConfigError naming the keys and the two ways on."""
    saved = read_config(out / CONFIG_FILE)
    if saved is None:
        changes = [] if missing_ok else [f"{CONFIG_FILE}: (missing) -> this config"]
    else:
        changes = config_diff(saved, config)
    if changes and mode == "auto":
        raise ConfigError(refusal(out, changes, build))
    return changes


def refusal(out: Path, changes: list[str], build: bool = False) -> str:
    fresh = "the build's files but its reply caches" if build else "its checkpoints, final/ and summaries"
    how = "resume the build" if build else "continue it from its last checkpoint"
    return (
        f"{out} holds a {'build' if build else 'run'} with another config ({'; '.join(changes)}): pass --overwrite "
        f"to start afresh ({fresh} are deleted first), or --resume to {how} under this config"
        + ("" if build else " (e.g. a larger optim.max_steps)")
    )


def clear_run(output_dir: str | Path) -> list[str]:
    """Delete what a run wrote to `output_dir` (checkpoints, final/, eval/, summary, saved config); other files, and
    sub-runs (OPA-DPO's opa/, which its own start clears), are kept. Returns the names removed."""
    out = Path(output_dir)
    removed = []
    for path in [
        *checkpoints(out),
        out / "final",
        out / ADAPTER_DIR,
        out / "eval",
        out / SUMMARY_FILE,
        out / CONFIG_FILE,
    ]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed


def with_mode(cfg, mode: str):
    """`cfg` with `existing = mode` in every RunConfig it holds (a recipe's `run`, RLAIF-V's `train.run`)."""
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, RunConfig):
            changes[f.name] = dataclasses.replace(value, existing=mode)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes[f.name] = with_mode(value, mode)
    return dataclasses.replace(cfg, **changes) if changes else cfg


def start_build(cfg, mode: str = "auto", tag: str = "build") -> dict | None:
    """The start of an `align build-data` build into `cfg.output_dir` (a config without one, ToyWorld's, is cached
    by content and always runs): a build finished with this config (summary.json with no failed item, dataset
    saved) returns its stored summary and rewrites nothing; `overwrite` first deletes what the build wrote except
    the content-addressed reply caches (`*_cache/`); `auto` refuses a changed config. Otherwise builds resume by
    design (rollouts.jsonl, reply caches), and the config is saved as align_config.yaml. A build dir from before
    configs were saved there counts as matching."""
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if not isinstance(getattr(cfg, "output_dir", None), str):
        return None
    out, config = Path(cfg.output_dir), to_dict(cfg)
    summary = out / "summary.json"
    if mode == "overwrite" and out.is_dir():
        removed = [p.name for p in sorted(out.iterdir()) if not p.name.endswith("_cache")]
        for name in removed:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
        if removed:
            print(f"[{tag}] --overwrite: removed {', '.join(removed)} from {out}")
    elif out.is_dir():
        changes = saved_config_changes(out, config, mode, missing_ok=True, build=True)
        built = summary.is_file() and (out / "dataset" / "dataset_info.json").is_file()
        if not changes and built and not build_failures(stored := json.loads(summary.read_text())):
            print(f"[{tag}] already finished: {out / 'dataset'} (pass --overwrite to build again)")
            return stored
        if changes:
            print(f"[{tag}] --resume under a changed config: {'; '.join(changes)}")
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(config, out / CONFIG_FILE)
    return None


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin")


def files_fingerprint(folder: Path, patterns) -> dict[str, list[int]]:
    """{file: [size, mtime_ns]} of the files in `folder` matching any of `patterns`: cheap (no hashing of many GB)
    and changed by any re-save, so cached results are tied to the files that produced them."""
    files = sorted({p for pattern in patterns for p in Path(folder).glob(pattern) if p.is_file()})
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def weights_fingerprint(checkpoint: Path) -> dict[str, list[int]]:
    """`files_fingerprint` of a checkpoint's weight files (single, sharded or adapter)."""
    return files_fingerprint(checkpoint, WEIGHT_FILES)
