"""fedtune/server/polling.py: replies are collected as they arrive, within the timeout."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from fedtune.server.polling import PromptGrid, prompt


class _DelayedGrid:
    """A grid whose reply to message ``i`` can be pulled ``delays[i]`` seconds after the push."""

    def __init__(self, delays):
        self.delays = delays
        self.pulls = 0
        self.nodes = [1, 2, 3]

    def push_messages(self, messages):
        self.pushed = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        now = time.monotonic() - self.pushed
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"))
                for i, d in enumerate(self.delays) if f"m{i}" in ids and d <= now]

    def get_node_ids(self):
        return self.nodes


def test_replies_are_seen_within_one_poll_of_arriving():
    grid = _DelayedGrid([0.2, 1.0])
    start = time.monotonic()

    replies = PromptGrid(grid, poll_s=0.25).send_and_receive(["a", "b"], timeout=10)

    took = time.monotonic() - start
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert 1.0 <= took < 2.5  # Flower's grid pulls at 0 s and 3 s: it would have taken 3 s


def test_the_timeout_returns_what_came():
    grid = _DelayedGrid([0.0, 60.0])
    start = time.monotonic()

    replies = PromptGrid(grid, poll_s=0.25).send_and_receive(["a", "b"], timeout=0.6)

    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.6 <= time.monotonic() - start < 1.5


def test_everything_else_is_the_grids_own_and_a_fast_grid_is_left_alone():
    grid = _DelayedGrid([])
    assert prompt(grid).get_node_ids() == [1, 2, 3]
    assert isinstance(prompt(grid), PromptGrid)
    fast = SimpleNamespace(pull_interval=0.1)
    assert prompt(fast) is fast


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_no_messages_no_wait(timeout):
    assert PromptGrid(_DelayedGrid([])).send_and_receive([], timeout=timeout) == []
