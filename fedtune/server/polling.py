"""Replies collected as they arrive: a grid that asks the SuperLink every 0.5 s, not every 3 s.

Flower 1.41's deployment grid (``HttpGrid``) sleeps a fixed 3 s between two pulls in
``send_and_receive``: a reply that arrives just after a pull waits up to 3 s (1.5 s on
average) before the ServerApp sees it, once per message round trip, every round. Cross-silo
rounds last tens of seconds; that is a few percent of each one, for nothing
(``bench/deploy.py``). :class:`PromptGrid` does the same exchange through the grid's own
public ``push_messages`` / ``pull_messages`` with a 0.5 s pause: one small request to the
SuperLink every 0.5 s while a round waits. Flower's simulation grid already pulls every
0.1 s and is left as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["POLL_S", "PromptGrid", "prompt"]

POLL_S = 0.5  # seconds between two pulls of replies


class PromptGrid:
    """``grid`` with a :meth:`send_and_receive` that pulls every :data:`POLL_S` seconds."""

    def __init__(self, grid: Grid, poll_s: float = POLL_S) -> None:
        self._grid = grid
        self.poll_s = poll_s

    def __getattr__(self, name: str) -> Any:  # everything else is the grid's own
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push ``messages``, then pull replies until each has one or ``timeout`` seconds passed
        (None: wait for all), as :meth:`flwr.serverapp.Grid.send_and_receive` does."""
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self._grid.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll_s if deadline is None else max(0.0, min(self.poll_s, deadline - time.monotonic())))
        return replies


def prompt(grid: Grid) -> Grid:
    """``grid`` wrapped in a :class:`PromptGrid` unless it already pulls at least as often."""
    if getattr(grid, "pull_interval", float("inf")) <= POLL_S:  # Flower's in-memory (simulation) grid
        return grid
    return PromptGrid(grid)  # type: ignore[return-value]
