"""Each Flower internal fedtune/_flwr_compat.py touches still exists and behaves as fedtune relies on.

A Flower upgrade that moves or changes one of them fails here, by name, before it fails a
simulation in some far-off way.
"""

from __future__ import annotations

import dataclasses
import inspect
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedtune import _flwr_compat as compat


def _message() -> Message:
    content = RecordDict({"c": ConfigRecord({"x": b"\x01" * 10}), "a": ArrayRecord({"w": Array(np.ones(3, np.float32))})})
    return Message(content, dst_node_id=5, message_type=MessageType.TRAIN)


def test_set_task_identity_lets_a_message_be_built_outside_a_run(monkeypatch):
    compat.set_task_identity(run_id=7, node_id=3, task_id=2, setattr=monkeypatch.setattr)

    message = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)

    assert message.metadata.run_id == 7
    assert (compat.TaskIdentity.run_id, compat.TaskIdentity.node_id, compat.TaskIdentity.task_id) == (7, 3, 2)


def test_message_proto_round_trip_keeps_the_content(task_identity):
    message = _message()

    back = compat.message_from_proto(compat.ProtoMessage.FromString(
        compat.message_to_proto(message).SerializeToString()))

    assert back.content["c"]["x"] == b"\x01" * 10
    assert back.content["a"]["w"].numpy().tolist() == [1.0, 1.0, 1.0]


def test_remove_content_keeps_the_metadata(task_identity):
    message = _message()

    header = compat.remove_content_from_message(message)

    # an empty RecordDict in its place: the header travels without the records
    assert len(header.content) == 0 and header.metadata.dst_node_id == 5 and len(message.content) == 2


def test_object_tree_lists_every_record_and_the_message(task_identity):
    message = _message()

    objects = compat.get_all_nested_objects(message)
    tree = compat.get_object_tree(message)

    # message, its RecordDict, 2 records, 1 array, 1 array chunk: each an object on the wire
    assert len(objects) == 6 and message.object_id in objects and tree.object_id == message.object_id
    assert all(hasattr(obj, "deflate") for obj in objects.values())


def test_the_fleet_protobufs_fedtune_sizes_exist():
    node = compat.node_pb2.Node(node_id=1)

    assert compat.fleet_pb2.PullMessagesRequest(node=node).ByteSize() > 0
    for name in ("PushMessagesRequest", "PushMessagesResponse", "PullMessagesResponse"):
        assert hasattr(compat.fleet_pb2, name)
    for name in ("PullObjectRequest", "PullObjectResponse", "PushObjectRequest", "PushObjectResponse",
                 "ConfirmMessageReceivedRequest", "ConfirmMessageReceivedResponse", "ObjectTree"):
        assert hasattr(compat.message_pb2, name)


def test_dp_building_blocks_clip_in_place_and_scale_the_noise():
    vectors = [np.array([3.0, 4.0])]

    compat.clip_inputs_inplace(vectors, 1.0)

    assert vectors[0].tolist() == pytest.approx([0.6, 0.8])  # norm 5 scaled to 1
    assert compat.compute_stdv(1.5, 2.0, 4) == pytest.approx(1.5 * 2.0 / 4)  # z * C / n


def test_fit_content_round_trips_the_vector_and_weight():
    vector = np.array([0.5, -1.25, 3.0])

    back, weight = compat.fit_vector(compat.fit_content(vector, 7))

    assert back.tolist() == vector.tolist() and weight == 7


def test_masked_arrays_reads_what_secaggplus_mod_writes(task_identity):
    masked = [np.array([1], np.int64), np.array([4, 5, 6], np.int64)]
    configs = ConfigRecord({compat.SecAggKey.MASKED_PARAMETERS: [compat.ndarray_to_bytes(a) for a in masked]})
    reply = Message(RecordDict({compat.RECORD_KEY_CONFIGS: configs}), dst_node_id=5, message_type=MessageType.TRAIN)
    other = Message(RecordDict({compat.RECORD_KEY_CONFIGS: ConfigRecord({compat.SecAggKey.STAGE: "setup"})}),
                    dst_node_id=5, message_type=MessageType.TRAIN)

    arrays = compat.masked_arrays(reply)

    assert arrays is not None and [a.tolist() for a in arrays] == [[1], [4, 5, 6]]
    assert compat.masked_arrays(other) is None


def test_quantisation_round_trips_within_one_step():
    values = [np.array([-8.0, -1.0, 0.0, 0.3, 8.0])]

    back = compat.dequantize(compat.quantize(values, 8.0, 2**22), 8.0, 2**22)[0]

    # one quantisation step: 2 x clipping_range / quantization_range
    assert np.abs(back - values[0]).max() <= 16.0 / 2**22
    assert compat.Stage.COLLECT_MASKED_VECTORS and compat.Stage.UNMASK


def test_the_secaggplus_mod_and_workflow_have_the_hooks_fedtune_uses():
    # the mod is called as (msg, context, call_next); the workflow's setup stage is where
    # secagg_plus_mean swaps in fedtune's train content, through WorkflowState.nid_to_fitins;
    # after the share-keys stage it narrows the sampled and neighbour sets to the active nodes
    assert list(inspect.signature(compat.secaggplus_mod).parameters) == ["msg", "ctxt", "call_next"]
    assert {"setup_stage", "share_keys_stage"} <= set(vars(compat.SecAggPlusWorkflow))
    assert {"nid_to_fitins", "sampled_node_ids", "active_node_ids", "nid_to_neighbours"} <= {
        f.name for f in dataclasses.fields(compat.WorkflowState)}
    params = inspect.signature(compat.SecAggPlusWorkflow.__init__).parameters
    assert {"num_shares", "reconstruction_threshold", "max_weight", "clipping_range", "quantization_range",
            "modulus_range", "timeout"} <= set(params)
    assert list(inspect.signature(compat.GridClientProxy.__init__).parameters) == ["self", "node_id", "grid", "run_id"]
    assert compat.ClientAppCallable is not None


def test_the_superexec_pieces_load_on_demand():
    import importlib

    loop = importlib.import_module("flwr.supercore.superexec.run_superexec")
    cli = importlib.import_module("flwr.supercore.cli.flower_superexec")

    assert callable(loop.get_executor) and callable(cli.flower_superexec)
    assert issubclass(compat.SubprocessExecutor, object) and hasattr(compat.SubprocessExecutor, "launch")
    assert callable(compat.LaunchResult.accepted) and callable(compat.LaunchResult.failed)
    assert compat.TaskType.CLIENT_APP
    assert {"task_type", "runtime_api_address", "token", "insecure", "root_certificates_path", "parent_pid",
            "runtime_dependency_install", "suppress_output", "task_id"} <= {
        f.name for f in dataclasses.fields(compat.ExecutionSpec)}
    assert compat.validate_and_resolve_root_certificates(None, True) is None
    assert isinstance(compat.exit_handler.registered_exit_handlers, list)
    assert {"runtime_api_address", "token", "insecure", "certificates", "parent_pid",
            "runtime_dependency_install"} <= set(inspect.signature(compat.run_clientapp).parameters)
    with pytest.raises(AttributeError):
        compat.not_a_flower_name  # noqa: B018


# --- the simulation with a run config ------------------------------------------------------------

_SEEN: dict[str, dict] = {}


def _make_apps():
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    server, client = ServerApp(), ClientApp()

    @client.query()
    def echo(msg, context):  # the node's run config, sent back
        return Message(RecordDict({"rc": ConfigRecord(dict(context.run_config))}), reply_to=msg)

    @server.main()
    def main(grid, context):
        _SEEN["server"] = dict(context.run_config)
        deadline = time.monotonic() + 60
        nodes = list(grid.get_node_ids())
        while not nodes and time.monotonic() < deadline:  # the simulated nodes register as the engine starts
            time.sleep(0.1)
            nodes = list(grid.get_node_ids())
        replies = grid.send_and_receive(
            [Message(RecordDict(), dst_node_id=nodes[0], message_type=MessageType.QUERY)], timeout=120
        )
        _SEEN["client"] = dict(replies[0].content["rc"])

    return server, client


@pytest.mark.slow
def test_run_simulation_gives_every_app_the_run_config():
    from fedtune.app import APP_DIR

    server, client = _make_apps()
    run_config = {"config": "/x/config.toml", "set": "", "run-dir": "/x", "resume": True}

    compat.run_simulation(server, client, num_supernodes=1, app_dir=str(APP_DIR), run_config=run_config,
                          backend_config={"client_resources": {"num_cpus": 1},
                                          "init_args": {"logging_level": "ERROR", "include_dashboard": False}})

    for side in ("server", "client"):
        assert {k: _SEEN[side][k] for k in run_config} == run_config, side


def test_run_simulation_refuses_a_key_the_app_does_not_declare():
    from fedtune.app import APP_DIR

    with pytest.raises(ValueError, match="Key 'nope' is not present"):
        compat.run_simulation(None, None, num_supernodes=1, app_dir=str(APP_DIR), run_config={"nope": 1},
                              backend_config={})
