"""Device nodes in a process where `import torch` fails complete rounds against the torch
server, holding its weights bit for bit, including a late joiner that must ask for state."""

import dataclasses
import json
import os
import struct
import subprocess
import sys

import pytest

from fedtune._flwr_compat import ProtoMessage, message_from_proto, message_to_proto, set_task_identity
from fedtune.config import dump_toml
from fedtune.server.strategy import FedKSeed
from tests.conftest import REPO
from tests.device.conftest import MINILM
from tests.onnx.conftest import MICRO

pytestmark = [pytest.mark.onnx, pytest.mark.slow]

_LENGTH = struct.Struct("<I")


class _PipeGrid:
    """The two Grid calls FedKSeed makes, answered by torch-free node processes."""

    def __init__(self, processes):
        self.processes = processes  # node id -> the process playing it

    def get_node_ids(self):
        return list(self.processes)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            process = self.processes[message.metadata.dst_node_id]
            payload = message_to_proto(message).SerializeToString()
            process.stdin.write(_LENGTH.pack(len(payload)) + payload)
            process.stdin.flush()
            (size,) = _LENGTH.unpack(process.stdout.read(_LENGTH.size))
            replies.append(message_from_proto(ProtoMessage.FromString(process.stdout.read(size))))
        return replies


def _start_node(nodes, env):
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "device" / "torch_free_node.py"), json.dumps(nodes), "4"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO,
    )


def _env(cfg, onnx_path, tmp_path):
    """The node processes' environment: the run's config and the export's directory as the run dir."""
    (tmp_path / "c.toml").write_text(dump_toml(cfg))
    return {**os.environ, "FEDTUNE_CONFIG": str(tmp_path / "c.toml"), "FEDTUNE_RUN_DIR": str(onnx_path.parent),
            "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _stop(process):
    process.stdin.write(_LENGTH.pack(0))
    process.stdin.close()
    process.wait(timeout=60)
    return process.stderr.read().decode()


def test_torch_free_devices_stay_bit_identical_with_the_torch_server(micro_onnx, tmp_path, monkeypatch):
    cfg = dataclasses.replace(
        MICRO,
        federation=dataclasses.replace(MICRO.federation, clients_per_round=3, sync_window=1),
        ondevice=dataclasses.replace(MICRO.ondevice, clients=3),
    )
    env = _env(cfg, micro_onnx, tmp_path)
    # One process plays nodes 101 and 102 (as a simulation worker does); a fresh one, node
    # 103, joins at round 3.
    first, late = _start_node({101: 0, 102: 1}, env), _start_node({103: 2}, env)
    set_task_identity(run_id=1, node_id=0, task_id=1, setattr=monkeypatch.setattr)
    server = FedKSeed(cfg)
    grid = _PipeGrid({101: first, 102: first})
    records = []
    try:
        for server_round in range(1, 5):
            if server_round == 3:
                grid.processes[103] = late
            records.append(server.run_round(grid, server_round))
    finally:
        logs = [_stop(first), _stop(late)]

    for process, stderr in zip((first, late), logs):
        assert process.returncode == 0, stderr
        assert json.loads(stderr.strip().splitlines()[-1]) == {"loaded": ["onnxruntime"]}  # no torch
    assert [r["sampled"] for r in records] == [2, 2, 3, 3]
    for record in records:
        # Every device proved, by SHA-256, that it replayed to the server's exact weights.
        assert record["replies"] == record["sampled"]
        assert record["sync_mismatches"] == 0 and record["rejected"] == 0 and record["failed"] == 0
    # Node 103 joined at state 2 and was sent one entry (sync_window = 1); holding state 0,
    # it replied need-state and got the rest in a second message of the round.
    assert [r["resynced"] for r in records] == [0, 0, 1, 0]


def test_torch_free_devices_train_the_pretrained_label_name_head(minilm_onnx, tmp_path, monkeypatch):
    # Devices of a MiniLM label-name head run: tokenizers + ONNX features + numpy head, and
    # neither torch nor transformers imported in their process.
    node = _start_node({101: 0, 102: 1}, _env(MINILM, minilm_onnx, tmp_path))
    set_task_identity(run_id=1, node_id=0, task_id=1, setattr=monkeypatch.setattr)
    server = FedKSeed(MINILM)
    before = {name: p.detach().clone() for name, p in server.params}
    try:
        records = [server.run_round(_PipeGrid({101: node, 102: node}), r) for r in (1, 2)]
    finally:
        stderr = _stop(node)

    assert node.returncode == 0, stderr
    assert json.loads(stderr.strip().splitlines()[-1]) == {"loaded": ["onnxruntime"]}
    for record in records:
        assert record["replies"] == record["sampled"] == 2
        assert record["sync_mismatches"] == 0 and record["rejected"] == 0 and record["failed"] == 0
    assert any(not p.equal(before[name]) for name, p in server.params)  # the devices' steps moved the head
