"""The `align` command: demo, build-data, train, eval, validate, show, configs.

align demo                                          # ToyWorld → SFT base → eval, under runs/demo
align build-data configs/toy/toyworld.yaml
align train configs/toy/sft_base.yaml optim.lr=3e-4
align eval runs/demo/sft_base                       # every checkpoint of a run, or one checkpoint dir
align eval score --benchmark pope --outputs answers.jsonl --split adversarial --data POPE/output/coco
                                                    # score a benchmark's outputs that already exist
align eval score --benchmark mmhal --outputs answers.json --data MMHal --judge-model gpt-4o
align validate                                      # every YAML under configs/
align configs                                       # the shipped configs: recipe, command, description
align show configs/toy/dpo.yaml optim.lr=1e-5       # a config's fields: type, value, default, help
align train configs/toy/dpo.yaml --help             # the same, after the subcommand's usage
"""

from __future__ import annotations

import argparse
import os
import sys

from align.cli.configs import add_config_parsers, config_help, wants_config_help
from align.cli.eval import add_eval_parser, build_score_parser
from align.cli.run import add_existing_flags, cmd_demo, cmd_run, cmd_validate
from align.config.loading import ConfigError
from align.core import console
from data_builders.endpoint import EndpointFatalError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="everything on the console: Trainer's bars and dicts, every library warning and progress bar (also "
        "ALIGN_VERBOSE=1; accepted after the subcommand too). The run directory's log has it all either way",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the embedded ToyWorld default end to end")
    p.add_argument("--workdir", default="runs/demo", help="where everything is written (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="world and training seed")
    p.add_argument("--base-only", action="store_true", help="stop after the base policy's eval (no OPA-DPO stages)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides of the SFT config (optim.max_steps=300), or of a stage: opa_data.limit=200, "
        "opa_dpo.optim.max_steps=50",
    )
    add_existing_flags(p, "every stage")
    p.set_defaults(func=cmd_demo)

    for name, helptext in (("build-data", "build a dataset from a config"), ("train", "run a training recipe")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("config", help="YAML config file")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
        p.add_argument(
            "--allow-failures",
            action="store_true",
            help="exit 0 even when some items failed (expert, labeler): the finished ones are kept either way",
        )
        add_existing_flags(p, "the build" if name == "build-data" else "the run")
        p.set_defaults(func=lambda a, c=name: cmd_run(a, c))

    add_eval_parser(sub)
    add_config_parsers(sub)

    p = sub.add_parser("validate", help="check config files (default: every YAML under configs/)")
    p.add_argument("paths", nargs="*", help="files or directories")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = True if "--verbose" in argv else None  # anywhere: `align --verbose demo` and `align demo --verbose`
    argv = [a for a in argv if a != "--verbose"]
    if wants_config_help(argv):  # `align train CONFIG --help`: also every field of CONFIG (align/cli/configs.py)
        args = argparse.Namespace(command="help", func=lambda _: config_help(argv, build_parser()))
    elif argv[:2] == ["eval", "score"]:  # a subcommand of eval, whose own positionals are checkpoint paths
        args = build_score_parser().parse_args(argv[2:])
    else:
        args = build_parser().parse_args(argv)  # errors print one line; ALIGN_DEBUG=1 shows the traceback
    libraries = getattr(args, "command", None) not in ("validate", "show", "configs", "help")  # no ML library
    if libraries:  # one process of several (`accelerate launch -m align ...`): the main one speaks for all
        from align.core.distributed import quiet_other_processes, warn_unsharded_launch

        quiet_other_processes()
        warn_unsharded_launch()
    try:
        with console.session(verbose=verbose, libraries=libraries):  # the short console (align/core/console.py)
            try:
                return args.func(args)
            except (ConfigError, FileNotFoundError, ValueError, EndpointFatalError) as e:
                if os.environ.get("ALIGN_DEBUG"):
                    raise
                print(f"error: {e}", file=sys.stderr)
                return 2
    except BrokenPipeError:  # `align show ... | head`: the reader left; stop quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush cannot fail again
        return 141
