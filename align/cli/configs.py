"""`align show`, `align configs` and `align train|build-data CONFIG --help`: what a config holds and which ship.

align show configs/toy/dpo.yaml optim.lr=3e-4       # every field: dotted name, type, value, default, help
align show configs/toy/dpo.yaml --changed           # only the fields the YAML and overrides set off their default
align train configs/toy/dpo.yaml --help             # the subcommand's usage, then the same field listing
align configs                                       # every YAML under configs/: recipe, command, description

Torch-free: each reads YAML and the config dataclasses only (tests/test_architecture.py checks it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from align.config.describe import config_summary, render_fields
from align.config.loading import ConfigError
from align.config.registry import RECIPES, load_config

HELP_FLAGS = ("-h", "--help")
CONFIG_COMMANDS = ("train", "build-data")


def add_config_parsers(sub) -> None:
    p = sub.add_parser("show", help="list a config's fields: dotted name, type, current value, default, help")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
    p.add_argument("--changed", action="store_true", help="only the fields whose value differs from the default")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("configs", help="list the shipped configs (default: every YAML under configs/)")
    p.add_argument("paths", nargs="*", help="files or directories")
    p.set_defaults(func=cmd_configs)


def describe_config(path: str, overrides: list[str], changed_only: bool = False) -> str:
    """The heading (class, recipe, the command that runs it) and the field listing of one config file."""
    cfg = load_config(path, overrides)
    recipe = RECIPES[cfg.recipe]
    note = "only the fields off their default" if changed_only else "every field"
    heading = (
        f"{path}: {type(cfg).__name__} (recipe {cfg.recipe}, run with `align {recipe.command} {path}`)\n"
        f"{note} as NAME: TYPE = VALUE (default ...); set any with a NAME=VALUE override after the file\n"
    )
    listing = render_fields(type(cfg), cfg, changed_only=changed_only)
    return heading + "\n" + (listing or "(every field has its default value)")


def cmd_show(args) -> int:
    print(describe_config(args.config, args.overrides, args.changed))
    return 0


def wants_config_help(argv: list[str]) -> bool:
    """`align train|build-data CONFIG [overrides] --help`: a help request that names a config file."""
    return bool(argv) and argv[0] in CONFIG_COMMANDS and any(a in HELP_FLAGS for a in argv) and _positionals(argv)


def _positionals(argv: list[str]) -> list[str]:
    return [a for a in argv[1:] if not a.startswith("-")]


def config_help(argv: list[str], parser: argparse.ArgumentParser) -> int:
    """Print the subcommand's usage, then every field of the config it names (after its overrides)."""
    config, *overrides = _positionals(argv)
    fields = describe_config(config, overrides)  # first: a bad file or override is one error line, no usage
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    print(subparsers.choices[argv[0]].format_help())
    print(fields)
    return 0


def config_files(paths) -> list[Path]:
    """The YAML files named or under the folders named, less accelerate's own (configs/accelerate/: `accelerate
    launch --config_file`, checked by accelerate)."""
    files = []
    for p in paths:
        path = Path(p)
        found = sorted(path.rglob("*.yaml")) if path.is_dir() else [path]
        files += [f for f in found if not (path.is_dir() and "accelerate" in f.relative_to(path).parts[:-1])]
    return files


def cmd_configs(args) -> int:
    files = config_files(args.paths or [_default_configs_dir()])
    if not files:
        raise ConfigError(f"no YAML files under {', '.join(map(str, args.paths or ['configs']))}")
    rows = [config_summary(f) for f in files]
    width = max(len(r["path"]) for r in rows)
    recipe_width = max(len(r["recipe"]) for r in rows)
    for r in rows:
        print(f"{r['path']:<{width}}  {r['recipe']:<{recipe_width}}  {r['command']}")
        if r["description"]:
            print(f"    {r['description']}")
    print(f"{len(rows)} configs; `align show FILE` lists one's fields, `align validate` checks them all")
    return 0


def _default_configs_dir() -> str:
    """configs/ here, else the one beside the installed source tree (an editable install from anywhere)."""
    if Path("configs").is_dir():
        return "configs"
    beside = Path(__file__).resolve().parents[2] / "configs"
    return str(beside) if beside.is_dir() else "configs"
