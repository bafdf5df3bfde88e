"""Progress lines for a long phase of a round (evaluation, generation): no bar, no dependency.

A phase that finishes within ``every_s`` seconds prints nothing; a longer one logs
``evaluating: 512/1000 examples (12 s)`` every ``every_s`` seconds, so a run on a large
held-out set or a large model shows it is alive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["Progress", "counting_steps"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Progress:
    """Counts a phase's work and logs it at most once every ``every_s`` seconds.

    Args:
        phase: what is being done, e.g. ``"evaluating"``.
        total: the units of work in the phase.
        unit: what one unit is, e.g. ``"examples"``.
        every_s: seconds between lines; 0 = never log.
    """

    def __init__(self, phase: str, total: int, unit: str, every_s: float = 10.0) -> None:
        self.phase, self.total, self.unit, self.every_s = phase, total, unit, every_s
        self.done = 0
        self.lines = 0  # progress lines logged so far
        self._start = self._last = time.monotonic()

    def advance(self, units: int) -> None:
        """Count ``units`` more done; log a line if ``every_s`` passed since the last one."""
        self.done += units
        now = time.monotonic()
        if self.every_s > 0 and now - self._last >= self.every_s and self.done < self.total:
            self._last = now
            self.lines += 1
            log.info("%s: %d/%d %s (%.0f s)", self.phase, self.done, self.total, self.unit, now - self._start)


def counting_steps(fn: Callable[[int], T], progress: Progress) -> Callable[[int], T]:
    """``fn(step)``, counting each new ``step`` in ``progress`` (a step may call it several
    times: a ZO step runs two forwards on the same batch)."""
    last = [-1]

    def counted(step: int) -> T:
        if step != last[0]:
            if last[0] >= 0:
                progress.advance(step - last[0])
            last[0] = step
        return fn(step)

    return counted
