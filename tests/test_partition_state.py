"""Per-partition client state on disk (fedtune.partition_state)."""

import numpy as np
import pytest

from fedtune.partition_state import PartitionState


def test_saved_state_loads_back_per_partition_and_name(tmp_path):
    store = PartitionState(tmp_path)
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.ones(4, np.float32)}
    store.save(7, "residual", a)
    store.save(7, "residual", {"x": a["x"] * 2})  # replaced, not merged

    assert store.load(8, "residual") is None and store.load(7, "other") is None
    loaded = store.load(7, "residual")
    assert set(loaded) == {"x"}
    np.testing.assert_array_equal(loaded["x"], a["x"] * 2)
    assert [p.name for p in (tmp_path / "client-state").iterdir()] == ["000007.residual.safetensors"]


def test_a_failed_write_keeps_the_old_state_and_leaves_no_temporary_file(tmp_path):
    store = PartitionState(tmp_path)
    store.save(1, "residual", {"x": np.zeros(3, np.float32)})

    with pytest.raises(Exception):  # noqa: B017 (safetensors' own error type for an unsupported dtype)
        store.save(1, "residual", {"x": np.array(["not", "numbers"])})

    np.testing.assert_array_equal(store.load(1, "residual")["x"], np.zeros(3, np.float32))
    assert [p.name for p in (tmp_path / "client-state").iterdir()] == ["000001.residual.safetensors"]


@pytest.mark.parametrize(("partition", "name"), [(-1, "residual"), (0, "../x"), (0, "a b")])
def test_bad_keys_are_refused(tmp_path, partition, name):
    with pytest.raises(ValueError, match="bad partition state key"):
        PartitionState(tmp_path).path(partition, name)
