"""The device client: bit-identical sync with the torch server, the torch client's keys and
batches, need-state when behind, through real Flower messages."""

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from fedtune import wire
from fedtune._flwr_compat import message_from_proto, message_to_proto, set_task_identity
from fedtune.config import dump_toml
from fedtune.device import DeviceClient, OutOfSync, run_key
from fedtune.server.strategy import FedKSeed
from fedtune.zo import aggregate
from fedtune.zo import client as zo_client
from tests.onnx.conftest import MICRO

pytestmark = pytest.mark.onnx


def _server_with_rounds(num_rounds):
    server = FedKSeed(MICRO)
    gen = np.random.default_rng(0)
    for r in range(1, num_rounds + 1):
        keys = gen.choice(32, size=5, replace=False).astype(np.uint64)
        contribution = (1.0, keys, gen.standard_normal(5).astype(np.float32))
        server.apply(aggregate([contribution], round=r, lr=1e-3, seed_of_key=server.seed_of_key))
    return server


def test_run_key_is_the_torch_clients():
    assert run_key(MICRO) == zo_client.run_key(MICRO)


def test_device_replays_the_log_to_the_servers_exact_weights(micro_onnx):
    server = _server_with_rounds(3)
    device = DeviceClient(MICRO, micro_onnx, threads=1)

    device.sync(3, server.log)

    assert device.digest() == zo_client.state_digest(server.params)
    for name, p in server.params:
        assert np.array_equal(device.named[name], p.detach().numpy()), name


def test_a_gap_is_detected_and_full_weights_resync(micro_onnx):
    server = _server_with_rounds(3)
    device = DeviceClient(MICRO, micro_onnx, threads=1)

    with pytest.raises(OutOfSync) as info:
        device.sync(3, server.log[2:])
    device.sync(3, [], {name: p.detach().numpy() for name, p in server.params})

    assert (info.value.have, info.value.need) == (0, 3)
    assert device.digest() == zo_client.state_digest(server.params)


def test_device_steps_mirror_the_torch_client(micro_onnx):
    server = _server_with_rounds(2)
    device, torch_client = DeviceClient(MICRO, micro_onnx, threads=1), zo_client.ZOClient(MICRO)
    device.sync(2, server.log)
    torch_client.sync(2, server.log)

    report = device.train(round=3, partition_id=1, num_partitions=4)
    expected = torch_client.train(round=3, partition_id=1, num_partitions=4)

    assert report.keys.tolist() == expected.keys.tolist()  # the same seeded draws
    assert report.num_examples == expected.num_examples
    assert report.digest == expected.digest  # the synced weights, bit for bit
    # The same batches through two float32 implementations of one graph: the losses differ
    # by 0-2 ulps (ulp = 2.4e-7 at a loss of ~3.4), so g = (L+ - L-) / 2eps moves in steps
    # of 2.4e-7 / 2e-3 = 1.2e-4 (measured: at most 2.4e-4); 1e-3 allows ~8 ulps of loss.
    np.testing.assert_allclose(report.scalars, expected.scalars, rtol=0, atol=1e-3)
    assert report.train_loss == pytest.approx(expected.train_loss, rel=1e-5)
    device.sync(2, [])  # the same state again: undoes the local steps
    assert all(np.array_equal(p, b) for (_, p), (_, b) in zip(device.params, device.base))


def test_weights_exported_for_another_model_are_refused(micro_onnx, tmp_path):
    import dataclasses
    import shutil

    other = dataclasses.replace(MICRO, seed=1)
    for path in micro_onnx.parent.iterdir():
        shutil.copy(path, tmp_path / path.name)

    with pytest.raises(ValueError, match="re-export it for this run's config"):
        DeviceClient(other, tmp_path / micro_onnx.name)


def _through_the_wire(message: Message) -> Message:
    return message_from_proto(message_to_proto(message))


def test_device_app_asks_for_what_it_misses_and_then_matches_the_server(micro_onnx, tmp_path, monkeypatch):
    from fedtune.app.device_app import app

    config_path = tmp_path / "c.toml"
    config_path.write_text(dump_toml(MICRO))
    monkeypatch.setenv("FEDTUNE_CONFIG", str(config_path))
    monkeypatch.setenv("FEDTUNE_RUN_DIR", str(micro_onnx.parent))  # where <run dir>/model.onnx is
    # Outside a Flower process nobody has set the task identity messages are stamped with.
    set_task_identity(run_id=1, node_id=0, task_id=1, setattr=monkeypatch.setattr)
    server = _server_with_rounds(3)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 4},
                      state=RecordDict(), run_config={})

    # Round 4: the server thinks the node holds state 2 and sends only round 3's entry.
    first = Message(server.train_content(4, since=2), dst_node_id=7, message_type=MessageType.TRAIN)
    reply = app(_through_the_wire(first), context)
    assert reply.content[wire.STATE][wire.NEED_STATE] == 0  # a fresh device holds state 0
    second = Message(server.train_content(4, since=server._bridge(reply)), dst_node_id=7,
                     message_type=MessageType.TRAIN)
    reply = app(_through_the_wire(second), context)

    assert reply.content[wire.STATE][wire.DIGEST] == zo_client.state_digest(server.params)
    assert reply.content[wire.STATE][wire.ROUND] == 3
    keys, scalars = wire.decode_steps(reply.content[wire.STATE][wire.STEP_LIST], max_key=32, max_steps=3)
    assert len(keys) == 3 and np.all(np.isfinite(scalars))
