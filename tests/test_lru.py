"""The bounded caches that keep per-process memory independent of the population."""

import pytest

from fedtune.lru import LRU


def test_least_recently_used_goes_first():
    cache = LRU(2)
    cache.get_or_build("a", lambda: 1)
    cache.get_or_build("b", lambda: 2)
    cache.get_or_build("a", lambda: pytest.fail("kept"))  # a is now the most recent
    cache.get_or_build("c", lambda: 3)

    assert "a" in cache and "c" in cache and "b" not in cache and len(cache) == 2


def test_a_full_cache_drops_before_building_so_a_value_is_never_held_twice():
    cache = LRU(1)
    cache.get_or_build("run-1", lambda: "model 1")
    held = []

    cache.get_or_build("run-2", lambda: held.append(len(cache)) or "model 2")

    assert held == [0] and "run-2" in cache and "run-1" not in cache


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        LRU(0)
