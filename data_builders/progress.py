"""Progress bars a person can read: `bar(...)` is `tqdm` (same arguments) that shows on a terminal only, one at a
time, and never leaves debris in a log file.

- stderr not a terminal (a log, CI, a pipe): no bar at all; the loops print their own summary lines.
- a terminal: the outermost bar only; a bar opened while another is open (a chunked loop over an inner pool, as
  RLAIF-V's feedback over the endpoint's requests) stays hidden, so one long loop draws one bar.
- `ALIGN_VERBOSE=1` (or `align --verbose`): every bar, as plain tqdm would draw it.

Bars default to `leave=False`: a finished loop leaves its summary line, not its bar. Passing `disable=` explicitly
still hides a bar (`disable=len(items) < 2`), it never forces one on.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

VERBOSE_ENV = "ALIGN_VERBOSE"


def verbose() -> bool:
    """Everything on the console: `ALIGN_VERBOSE` set to anything but empty, 0, false or no."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def shows_bars() -> bool:
    """Whether a new outermost bar would be drawn now."""
    stream = sys.stderr
    return verbose() or bool(stream is not None and getattr(stream, "isatty", lambda: False)())


class Bar(tqdm):
    """`tqdm` with the rules of this module; counts the bars it draws so an inner one stays hidden."""

    drawn = 0

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("leave", False)
        hidden = kwargs.pop("disable", False) or not shows_bars() or (Bar.drawn > 0 and not verbose())
        super().__init__(*args, disable=bool(hidden), **kwargs)
        self._counted = not hidden
        Bar.drawn += self._counted

    def close(self):
        if getattr(self, "_counted", False):
            self._counted = False
            Bar.drawn -= 1
        super().close()


def bar(iterable=None, **kwargs) -> Bar:
    """`tqdm(iterable, **kwargs)` under this module's rules."""
    return Bar(iterable, **kwargs)
