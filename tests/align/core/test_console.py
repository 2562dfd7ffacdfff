"""What a person reads (align/core/console.py, console_callback.py): compact training lines and no bar debris in a
log, the full log in the run directory, `--verbose` giving Trainer's output back, and the warnings filter hiding
exactly the dependency warnings it lists."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from align.cli import main
from align.core import console
from align.core.console_callback import compact_every, metric_line, speed
from tests.align.test_cli import MICRO, REPO

GRADIENT_CHECKPOINTING = "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use ..."
BAR_DEBRIS = re.compile(r"\r|\x1b\[|it/s\]|\d+%\|")  # redraws, cursor moves, tqdm's "[00:01, 3.2it/s]", "50%|"


def train(tmp_path: Path, *flags: str) -> Path:
    run = tmp_path / "run"
    argv = ["train", str(REPO / "configs/toy/sft_base.yaml"), f"run.output_dir={run}", *MICRO, "run.eval_at_end=false"]
    assert main([*argv, *flags]) == 0
    return run


def test_training_prints_compact_lines_and_logs_everything(tmp_path, cache_dir, capfd):
    run = train(tmp_path, f"data.cache_dir={cache_dir}")
    out, err = capfd.readouterr()
    lines = (out + err).splitlines()
    steps = [line for line in lines if line.startswith("[sft] step")]
    assert [s.split()[2] for s in steps] == ["2/6", "4/6", "6/6"], lines  # MICRO: logging_steps=2, 6 steps
    assert all(re.fullmatch(r"\[sft\] step \d/6  loss \d+\.\d{3}  lr \d\.\de-\d\d  [\d.]+ it/s", s) for s in steps)
    assert any(re.match(r"\[sft\] done: 6 steps in [\d.]+s .*mean loss \d+\.\d{3}$", line) for line in lines)
    assert not BAR_DEBRIS.search(out + err), (out + err)[-2000:]
    assert "{'loss'" not in out + err and "Warning" not in err
    log = (run / console.TRAIN_LOG).read_text()
    assert '"grad_norm"' in log and '"train_runtime"' in log  # Trainer's dicts, in the file only
    assert "[sft] step 6/6" in log and "rows kept" in log  # and everything the console showed
    assert not BAR_DEBRIS.search(log.replace("it/s", ""))


def test_verbose_brings_trainer_output_back(tmp_path, cache_dir, capfd):
    train(tmp_path, f"data.cache_dir={cache_dir}", "optim.max_steps=2", "--verbose")  # after the subcommand too
    out, err = capfd.readouterr()
    assert "'loss'" in out + err and "it/s]" in err  # Trainer's dict printing and its tqdm bar
    assert "[sft] step" not in out
    assert console.VERBOSE_ENV not in __import__("os").environ  # the flag does not outlive the command


def emit(message: str, category=FutureWarning, module: str = "transformers.modeling_utils") -> None:
    filename = str(Path("/site-packages", *module.split(".")).with_suffix(".py"))
    warnings.warn_explicit(message, category, filename, 1, module=module)


def test_warnings_filter_hides_exactly_the_listed_warnings(tmp_path, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with console.session(tmp_path / "x.log"):
            emit(GRADIENT_CHECKPOINTING)  # hidden
            emit(GRADIENT_CHECKPOINTING, module="align.core.models")  # the same words from elsewhere: shown
            emit(GRADIENT_CHECKPOINTING, category=UserWarning)  # another category: shown
            emit("`use_cache=True` is incompatible with gradient checkpointing")  # another message: shown
            with console.session(verbose=True):
                emit(GRADIENT_CHECKPOINTING)  # --verbose: shown
        emit(GRADIENT_CHECKPOINTING)  # outside a session: the library default, shown
    assert [(w.category, w.filename.endswith("modeling_utils.py")) for w in shown] == [
        (FutureWarning, False),
        (UserWarning, True),
        (FutureWarning, True),
        (FutureWarning, True),
        (FutureWarning, True),
    ]
    assert (tmp_path / "x.log").read_text().count("is_gradient_checkpointing") == 1  # the hidden one, in the file


def test_log_filter_hides_the_listed_transformers_messages(tmp_path, monkeypatch):
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)

    def record(name, msg):
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None)

    mtime = "mtime may not be reliable on this filesystem, falling back to numerical ordering"
    with console.session(tmp_path / "x.log"):
        assert not console._quiet_log_record(record("transformers.trainer_utils", mtime))
        assert console._quiet_log_record(record("transformers.trainer", mtime))
        assert console._quiet_log_record(record("transformers.trainer_utils", "Checkpoint destination exists"))
    assert "[transformers.trainer_utils] mtime may not be reliable" in (tmp_path / "x.log").read_text()


def test_log_file_keeps_what_a_terminal_keeps(tmp_path):
    log = console.LogFile(tmp_path / "x.log")
    log.write("rows:  50%|#####     | 1/2\rrows: 100%|##########| 2/2\r          \r[sft] 2 rows kept\n", "stderr")
    log.write("\x1b[A\n\n", "stderr")
    log.write("half a ", "stdout")
    log.write("bar\r  \r", "stderr")
    log.write("line\n", "stdout")
    for i in range(1000):  # a long run's bar: only its last redraw is held
        log.write(f"\rtrain: {i}/1000", "stderr")
    assert log.partial["stderr"] == "\rtrain: 999/1000"
    log.write("\r" + " " * 20 + "\r", "stderr")
    log.close()
    assert (tmp_path / "x.log").read_text() == "[sft] 2 rows kept\n\nhalf a line\n"


def test_metric_lines_are_few_and_compact():
    assert compact_every(50, 1500) == 300 and compact_every(10, 100) == 20 and compact_every(2, 6) == 2
    logs = {"loss": 1.23449, "learning_rate": 5.9e-4, "rewards/accuracy": 0.75, "grad_norm": 3.0}
    line = metric_line("dpo", 300, 1500, logs, 12.34)
    assert line == "[dpo] step 300/1500  loss 1.234  lr 5.9e-04  acc 0.75  12.3 it/s"


def test_slow_steps_read_as_seconds_per_step():
    assert speed(12.34) == "12.3 it/s" and speed(1 / 34.5) == "34.5 s/it" and speed(0.0) == "- it/s"
