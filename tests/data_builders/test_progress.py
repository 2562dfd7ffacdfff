"""data_builders.progress: no bar off a terminal, the outermost bar only on one, every bar under ALIGN_VERBOSE."""

from __future__ import annotations

import io
import sys

import pytest

from data_builders.progress import VERBOSE_ENV, bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def drawn(monkeypatch, stream, verbose: bool = False) -> list[str]:
    """Runs a chunked loop over an inner loop (RLAIF-V's feedback over the endpoint's requests); returns the descs
    of the bars that were drawn."""
    monkeypatch.setattr(sys, "stderr", stream)
    if verbose:
        monkeypatch.setenv(VERBOSE_ENV, "1")
    else:
        monkeypatch.delenv(VERBOSE_ENV, raising=False)
    seen = set()
    outer = bar(range(2), desc="outer", file=stream)
    for _ in outer:
        inner = bar(range(3), desc="inner", file=stream)
        seen |= {b.desc for b in (outer, inner) if not b.disable}  # (tqdm sets disable when a bar closes)
        list(inner)
    return sorted(seen)


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    log = io.StringIO()
    assert drawn(monkeypatch, log) == []
    assert log.getvalue() == ""


def test_one_bar_per_loop_on_a_terminal(monkeypatch):
    assert drawn(monkeypatch, Terminal()) == ["outer"]
    assert drawn(monkeypatch, Terminal()) == ["outer"]  # the count of open bars went back to zero


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_verbose_draws_every_bar(monkeypatch, stream):
    assert drawn(monkeypatch, stream(), verbose=True) == ["inner", "outer"]


def test_disable_still_hides_a_bar(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert bar(range(1), disable=True, file=sys.stderr).disable
