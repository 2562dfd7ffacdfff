"""Reruns through the `align` command (issue 17): a finished run is reported and untouched, a changed config is
refused naming the key, `--overwrite` starts afresh, `--resume` continues; `align demo` twice trains nothing."""

from __future__ import annotations

import json

from align.cli import main
from tests.align.test_cli import MICRO, MICRO_ALIGNMENT, REPO


def stamps(run) -> dict[str, int]:
    """mtime of everything a rerun must not touch."""
    files = [run / "train_summary.json", run / "final" / "model.safetensors", run / "final" / "eval_results.json"]
    return {str(f.relative_to(run)): f.stat().st_mtime_ns for f in files}


def steps(run) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))


def test_rerun_refuse_overwrite_resume(tmp_path, cache_dir, capsys):
    run = tmp_path / "run"
    train = ["train", str(REPO / "configs/toy/sft_base.yaml"), f"run.output_dir={run}", f"data.cache_dir={cache_dir}"]
    assert main([*train, *MICRO]) == 0
    first, before = json.loads((run / "train_summary.json").read_text()), stamps(run)
    assert steps(run) == [3, 6]
    capsys.readouterr()

    assert main([*train, *MICRO, "run.report_to=none"]) == 0  # the same run: finished, nothing trained or written
    out = capsys.readouterr().out
    assert f"[sft] already finished: {run / 'final'} (pass --overwrite to train again)" in out
    assert "CHAIR_s" in out  # the stored summary's eval, as the first run printed it
    assert steps(run) == [3, 6] and stamps(run) == before
    assert json.loads((run / "train_summary.json").read_text()) == first

    assert main([*train, *MICRO, "optim.max_steps=8"]) == 2  # another run on the same dir: refused
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "optim.max_steps: 6 -> 8" in err and "--overwrite" in err and "--resume" in err
    assert steps(run) == [3, 6] and stamps(run) == before

    assert main([*train, *MICRO, "optim.max_steps=8", "--resume"]) == 0  # continues from checkpoint-6
    out = capsys.readouterr().out
    assert "resuming from" in out and "checkpoint-6" in out and "optim.max_steps: 6 -> 8" in out
    resumed = json.loads((run / "train_summary.json").read_text())
    assert [s for s, _ in resumed["loss_history"]] == [2, 4, 6, 8]
    assert resumed["loss_history"][:3] == first["loss_history"]  # steps 1-6 restored, not redone
    assert steps(run)[-1] == 8

    assert main([*train, *MICRO, "optim.max_steps=4", "--overwrite"]) == 0  # afresh, under the new config
    out = capsys.readouterr().out
    assert "--overwrite: removed" in out and "resuming" not in out
    fresh = json.loads((run / "train_summary.json").read_text())
    assert steps(run) == [3, 4] and [s for s, _ in fresh["loss_history"]] == [2, 4]
    assert fresh["vision_pretrain"] is not None  # a fresh run pretrains the tower again

    (run / "train_summary.json").unlink()  # as if killed after final/ was saved, during the final eval
    assert main([*train, *MICRO, "optim.max_steps=4"]) == 0
    assert steps(run) == [3, 4]  # nothing trained past max_steps: checkpoint-4 is restored, the summary written
    restored = json.loads((run / "train_summary.json").read_text())
    assert restored["loss_history"] == fresh["loss_history"] and "eval" in restored


def test_demo_twice_trains_nothing_the_second_time(tmp_path, cache_dir, capsys):
    workdir = tmp_path / "demo"
    argv = ["demo", "--workdir", str(workdir), f"data.cache_dir={cache_dir}", *MICRO, *MICRO_ALIGNMENT]
    assert main(argv) == 0
    first = json.loads((workdir / "comparison.json").read_text())
    runs = [workdir / name for name in ("sft_base", "opa_dpo", "opa_dpo/opa", "dpo_offpolicy")]
    before = {str(r): (steps(r), (r / "final" / "model.safetensors").stat().st_mtime_ns) for r in runs}
    dataset = (workdir / "opa_data" / "dataset").stat().st_mtime_ns
    capsys.readouterr()

    assert main(argv) == 0
    out = capsys.readouterr().out
    stages = (
        ("sft", "sft_base"),
        ("opa_data", "opa_data"),
        ("opa-dpo", "opa_dpo"),
        ("dpo-offpolicy", "dpo_offpolicy"),
    )
    for tag, run in stages:
        assert f"[{tag}] already finished: {workdir / run}" in out, tag
    assert "resuming" not in out
    assert {str(r): (steps(r), (r / "final" / "model.safetensors").stat().st_mtime_ns) for r in runs} == before
    assert (workdir / "opa_data" / "dataset").stat().st_mtime_ns == dataset
    assert json.loads((workdir / "comparison.json").read_text()) == first  # every eval came from the cache

    assert main([*argv, "opa_dpo.optim.max_steps=3"]) == 2  # a changed stage is refused, not silently resumed
    assert "optim.max_steps: 2 -> 3" in capsys.readouterr().err
