"""Shared fixtures: small experiment configs and a runner for the real `fedtune` CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One thread per process under `pytest -n N`: N tests share the machine's cores, and a torch (OpenMP)
# process with as many threads as cores, beside another busy one, waits at every parallel region for
# its descheduled thread. Measured on 2 cores: a small mixed torch/ONNX simulation took 163 s beside a
# 2-thread torch loop, 57 s when both ran one thread, 47 s alone. The subprocesses a
# test starts (`fedtune run`, its Ray workers, SuperNodes) inherit the setting; a value the caller set wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:  # imported before this file (a plugin): too late for the variable alone
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# `simulation.num_cpus = 1`: one Ray worker per simulation. The clients of a round then run one
# after another, which these micro models do in a fraction of a second, and the suite saves the
# second worker's imports (torch and transformers: ~10 s of CPU each), which on a 2-core machine
# under `pytest -n 2` are what the simulations wait for (tests/test_simulation.py +
# tests/test_outputs.py: 276 s -> 202 s).
SMALL_CONFIG = """
name = "{name}"
rounds = {rounds}
output_dir = "{output_dir}"
[model]
config = "micro-llama"
[data]
num_examples = 400
eval_examples = 64
max_length = 24
[simulation]
num_cpus = 1
[federation]
num_clients = {num_clients}
clients_per_round = {per_round}
min_replies = 2
[algorithm]
name = "{algorithm}"
local_steps = 4
batch_size = 8
num_candidates = 64
lr = 5e-4
"""

# The LoRA twin of SMALL_CONFIG: micro BERT built from config, the generated topic task.
SMALL_LORA_CONFIG = """
name = "{name}"
rounds = 2
output_dir = "{output_dir}"
[model]
config = "micro-bert"
task = "seq-cls"
[data]
source = "topics"
num_examples = 240
eval_examples = 32
max_length = 24
[simulation]
num_cpus = 1
[federation]
num_clients = {num_clients}
clients_per_round = 3
min_replies = 2
[algorithm]
name = "{rule}"
local_steps = 3
batch_size = 8
lr = 5e-3
[lora]
rank = 4
two_phase = {two_phase}
[compress]
method = "{method}"
topk = 0.1
"""


@pytest.fixture
def small_config(tmp_path):
    """Write a small experiment TOML under tmp_path and return its path."""

    def make(name="small", rounds=3, num_clients=4, per_round=3, algorithm="fedkseed", extra=""):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            SMALL_CONFIG.format(
                name=name, rounds=rounds, output_dir=tmp_path / "runs", num_clients=num_clients,
                per_round=per_round, algorithm=algorithm,
            )
            + extra
        )
        return path

    return make


def run_cli(*args, timeout=300, cwd=REPO):
    """Run `python -m fedtune.cli ...` in a fresh process, as a user would."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("FEDTUNE_CONFIG", None)
    env.pop("FEDTUNE_RUN_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "fedtune.cli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.fixture
def task_identity(monkeypatch):
    """Messages need a run id outside a Flower run (Flower sets it inside one)."""
    from fedtune._flwr_compat import set_task_identity

    set_task_identity(run_id=1, node_id=0, task_id=1, setattr=monkeypatch.setattr)
