"""What a person reads: a short console, and the full log in the run directory.

    with session(log_file=run_dir / "train.log", libraries=True):
        ...   # everything printed also goes to the log file (bar redraws reduced to the line a terminal keeps)

Inside a session:
- stdout and stderr are teed into every open log file (sessions nest: the demo's `demo.log` and a run's `train.log`
  both get the run's lines); `log_only(text)` writes to the files alone (Trainer's metric dicts, hidden warnings).
- the dependency warnings listed in QUIET_WARNINGS / QUIET_LOG_MESSAGES (not the user's to fix) go to the log files
  only; every other warning shows as usual. Each entry names the message, the category and the warning's module.
- `libraries=True`: transformers', huggingface_hub's and datasets' own progress bars (weights loading, shard
  writing, dataset saving: short loops) are off.
- `verbose()` (`align --verbose`, `ALIGN_VERBOSE=1`) turns all of the above back on the console; the log files are
  written either way. Progress bars of our own loops: data_builders.progress.

Torch-free: the CLI front imports it; transformers and datasets are imported only with `libraries=True`.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

from data_builders.progress import VERBOSE_ENV, verbose

__all__ = ["QUIET_LOG_MESSAGES", "QUIET_WARNINGS", "log_only", "logged", "session", "verbose"]

# (category, message regex matched at the start as `warnings.filterwarnings` does, module that warns)
QUIET_WARNINGS = (
    # peft/trl read the deprecated property on every wrap; the rename is theirs to make
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", "transformers.modeling_utils"),
)
# (transformers logger name, message start)
QUIET_LOG_MESSAGES = (("transformers.trainer_utils", "mtime may not be reliable on this filesystem"),)
TRAIN_LOG, BUILD_LOG, DEMO_LOG = "train.log", "build.log", "demo.log"  # the full logs, in the run's directory
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class LogFile:
    """An open log file fed by several streams; each stream's partial line is kept apart, and a line redrawn with
    carriage returns (a progress bar) is written as what a terminal keeps: its last redraw, or nothing if blank."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")
        self.partial: dict[str, str] = {}

    def write(self, text: str, stream: str = "log") -> None:
        *lines, rest = (self.partial.get(stream, "") + text).split("\n")
        self.partial[stream] = "\r" + rest.rsplit("\r", 1)[1] if "\r" in rest else rest  # a bar's redraws: the last
        for line in lines:
            kept = ANSI.sub("", line.rsplit("\r", 1)[-1]).rstrip()
            if kept or not ("\r" in line or "\x1b" in line):
                self.file.write(kept + "\n")
        if lines:
            self.file.flush()

    def close(self) -> None:
        for stream, rest in self.partial.items():
            if rest:
                self.write("\n", stream)
        self.file.close()


class Tee:
    """A text stream that writes to `stream` and to every open log file; everything else is `stream`'s."""

    def __init__(self, stream, name: str):
        self.stream, self.name = stream, name

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        for log in _open_logs:
            log.write(text, self.name)
        return written

    def __getattr__(self, name):
        return getattr(self.stream, name)


_open_logs: list[LogFile] = []
_saved: dict = {}  # what the outermost session replaced, restored when it ends
_depth = [0]


def log_only(text: str) -> None:
    """`text` (one or more lines) into the open log files, not on the console."""
    for log in _open_logs:
        log.write(text.rstrip("\n") + "\n")


def quiet_warning(message, category, filename: str) -> bool:
    module_path = filename.replace(os.sep, "/").removesuffix(".py")
    return any(
        issubclass(category, cat)
        and re.match(pattern, str(message))
        and module_path.endswith("/" + module.replace(".", "/"))
        for cat, pattern, module in QUIET_WARNINGS
    )


def _showwarning(message, category, filename, lineno, file=None, line=None):
    if not verbose() and quiet_warning(message, category, filename):
        log_only(warnings.formatwarning(message, category, filename, lineno, line))
    else:
        _saved["showwarning"](message, category, filename, lineno, file, line)


def _quiet_log_record(record) -> bool:
    """A logging filter on transformers' console handler: the QUIET_LOG_MESSAGES go to the log files only."""
    quiet = not verbose() and any(
        record.name == name and str(record.msg).startswith(start) for name, start in QUIET_LOG_MESSAGES
    )
    if quiet:
        log_only(f"[{record.name}] {record.getMessage()}")
    return not quiet


def _quiet_libraries() -> None:
    """Their progress bars off and the log filter on, once per outermost session (restored at its end)."""
    if "libraries" in _saved or verbose():
        return
    import datasets.config
    import datasets.utils as datasets_utils
    import transformers.utils.logging as hf_logging

    hf_logging.get_logger("transformers")  # makes the library's console handler if no log call made it yet
    handler = hf_logging._default_handler
    bars, data_bars = hf_logging.is_progress_bar_enabled(), not datasets_utils.are_progress_bars_disabled()
    if bars and os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None:
        hf_logging.disable_progress_bar()
    if data_bars and datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None:
        datasets_utils.disable_progress_bars()
    if handler is not None:
        handler.addFilter(_quiet_log_record)

    def restore():
        if handler is not None:
            handler.removeFilter(_quiet_log_record)
        if bars and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()
        if data_bars and datasets_utils.are_progress_bars_disabled():
            datasets_utils.enable_progress_bars()

    _saved["libraries"] = restore


def _begin() -> None:
    _saved.update(stdout=sys.stdout, stderr=sys.stderr, showwarning=warnings.showwarning)
    sys.stdout, sys.stderr = Tee(sys.stdout, "stdout"), Tee(sys.stderr, "stderr")
    warnings.showwarning = _showwarning


def _end() -> None:
    sys.stdout, sys.stderr = _saved.pop("stdout"), _saved.pop("stderr")
    warnings.showwarning = _saved.pop("showwarning")
    if "libraries" in _saved:
        _saved.pop("libraries")()


@contextmanager
def session(log_file: str | Path | None = None, verbose: bool | None = None, libraries: bool = False, title: str = ""):
    """The console rules of this module while the block runs, and `log_file` (appended to, after a line with the
    time and `title`; its parent made) receiving everything printed. `verbose` sets ALIGN_VERBOSE for the block
    (None: leave it as the user set it)."""
    env = os.environ.get(VERBOSE_ENV)
    if verbose is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if _depth[0] == 0:
        _begin()
    _depth[0] += 1
    path = Path(log_file).resolve() if log_file is not None else None
    log = None if path is None or any(f.path == path for f in _open_logs) else LogFile(path)
    try:
        if log is not None:
            _open_logs.append(log)
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {title}".rstrip() + "\n")
        if libraries:
            _quiet_libraries()
        yield log
    except Exception as e:  # the traceback into the log files, once (the console shows what main makes of it)
        if _open_logs and not getattr(e, "_align_logged", False):
            log_only("".join(traceback.format_exception(e)))
            e._align_logged = True
        raise
    finally:
        if log is not None:
            _open_logs.remove(log)
            log.close()
        _depth[0] -= 1
        if _depth[0] == 0:
            _end()
        if verbose is not None:
            if env is None:
                os.environ.pop(VERBOSE_ENV, None)
            else:
                os.environ[VERBOSE_ENV] = env


def logged(log_file_of, title: str = ""):
    """A decorator: the command `cmd(args, ...)` runs in a `session` logging to `log_file_of(args)`."""

    def decorate(cmd):
        @functools.wraps(cmd)
        def run(args, *rest, **kwargs):
            with session(log_file_of(args), title=title):
                return cmd(args, *rest, **kwargs)

        return run

    return decorate
