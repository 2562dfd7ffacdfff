"""`run.report_to`: the trainer loggers a config may name, and whether their packages are installed. Torch-free.

    parse_report_to("tensorboard, wandb")   # -> ["tensorboard", "wandb"]; "none" -> []
    check_logger_packages(cfg)              # before a run: one ConfigError line per missing package

Names are checked when a config is built (RunConfig.__post_init__), so `align validate` rejects a typo. Packages are
checked only before a run (align/cli/run.py), not by `align validate`: a config for a GPU machine that has wandb
stays valid on a laptop that has not. Without this, transformers raises a RuntimeError traceback when the Trainer
is built, after the model has loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
from importlib.util import find_spec
from typing import Any

from align.config.loading import ConfigError

# logger -> (import names, any one of which is enough; the pyproject extra that installs it)
LOGGERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
}
DISTRIBUTION = "align-vlm"  # pyproject.toml [project] name, for the `pip install 'align-vlm[extra]'` hint


def parse_report_to(value: str) -> list[str]:
    """The loggers `value` names ("none", one name, or a comma list); ValueError naming the choices."""
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    if names == ["none"]:
        return []
    choices = f"none, {', '.join(LOGGERS)} or a comma list of them (tensorboard,wandb)"
    if not names or "none" in names:
        raise ValueError(f"report_to: {value!r}: use {choices}")
    for name in names:
        if name not in LOGGERS:
            close = difflib.get_close_matches(name, list(LOGGERS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"report_to: unknown logger {name!r}; use {choices}{hint}")
    return list(dict.fromkeys(names))


def normalize_report_to(value: str) -> str:
    """`value` checked and written the way training_arguments splits it: "none" or "a,b" without spaces."""
    return ",".join(parse_report_to(value)) or "none"


def missing_logger_packages(value: str, key: str = "run.report_to") -> list[str]:
    """One message per logger in `value` whose package is not importable here (importlib only: nothing imported)."""
    out = []
    for name in parse_report_to(value):
        modules, extra = LOGGERS[name]
        if not any(find_spec(m) is not None for m in modules):
            out.append(f"{key}={name} needs the {modules[0]} package: pip install '{DISTRIBUTION}[{extra}]'")
    return out


def check_logger_packages(cfg: Any, prefix: str = "") -> None:
    """Raise ConfigError when any `report_to` in the config tree names a logger whose package is missing."""
    missing = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "report_to" and isinstance(value, str):
            missing += missing_logger_packages(value, f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            try:
                check_logger_packages(value, f"{prefix}{f.name}.")
            except ConfigError as e:
                missing.append(str(e))
    if missing:
        raise ConfigError("; ".join(missing))
