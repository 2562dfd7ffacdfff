"""`align eval` (checkpoints or run directories) and `align eval score` (outputs that already exist)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from align.cli.run import failure_status
from align.config.loading import from_dict
from align.config.sections import BenchmarkSource, EvalConfig, GenerationConfig
from data_builders.endpoint import JudgeConfig


def cmd_eval(args) -> int:
    from align.eval.runner import evaluate_checkpoint, format_table, resolve_checkpoints  # loads torch: not at the top
    from rewards.evaluate import is_reward_model

    if any(is_reward_model(p) for p in args.paths):
        return _eval_reward_models(args)
    if args.pairs or args.score:
        raise ValueError("--pairs and --score evaluate a reward model (a folder with reward_config.json)")
    sources = [_source(spec) for spec in args.source or []]
    benchmarks = args.benchmarks.split(",") if args.benchmarks else ["toyworld"] if not sources else []
    benchmarks += [s.name for s in sources if s.name not in benchmarks]
    eval_cfg = EvalConfig(
        limit=args.limit,
        pope=not args.no_pope,
        generation=GenerationConfig(batch_size=args.batch_size),
        benchmarks=benchmarks,
        sources=sources,
        judge=_judge_config(args),
        switch=args.switch,
    )
    checkpoints = [c for p in args.paths for c in resolve_checkpoints(p)]
    results = {}
    for i, ckpt in enumerate(checkpoints, 1):
        print(f"[eval {i}/{len(checkpoints)}] {ckpt}", file=sys.stderr)
        results[str(ckpt)] = evaluate_checkpoint(ckpt, eval_cfg, force=args.force)
    print(format_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results if len(results) > 1 else next(iter(results.values())), indent=2))
        print(f"wrote {args.json}")
    plot = _eval_plot_path(args.plot, args.paths, len(checkpoints))
    if plot is not None:
        from align.eval.plots import metric_series, plot_metrics

        if args.plot or metric_series(results):  # the default plot is skipped when no checkpoint has a step
            plot_metrics(results, plot)
            print(f"wrote {plot}")
    return 0


def _eval_reward_models(args) -> int:
    """`align eval RM... --pairs DATASET` (pair accuracy) and/or `--score ROWS.jsonl` (a reward per row)."""
    from rewards.evaluate import is_reward_model, pair_accuracy, score_file

    policies = [p for p in args.paths if not is_reward_model(p)]
    if policies or not (args.pairs or args.score):
        raise ValueError("a reward model is evaluated with --pairs DATASET and/or --score ROWS.jsonl, apart from "
                         f"policies{': ' + ', '.join(policies) if policies else ''}")  # fmt: skip
    results = {}
    for path in args.paths:
        if args.pairs:
            r = pair_accuracy(path, args.pairs, args.limit, other_facts=args.other_facts)
            results.setdefault(path, {})["pairs"] = r
            skipped = f"; skipped {r['skipped']}" if r["skipped"] else ""
            facts = " (each read with another pair's facts)" if args.other_facts else ""
            print(f"{path}: pair accuracy {100 * r['pair_accuracy']:.1f}%{facts} on {r['scored']} pairs, mean margin "
                  f"{r['mean_margin']:.3f}{skipped}")  # fmt: skip
        if args.score:
            out, r = score_file(path, args.score)
            results.setdefault(path, {})["score"] = {**r, "file": str(out)}
            print(f"{path}: {r['scored']} rows scored (mean reward {r['mean_reward']:.3f}), {r['errors']} bad; {out}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _source(spec: list[str]):
    """`--source NAME data=PATH images=DIR [split=S] [limit=N] [max_new_tokens=N]` → a BenchmarkSource."""
    name, *pairs = spec
    fields = {"name": name}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--source {name}: {pair!r} is not KEY=VALUE (data=PATH images=DIR split=S limit=N)")
        fields[key] = int(value) if key in ("limit", "max_new_tokens") and value.isdigit() else value
    missing = [k for k in ("data", "images") if k not in fields]
    if missing:
        raise ValueError(f"--source {name}: give {' and '.join(k + '=...' for k in missing)}")
    return from_dict(BenchmarkSource, fields, prefix=f"--source {name}: ")


def _judge_config(args):
    """JudgeConfig from the --judge-* flags, or None without --judge-model (the key stays in the environment)."""
    if not args.judge_model:
        return None
    key_env = None if args.judge_api_key_env.lower() == "none" else args.judge_api_key_env
    return JudgeConfig(
        model=args.judge_model,
        base_url=args.judge_base_url,
        api_key_env=key_env,
        cache_dir=args.judge_cache,
        concurrency=args.judge_concurrency,
        timeout=args.judge_timeout,
        max_retries=args.judge_retries,
    )


def _add_judge_flags(p: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    j = p.add_argument_group(title)
    j.add_argument("--judge-model", metavar="M", help="judge model, e.g. gpt-4o (needed by judge-scored benchmarks)")
    j.add_argument(
        "--judge-base-url", metavar="URL", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (vLLM)"
    )
    j.add_argument(
        "--judge-api-key-env",
        default="OPENAI_API_KEY",
        metavar="VAR",
        help="environment variable holding the judge's API key (default OPENAI_API_KEY; 'none': no key)",
    )
    j.add_argument(
        "--judge-cache", metavar="DIR", help="reply cache (default $ALIGN_CACHE/judge, ~/.cache/align/judge)"
    )
    j.add_argument("--judge-concurrency", type=int, default=4, metavar="N", help="judge requests in flight")
    j.add_argument("--judge-timeout", type=float, default=120.0, metavar="S", help="seconds per HTTP attempt")
    j.add_argument("--judge-retries", type=int, default=5, metavar="N", help="client retries on errors, 429, 5xx")
    return j


def _eval_plot_path(plot: str | None, paths: list[str], n_checkpoints: int) -> Path | None:
    """--plot, else `<first run dir>/eval/metrics.png` when a run directory is among the paths and >= 2 checkpoints
    were scored (one point is no curve), else no plot."""
    from align.eval.runner import is_checkpoint

    if plot:
        return Path(plot)
    run_dirs = [Path(p) for p in paths if not is_checkpoint(Path(p))]
    return run_dirs[0] / "eval" / "metrics.png" if run_dirs and n_checkpoints >= 2 else None


def _benchmark_data(name: str) -> Path:
    root = os.environ.get("ALIGN_BENCHMARKS")
    if not root:
        raise ValueError(f"no --data given and ALIGN_BENCHMARKS is not set: pass --data with the {name} files")
    return Path(root) / name


def _score_paths(outputs: Path, bench: str, split: str | None, json_out: str | None) -> tuple[Path, Path]:
    """Metrics JSON and per-sample JSONL: beside the outputs unless --json says where; the split is in the name
    so that scoring the splits one by one does not overwrite."""
    scores = Path(json_out) if json_out else Path(f"{outputs}.{bench}{'-' + split if split else ''}.scores.json")
    stem = scores.name.removesuffix(".json").removesuffix(".scores")
    return scores, scores.with_name(stem + ".samples.jsonl")


def _judge(bench, args):
    """(benchmark, judge) for `align eval score`: an LLM judge only for judge-scored benchmarks (mmhal) given
    --judge-model (without one, score_outputs says which flags to pass); --judge-prompt swaps in a user's
    judging prompt."""
    if not bench.needs_judge:
        if args.judge_model or args.judge_prompt:
            raise ValueError(f"{bench.name} is not judge-scored: drop the --judge-* flags")
        return bench, None
    if args.judge_prompt:
        bench = bench.judge_prompt(Path(args.judge_prompt).read_text())
    if not args.judge_model:
        return bench, None
    from align.eval.judge import Judge

    cfg = _judge_config(args)
    return bench, Judge(cfg)


def cmd_eval_score(args) -> int:
    from align.eval.benchmarks import format_metrics, get_benchmark, read_outputs, score_outputs

    bench, judge = _judge(get_benchmark(args.benchmark), args)
    data = Path(args.data) if args.data else _benchmark_data(bench.name)
    outputs = read_outputs(args.outputs, bench.output_ids)
    items = bench.load(data, args.split)
    scored = score_outputs(bench, items, outputs, allow_missing=args.allow_missing, judge=judge)
    c = scored.counts
    print(
        f"{bench.name}{' ' + args.split if args.split else ''}: {c['scored']} scored, {c['missing']} missing, "
        f"{c['unmatched_outputs']} outputs matching no item ({args.outputs})"
    )
    print(format_metrics(scored.metrics))
    if judge is not None:
        print(judge.summary())
    scores_path, samples_path = _score_paths(Path(args.outputs), bench.name, args.split, args.json)
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": bench.name,
        "split": args.split,
        "outputs": str(args.outputs),
        "data": str(data),
        "counts": c,
        "metrics": scored.metrics,
        "samples": str(samples_path),
    }
    if judge is not None:  # no key here: it stays in the environment
        report["judge"] = {"model": judge.cfg.model, "base_url": judge.cfg.base_url, "prompt": args.judge_prompt}
    scores_path.write_text(json.dumps(report, indent=2) + "\n")
    with samples_path.open("w") as f:
        for r in scored.records:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {scores_path} and {samples_path.name}")
    return failure_status(dict(judge.failures) if judge is not None else {}, args.allow_failures, "judged samples")


def build_score_parser() -> argparse.ArgumentParser:
    """`align eval score`: its own parser, because `align eval` takes checkpoint paths as positionals."""
    p = argparse.ArgumentParser(
        prog="align eval score",
        description="Score a benchmark's model outputs that already exist (no model is loaded).",
    )
    p.add_argument(
        "--benchmark",
        required=True,
        metavar="NAME",
        help="benchmark name: pope, amber, chair, objhal, objhal_llm, mmhal, cceval",
    )
    p.add_argument(
        "--outputs",
        required=True,
        metavar="FILE",
        help="model outputs: JSONL (or a JSON array) of {question_id, text}, {question_id, answer}, "
        "{image_id, caption}, {image_id, text} or {id, response}",
    )
    p.add_argument(
        "--split",
        metavar="S",
        help="pope: adversarial, popular or random (needed when ids are bare question ids and several split "
        "files are present); amber: generative, all (descriptions + questions, with the AMBER score), "
        "existence, attribute or relation (default: all discriminative); chair: opera500 (OPERA's 500 images; "
        "default: the images the outputs name)",
    )
    p.add_argument("--data", metavar="PATH", help="benchmark files (default: $ALIGN_BENCHMARKS/<benchmark>)")
    p.add_argument(
        "--json", metavar="OUT", help="metrics JSON path (default: <outputs>.<benchmark>[-<split>].scores.json)"
    )
    p.add_argument("--allow-missing", action="store_true", help="score the answered items only, counting the rest")
    p.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit 0 even when judge requests failed (the failed samples are left out and asked again on a rerun)",
    )
    j = _add_judge_flags(p, "LLM judge (mmhal, objhal_llm, cceval)")
    j.add_argument(
        "--judge-prompt",
        metavar="FILE",
        help="the judge's prompt as a template, e.g. the official one for numbers comparable to papers (default: "
        "the project's own): mmhal with {image_contents} {question} {gt_answer} {response}; objhal_llm with "
        "{question} {answer}",
    )
    p.set_defaults(func=cmd_eval_score)
    return p


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="hallucination eval of checkpoints or run directories; `align eval score` scores existing outputs",
        epilog="align eval score --benchmark NAME --outputs FILE ...: score outputs already written "
        "(see align eval score -h)",
    )
    p.add_argument(
        "paths", nargs="+", help="checkpoint dirs or run dirs (every checkpoint-*/ and final/), or reward models"
    )
    p.add_argument("--pairs", metavar="DATASET", help="reward models: pair accuracy on this preference dataset")
    p.add_argument(
        "--other-facts",
        action="store_true",
        help="with --pairs: read each pair with another pair's facts (how much does the model read its facts?)",
    )
    p.add_argument(
        "--score", metavar="ROWS.jsonl", help="reward models: score {image, prompt, response[, facts]} rows"
    )
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--limit", type=int, help="evaluate on the first N test images")
    p.add_argument("--no-pope", action="store_true", help="skip the POPE questions")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per generate call")
    p.add_argument("--force", action="store_true", help="re-score checkpoints that already have results")
    p.add_argument(
        "--switch",
        type=float,
        metavar="EPS",
        help="HallE switch value in [-1, 1] for a model trained with recipe halle_switch (-1: grounded objects "
        "only, +1: imagine freely)",
    )
    p.add_argument(
        "--benchmarks",
        metavar="A,B",
        help="comma-separated: toyworld and/or public benchmarks given by --source (default: toyworld, or the "
        "--source benchmarks when any is given)",
    )
    p.add_argument(
        "--source",
        nargs="+",
        action="append",
        metavar="NAME KEY=VALUE",
        help="a public benchmark to generate on: NAME data=PATH images=DIR [split=S] [limit=N] [max_new_tokens=N]; "
        "repeat for several, e.g. --source pope data=POPE/output/coco images=coco/val2014 split=adversarial",
    )
    _add_judge_flags(p, "LLM judge (mmhal, objhal_llm, cceval)")
    p.add_argument(
        "--plot",
        metavar="PNG",
        help="plot each metric against step to this file (default: <first run dir>/eval/metrics.png when run "
        "directories are evaluated and >= 2 checkpoints scored)",
    )
    p.set_defaults(func=cmd_eval)
