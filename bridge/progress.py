"""The one progress bar of the package: a status line on stderr for long jobs.

``done/total``, the caller's text, seconds per step and the ETA.  On a terminal the line is
redrawn in place (carriage return) at most every ``every`` seconds and at the last step; in a
log file (not a terminal) a full line is written about every tenth of the run and at the last
step, so logs stay short; disabled, nothing is written.  Base level: jobs, the built-in Chroma
programs and the command line all use it.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

__all__ = ["Progress", "clock"]


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on; ``?`` when not finite)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


class Progress:
    """A progress bar for ``total`` steps named ``label`` (``"cycle 3/10  ..."``).

    ``enabled``: None draws on a terminal only; True also into a log (lines every ~10 %);
    False never.  ``unit`` names one step in the rate (``"0.5 s/cycle"``); ``start`` is the step
    the run starts from (after a resume), so the rate counts only the steps of this run;
    ``width > 0`` adds a ``[####....]`` bar of that many characters; ``redraw`` (default: the
    stream is a terminal) redraws one line instead of writing log lines."""

    def __init__(self, total: int, *, label: str = "step", unit: str | None = None,
                 stream: TextIO | None = None, enabled: bool | None = None,
                 every: float = 0.2, start: int = 0, width: int = 0,
                 redraw: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        tty = bool(isatty and isatty())
        self.enabled = tty if enabled is None else bool(enabled)
        self.redraw = tty if redraw is None else bool(redraw)
        self.total, self.label, self.unit = int(total), label, unit or label
        self.every, self.start, self.width = float(every), int(start), int(width)
        self.log_every = max(1, self.total // 10)
        self.t0 = time.perf_counter()
        self._last = -math.inf
        self._shown = 0

    def rate(self, done: int) -> float:
        """Seconds per step of this run so far."""
        return (time.perf_counter() - self.t0) / max(done - self.start, 1)

    def line(self, done: int, text: str = "", seconds_per: float | None = None) -> str:
        """The text of the bar after ``done`` steps (no carriage return)."""
        rate = self.rate(done) if seconds_per is None else float(seconds_per)
        bar = ""
        if self.width > 0 and self.total > 0:
            fill = int(self.width * min(done, self.total) / self.total)
            bar = f"[{'#' * fill}{'.' * (self.width - fill)}] "
        text = f"  {text}" if text else ""
        return (f"{self.label} {bar}{done}/{self.total}{text}  {rate:.3g} s/{self.unit}  "
                f"ETA {clock((self.total - done) * rate)}")

    def update(self, done: int, text: str = "", *, seconds_per: float | None = None) -> None:
        """Show the state after ``done`` steps (rate-limited, see the class docstring)."""
        if not self.enabled:
            return
        last = done >= self.total
        if self.redraw:
            now = time.monotonic()
            if now - self._last < self.every and not last:
                return
            self._last = now
        elif done % self.log_every and not last:
            return
        out = self.line(done, text, seconds_per)
        if self.redraw:
            pad = max(0, self._shown - len(out))
            self._shown = len(out)
            self.stream.write("\r" + out + " " * pad)
        else:
            self.stream.write(out + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        """A whole line of text (ends a redrawn bar first)."""
        if not self.enabled:
            return
        if self._shown:
            self.stream.write("\n")
            self._shown = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the redrawn line (a newline after the last bar on a terminal)."""
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = 0
