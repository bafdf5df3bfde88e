"""The LoRA strategy and client handler, round by round, through an in-process grid."""

import logging
import math

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType, MetricRecord, RecordDict

from fedtune import wire
from fedtune.lora.payload import pack
from fedtune.server.lora_strategy import FederatedLora
from tests.lora.conftest import InProcessGrid, micro_config

KEYS = {"train_loss", "sampled", "replies", "failed", "rejected", "bias_before", "bias_after",
        "bytes_up_per_client", "bytes_down_per_client", "eval_loss", "eval_accuracy", "round_s", "elapsed_s"}


def _run(cfg, rounds=2, handlers=None):
    strategy = FederatedLora(cfg)
    grid = InProcessGrid(cfg, handlers)
    records = []
    strategy.start_rounds(grid, rounds, records.append, connect_timeout=1)
    return strategy, grid, records


@pytest.mark.parametrize("rule", ["fedit", "ffa-lora", "lorafair"])
def test_each_rule_runs_rounds_and_reports_the_fedkseed_record_keys(task_identity, rule):
    strategy, _, records = _run(micro_config(f"algorithm.name={rule}"))

    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        assert KEYS <= set(record)
        assert record["sampled"] == record["replies"] == 3
        assert record["failed"] == record["rejected"] == 0
        assert 0 <= record["eval_accuracy"] <= 1 and math.isfinite(record["train_loss"])
        assert record["bias_after"] <= record["bias_before"] + 1e-12
    if rule == "ffa-lora":
        assert records[-1]["bias_before"] < 1e-6  # float32 rounding of one shared A
    if rule == "lorafair":
        assert records[-1]["bias_after"] < records[-1]["bias_before"]
    b_names = [n for n in strategy.state if "lora_B" in n]
    assert any(torch.count_nonzero(strategy.state[n]) for n in b_names)  # the adapter moved


def test_ffa_lora_sends_half_the_adapter(task_identity):
    _, _, fedit = _run(micro_config("algorithm.name=fedit"), rounds=1)
    _, _, ffa = _run(micro_config("algorithm.name=ffa-lora"), rounds=1)

    # micro-bert, r=4: A and B are 4 x (4 x 64) floats each; the head 4 x 64 + 4. FFA-LoRA
    # leaves A out both ways: 1024 of 2308 floats, 4 bytes each, plus the 4 arrays' names
    # and headers (~120 bytes each in Flower's protobuf).
    saved = fedit[1]["bytes_up_per_client"] - ffa[1]["bytes_up_per_client"]
    assert 4 * 1024 + 4 * 60 <= saved <= 4 * 1024 + 4 * 300
    assert fedit[1]["bytes_down_per_client"] - ffa[1]["bytes_down_per_client"] == pytest.approx(saved, abs=100)


def _wrong_rank_client(msg, context):
    """A client built with lora.rank = 2: right modules, wrong shapes."""
    state = {}
    for name, array in wire.decode_bundle(msg.content[wire.ADAPTER][wire.BUNDLE], None, "x").items():
        shape = list(array.shape)
        if name.endswith("lora_A.weight"):
            shape[0] = 2
        elif name.endswith("lora_B.weight"):
            shape[1] = 2
        state[name] = torch.zeros(shape)
    content = RecordDict({wire.ADAPTER: pack(state),
                          wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 1.0})})
    return Message(content, reply_to=msg)


def test_a_client_with_another_rank_is_rejected_and_the_round_goes_on(task_identity, caplog):
    cfg = micro_config("algorithm.name=fedit", "federation.clients_per_round=4")
    bad_node = InProcessGrid(cfg).node_ids[1]

    with caplog.at_level(logging.WARNING, logger="fedtune.server.lora_strategy"):
        _, _, records = _run(cfg, rounds=1, handlers={bad_node: _wrong_rank_client})

    assert records[1]["sampled"] == 4 and records[1]["replies"] == 3 and records[1]["rejected"] == 1
    assert f"rejected the update of client {bad_node}" in caplog.text
    assert "lora_A.weight` has shape (2, 64), expected (4, 64)" in caplog.text


def test_two_phase_lorafair_reaches_the_clear_text_adapter(task_identity):
    clear, _, clear_records = _run(micro_config(), rounds=1)
    sums, grid, sums_records = _run(micro_config("lora.two_phase=true"), rounds=1)

    for name, tensor in clear.state.items():
        if "lora_B" in name:
            # ΔB from sums of float32 client projections vs float64 server-side ones:
            # equal up to float32 rounding (see tests/lora/test_rules.py).
            assert torch.allclose(sums.state[name], tensor, rtol=1e-5, atol=1e-6), name
        else:
            assert torch.equal(sums.state[name], tensor), name
    phases = [int(m.content[wire.CONFIG][wire.PHASE]) for m in grid.sent if wire.CONFIG in m.content
              and wire.PHASE in m.content[wire.CONFIG]]
    assert phases == [1, 1, 1, 2, 2, 2]
    assert all(wire.PENDING not in c.state for c in grid.contexts.values())  # cleaned up after phase 2
    assert math.isnan(sums_records[1]["bias_before"])  # ΣpBA is never formed from sums
    assert sums_records[1]["bytes_up_per_client"] > clear_records[1]["bytes_up_per_client"]


def test_a_phase_two_failure_is_counted_and_the_rest_is_summed(task_identity):
    cfg = micro_config("lora.two_phase=true")
    grid = InProcessGrid(cfg)
    victim = grid.node_ids[0]
    strategy = FederatedLora(cfg)
    records = []
    original = grid._handle

    def drop_pending(msg):
        if msg.metadata.dst_node_id == victim and wire.A_MEAN in msg.content:
            grid.contexts[victim].state = RecordDict()  # as if the node restarted between phases
        return original(msg)

    grid._handle = drop_pending
    strategy.start_rounds(grid, 1, records.append, connect_timeout=1)

    sampled_victim = any(m.metadata.dst_node_id == victim for m in grid.sent if wire.A_MEAN in m.content)
    assert records[1]["failed"] == (1 if sampled_victim else 0)
    assert records[1]["replies"] == 3


@pytest.mark.parametrize("method", ["topk", "quantize", "topk-quantize", "ternary"])
def test_compressed_updates_move_the_adapter_and_shrink_the_upload(task_identity, method):
    dense_cfg = micro_config("algorithm.name=fedit", "federation.clients_per_round=4")
    cfg = micro_config("algorithm.name=fedit", "federation.clients_per_round=4",
                       f"compress.method={method}", "compress.topk=0.1", "compress.bits=4")

    _, _, dense = _run(dense_cfg, rounds=2)
    strategy, grid, records = _run(cfg, rounds=2)

    for record in records[1:]:
        assert record["replies"] == 4 and record["rejected"] == 0
        assert record["bytes_up_per_client"] < dense[1]["bytes_up_per_client"] / 3
        assert record["bytes_down_per_client"] == pytest.approx(dense[1]["bytes_down_per_client"], rel=0.05)
    assert any(torch.count_nonzero(strategy.state[n]) for n in strategy.state if "lora_B" in n)
    # every node was sampled in both rounds and carries its error-feedback residual
    for context in grid.contexts.values():
        residual = context.state[wire.RESIDUAL]
        assert set(residual.keys()) == set(strategy.uplink)
        assert any(np.abs(a.numpy()).max() > 0 for a in residual.values())


def test_error_feedback_sends_what_the_last_round_dropped(task_identity):
    """Through the real handler and node state: round 2 uploads compress(update_2 + residual_1)."""
    from flwr.app import ConfigRecord, Context

    from fedtune.client.lora import train_lora

    cfg = micro_config("algorithm.name=fedit", "compress.method=topk", "compress.topk=0.05")
    server = FederatedLora(cfg)

    def message(server_round):
        config = ConfigRecord({wire.ROUND: server_round, wire.RUN_KEY: server.run_key, wire.PHASE: 1})
        content = RecordDict({wire.CONFIG: config, wire.ADAPTER: pack({n: server.state[n] for n in server.uplink})})
        return Message(content, dst_node_id=5, message_type=MessageType.TRAIN)

    def context():
        return Context(1, 5, {"partition-id": 1, "num-partitions": 4}, RecordDict(), {})

    def sent(reply):
        return {n: c.decompress() for n, c in wire.decode_bundle(reply.content[wire.ADAPTER][wire.BUNDLE],
                                                                 None, "x").items()}

    def residual(ctx):
        return {n: a.numpy() for n, a in ctx.state[wire.RESIDUAL].items()}

    carried = context()
    train_lora(cfg, message(1), carried)
    residual_1 = residual(carried)
    upload_2 = sent(train_lora(cfg, message(2), carried))
    fresh = context()  # the same round 2 with nothing carried over
    upload_fresh = sent(train_lora(cfg, message(2), fresh))

    assert any(np.abs(r).max() > 0 for r in residual_1.values())
    for name in upload_2:
        # both sides: what was sent + what is kept == what there was to send
        np.testing.assert_allclose(upload_2[name] + residual(carried)[name] - residual_1[name],
                                   upload_fresh[name] + residual(fresh)[name], atol=1e-6)
    assert any(not np.array_equal(upload_2[n], upload_fresh[n]) for n in upload_2)


def _train_partitions(grid):
    """The partitions each round's train messages named, round by round (phase 1 only)."""
    from fedtune.client.zo_protocol import partition_of

    rounds = {}
    for m in grid.sent:
        config = m.content[wire.CONFIG]
        if m.metadata.message_type == MessageType.TRAIN and config.get(wire.PHASE, 1) == 1:
            partition = partition_of(m, grid.contexts[m.metadata.dst_node_id])
            rounds.setdefault(int(config[wire.ROUND]), []).append(partition)
    return rounds


def test_in_simulation_a_pool_of_nodes_plays_the_sampled_partitions(task_identity, tmp_path):
    cfg = micro_config("algorithm.name=fedit", "federation.num_clients=12", "federation.clients_per_round=3",
                       "compress.method=topk", "compress.topk=0.1")
    asked = FederatedLora(cfg)  # the whole population as nodes, each asked its partition
    asked_grid = InProcessGrid(cfg)
    asked.start_rounds(asked_grid, 3, lambda record: None, connect_timeout=1)
    pooled = FederatedLora(cfg)
    pooled.assign_partitions = True
    grid = InProcessGrid(cfg, num_nodes=cfg.federation.simulated_nodes, run_dir=tmp_path)
    pooled.start_rounds(grid, 3, lambda record: None, connect_timeout=1)

    assert cfg.federation.simulated_nodes == 3
    assert not [m for m in grid.sent if m.metadata.message_type == MessageType.QUERY]
    # the same seeded sample of the 12 clients, each played by one of the 3 nodes
    assert _train_partitions(grid) == _train_partitions(asked_grid)
    assert len({p for ps in _train_partitions(grid).values() for p, _ in ps}) > 3
    assert all(n == 12 for ps in _train_partitions(grid).values() for _, n in ps)
    # the clients' error-feedback residuals are on disk, one per client that trained; none in node state
    trained = sorted({p for ps in _train_partitions(grid).values() for p, _ in ps})
    files = sorted(f.name for f in (tmp_path / "client-state").iterdir())
    assert files == [f"{p:06d}.residual.safetensors" for p in trained]
    assert not any(wire.RESIDUAL in c.state for c in grid.contexts.values())
    for name in pooled.state:  # and the pooled run computed what the asked one did
        torch.testing.assert_close(pooled.state[name], asked.state[name], rtol=0, atol=0)


def test_an_assigned_partition_overrides_the_node_config(task_identity):
    from flwr.app import ConfigRecord, Context

    from fedtune.client.zo_protocol import partition_of

    context = Context(1, 5, {"partition-id": 3, "num-partitions": 4}, RecordDict(), {})
    plain = Message(RecordDict({wire.CONFIG: ConfigRecord({wire.ROUND: 1})}), dst_node_id=5,
                    message_type=MessageType.TRAIN)
    assigned = Message(RecordDict({wire.CONFIG: ConfigRecord({wire.PARTITION: 7, wire.NUM_PARTITIONS: 10})}),
                       dst_node_id=5, message_type=MessageType.TRAIN)

    assert partition_of(plain, context) == (3, 4)
    assert partition_of(assigned, context) == (7, 10)
