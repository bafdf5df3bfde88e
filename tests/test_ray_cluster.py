"""`[simulation] ray_address`: a `fedtune run` simulation joins a running Ray cluster (here a
head started on loopback, as `ray start --head` starts one on a cluster's first machine)."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(shutil.which("ray") is None, reason="the `ray` command (flwr[simulation]) is missing")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head on loopback with its own temp dir; stopped (with every process it started) after."""
    # a short directory: Ray's unix sockets live under it, and their paths may not pass 107 bytes
    port, temp = _free_port(), Path(tempfile.mkdtemp(prefix="fedtune-ray-", dir="/tmp"))
    head = subprocess.Popen(
        ["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (temp / "session_latest" / "logs" / "raylet.out").exists():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the Ray head did not start: " + (head.stdout.read() if head.stdout else ""))
            time.sleep(0.5)
        time.sleep(2)  # the raylet registers with the GCS
        yield f"127.0.0.1:{port}", temp
    finally:
        head.send_signal(signal.SIGINT)  # `ray start --block` stops what it started on SIGINT
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_simulation_runs_on_a_running_ray_cluster(small_config, tmp_path, ray_head):
    address, temp = ray_head
    path = small_config(name="cluster", rounds=2)

    # the cluster's CPUs are its own: the small config's simulation.num_cpus = 1 goes
    result = run_cli("run", path, "--set", f'simulation.ray_address="{address}"', "--set", "simulation.num_cpus=0",
                     timeout=300)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"joining the Ray cluster at {address}" in result.stdout + result.stderr
    assert (tmp_path / "runs" / "cluster" / "metrics.jsonl").read_text().count('"round"') == 3
    # the driver and the ClientApp actors ran in the cluster's session, not in a Ray of their own
    logs = [p.name for p in (temp / "session_latest" / "logs").iterdir()]
    assert any(n.startswith("python-core-driver-") for n in logs)
    assert sum(n.startswith("python-core-worker-") for n in logs) >= 1


def test_ray_address_refuses_its_own_cpu_count(small_config):
    path = small_config(name="bad")

    result = run_cli("run", path, "--set", 'simulation.ray_address="127.0.0.1:6379"', "--set", "simulation.num_cpus=2")

    assert result.returncode == 2
    assert "`simulation.ray_address`" in result.stderr and "leave `simulation.num_cpus`" in result.stderr
