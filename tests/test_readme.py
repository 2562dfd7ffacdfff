"""The README's commands as the code accepts them: every `align` command in a fenced block parses with the
subcommand's own parser, and the configs and overrides it names load (the README drifts from the code otherwise)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from align.cli import build_parser
from align.cli.eval import build_score_parser
from align.config.registry import RECIPES, load_config

REPO = Path(__file__).resolve().parents[1]
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
ALIGN_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*=\S*\s+)*align\s")


def fenced_commands(markdown: str) -> list[str]:
    """Shell lines of the fenced blocks that run `align`, continuation lines joined, `$ ` prompts dropped."""
    commands = []
    for body in re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.S | re.M):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if ALIGN_LINE.match(line):
                commands.append(line)
    return commands


def argv_of(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    while ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words[1:]


def parse(argv: list[str]):
    if argv[:2] == ["eval", "score"]:
        return build_score_parser().parse_args(argv[2:])
    return build_parser().parse_args(argv)


COMMANDS = fenced_commands((REPO / "README.md").read_text())


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 20
    assert fenced_commands("```bash\nFOO=1 align train a.yaml \\\n  x=1   # note\nmake test\n```\n") == [
        "FOO=1 align train a.yaml    x=1   # note"
    ]


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command, monkeypatch):
    monkeypatch.chdir(REPO)  # config paths in the README are relative to the checkout
    argv = [a for a in argv_of(command) if a not in ("--help", "-h")]  # `align train CONFIG --help`: CONFIG loads
    try:
        args = parse(argv)
    except SystemExit as e:  # argparse prints its own one-line reason to stderr
        pytest.fail(f"`{command}` does not parse (exit {e.code})")
    command_name = getattr(args, "command", "eval score")
    if command_name in ("train", "build-data"):
        cfg = load_config(args.config, args.overrides)
        assert RECIPES[cfg.recipe].command == args.command, f"{args.config} runs with another subcommand"
    if command_name == "demo" and args.overrides:
        from align.demo import demo_config, split_overrides

        demo_config("runs/demo", overrides=split_overrides(args.overrides)["sft"])
