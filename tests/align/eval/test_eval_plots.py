"""Metric-against-step plots (checked on the data drawn, not only the file), and `align eval` over a run dir:
the table, the default plot, and resuming without re-scoring."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from align.cli import main
from align.config.sections import ModelConfig
from align.core.models import build_model, save_policy
from align.eval import runner
from align.eval.plots import collect_step_evals, metric_series, plot_metrics
from tests.conftest import MICRO_SPEC, SMALL_WORLD

PNG = b"\x89PNG\r\n\x1a\n"


def fake_eval(step: int | None, chair_s: float, pope: bool = True) -> dict:
    result = {
        "toyworld_chair": {"chair_s": chair_s, "chair_i": chair_s / 2, "recall": 0.5, "length": 10.0 + (step or 0)},
        "meta": {"step": step},
    }
    if pope:
        result["toyworld_pope"] = {"f1_mean": 0.8, "yes_ratio_mean": 0.5}
        result["toyworld_pope_adversarial"] = {"f1": 0.7}
    return result


def test_one_line_per_metric_with_the_values_drawn(tmp_path):
    results = {f"runs/a/checkpoint-{s}": fake_eval(s, c) for s, c in ((10, 0.6), (20, 0.4), (30, 0.2))}
    results["runs/a/final"] = fake_eval(30, 0.9)  # final repeats the last checkpoint's step: drawn once
    drawn = plot_metrics(results, tmp_path / "out" / "m.png")
    assert (tmp_path / "out" / "m.png").read_bytes()[:8] == PNG
    expected = ["CHAIR_s (%)", "CHAIR_i (%)", "recall (%)", "len", "POPE F1 (%)", "F1 adv (%)", "yes (%)"]
    assert list(drawn) == expected  # add% is in no result: no panel
    assert all(list(lines) == ["a"] for lines in drawn.values())  # one line (the run) per metric
    assert drawn["CHAIR_s (%)"]["a"] == ([10, 20, 30], [60.0, 40.0, 20.0])
    assert drawn["CHAIR_i (%)"]["a"] == ([10, 20, 30], [30.0, 20.0, 10.0])
    assert drawn["len"]["a"] == ([10, 20, 30], [20.0, 30.0, 40.0])
    assert drawn == metric_series(results)


def test_runs_are_separate_lines_and_stepless_results_are_left_out(tmp_path):
    results = {
        "x/run1/checkpoint-1": fake_eval(1, 0.5, pope=False),
        "x/run1/checkpoint-2": fake_eval(2, 0.3, pope=False),
        "x/run2/checkpoint-2": fake_eval(2, 0.1, pope=False),
        "some/model": fake_eval(None, 0.0, pope=False),
    }
    drawn = plot_metrics(results, tmp_path / "m.png")
    assert set(drawn) == {"CHAIR_s (%)", "CHAIR_i (%)", "recall (%)", "len"}  # no POPE panels without POPE
    assert drawn["CHAIR_s (%)"] == {"run1": ([1, 2], [50.0, 30.0]), "run2": ([2], [10.0])}
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_metrics({"some/model": fake_eval(None, 0.0)}, tmp_path / "none.png")


def test_collect_step_evals_reads_a_runs_step_files_in_step_order(tmp_path):
    (tmp_path / "eval").mkdir()
    for step in (10, 2):
        record = {"step": step, "checkpoint": f"{tmp_path}/checkpoint-{step}", "results": fake_eval(step, step / 10)}
        (tmp_path / "eval" / f"step-{step}.json").write_text(json.dumps(record))
    (tmp_path / "eval" / "step-notes.json").write_text("{}")  # not a step file
    collected = collect_step_evals(tmp_path)
    assert list(collected) == [f"{tmp_path}/checkpoint-2", f"{tmp_path}/checkpoint-10"]
    assert collected[f"{tmp_path}/checkpoint-10"]["toyworld_chair"]["chair_s"] == 1.0
    assert plot_metrics(collected, tmp_path / "m.png")["CHAIR_s (%)"][tmp_path.name] == ([2, 10], [20.0, 100.0])


# ---------------------------------------------------------------- align eval over a run directory


@pytest.fixture
def toy_run(tmp_path, cache_dir):
    """A run dir with checkpoint-2/ and checkpoint-4/ (untrained micro policies) and its data config."""
    run = tmp_path / "run"
    model, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0)
    for step in (2, 4):
        save_policy(model, processor, run / f"checkpoint-{step}")
    data = {"world": dataclasses.asdict(SMALL_WORLD), "cache_dir": str(cache_dir)}
    (run / "align_config.yaml").write_text(yaml.safe_dump({"recipe": "sft", "data": data}))
    return run


EVAL_ARGS = ["--limit", "2", "--no-pope", "--batch-size", "8"]


def test_eval_run_dir_prints_the_table_and_plots_each_metric(toy_run, capsys):
    assert main(["eval", str(toy_run), *EVAL_ARGS]) == 0
    out = capsys.readouterr().out
    assert "CHAIR_s" in out and "checkpoint-2" in out and "checkpoint-4" in out
    assert f"wrote {toy_run / 'eval' / 'metrics.png'}" in out
    assert (toy_run / "eval" / "metrics.png").read_bytes()[:8] == PNG
    # one checkpoint: no default plot; --plot asks for one anyway
    assert main(["eval", str(toy_run / "checkpoint-2"), *EVAL_ARGS]) == 0
    assert "wrote" not in capsys.readouterr().out
    assert main(["eval", str(toy_run / "checkpoint-2"), *EVAL_ARGS, "--plot", str(toy_run / "one.png")]) == 0
    assert (toy_run / "one.png").read_bytes()[:8] == PNG


def test_eval_resumes_without_rescoring_unless_forced(toy_run, capsys, monkeypatch):
    assert main(["eval", str(toy_run), *EVAL_ARGS]) == 0
    first = capsys.readouterr().out
    calls = []
    real = runner.evaluate_toyworld
    monkeypatch.setattr(runner, "evaluate_toyworld", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["eval", str(toy_run), *EVAL_ARGS]) == 0
    assert calls == [] and capsys.readouterr().out == first  # both checkpoints came from eval_results.json
    (toy_run / "checkpoint-4" / "eval_results.json").unlink()  # as if the sweep had been killed there
    assert main(["eval", str(toy_run), *EVAL_ARGS]) == 0
    assert len(calls) == 1
    assert main(["eval", str(toy_run), "--limit", "1", "--no-pope", "--batch-size", "8"]) == 0
    assert len(calls) == 3  # other settings: both re-scored
    assert main(["eval", str(toy_run), *EVAL_ARGS, "--force"]) == 0
    assert len(calls) == 5
