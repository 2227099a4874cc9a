"""How a training run shows its progress: a redrawn bar on a terminal, plain lines elsewhere.

On a terminal (stderr is a TTY) a tqdm bar counts steps, or seconds for a run limited by
time. Anywhere else (a log file, a pipe, a job scheduler) redraws would fill the log with
carriage-return frames, so one plain line goes to stdout every ``every`` seconds instead::

    step 1,200 | 312/900 s | loss 1.234 | best val 1.456 | 11,234 chars/s

:func:`make_progress` picks one; both have ``update(done, step, info)`` and ``close(ok)``.
``close(ok=False)`` (training ended in an error) erases the bar, so the error message is the
only thing left on the screen.
"""
from __future__ import annotations

import sys
import time

_clock = time.monotonic  # when the next plain line is due (a name of its own, for tests)


def make_progress(enabled: bool, by_time: bool, total: float, initial: float, every: float = 30.0,
                  stream=None):
    """A progress display, or None when not ``enabled``. ``total`` and ``initial`` count seconds
    (``by_time``) or steps; ``initial`` is what a resumed run had already done."""
    if not enabled:
        return None
    err = sys.stderr if stream is None else stream
    if _is_terminal(err):
        return BarProgress(by_time, total, initial, err)
    return LineProgress(by_time, total, every, sys.stdout if stream is None else stream)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class BarProgress:
    """A tqdm bar on ``stream``; ``done`` is clipped to ``[initial, total]``."""

    def __init__(self, by_time: bool, total: float, initial: float, stream) -> None:
        from tqdm import tqdm

        counter = "{n:.0f}/{total:.0f} s" if by_time else "{n_fmt}/{total_fmt} steps"
        self.total = total
        self.bar = tqdm(total=total, initial=min(initial, total), dynamic_ncols=True, leave=True, file=stream,
                        bar_format="{l_bar}{bar}| " + counter + " [{elapsed}<{remaining}{postfix}]")

    def update(self, done: float, step: int, info: str) -> None:
        self.bar.update(max(0.0, min(done, self.total) - self.bar.n))
        self.bar.set_postfix_str(f"step {step} | {info}", refresh=False)

    def close(self, ok: bool = True) -> None:
        if not ok:
            self.bar.leave = False
        self.bar.close()


class LineProgress:
    """One line on ``stream`` every ``every`` seconds of wall-clock time (the first after
    ``every`` seconds), none at the end: the run's summary follows."""

    def __init__(self, by_time: bool, total: float, every: float, stream) -> None:
        self.by_time, self.total, self.every, self.stream = by_time, total, every, stream
        self.next_at = _clock() + every

    def update(self, done: float, step: int, info: str) -> None:
        now = _clock()
        if now < self.next_at:
            return
        self.next_at = now + self.every
        where = f"step {step:,} | {min(done, self.total):.0f}/{self.total:.0f} s" if self.by_time else \
            f"step {step:,}/{self.total:,.0f}"
        print(f"{where} | {info}", file=self.stream, flush=True)

    def close(self, ok: bool = True) -> None:
        pass
