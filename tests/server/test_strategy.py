"""The FedKSeed strategy's front door: bad replies are rejected and counted, never applied."""


import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedtune import wire
from fedtune.config import parse_config
from fedtune.zo.client import state_digest
from server.strategy import FedKSeed
from server.strategy import SeedRoundStats as RoundStats

CFG = parse_config(
    {"model": {"config": "micro-llama"}, "data": {"num_examples": 100, "eval_examples": 8},
     "federation": {"num_clients": 2, "clients_per_round": 2, "min_replies": 1},
     "algorithm": {"num_candidates": 16, "local_steps": 4}}
)


@pytest.fixture
def server(task_identity):
    return FedKSeed(CFG)


def _reply(server, steps: bytes, digest=None, num_examples=10):
    request = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
    content = RecordDict({
        wire.STATE: ConfigRecord({wire.ROUND: 0, wire.DIGEST: digest or state_digest(server.params),
                                  wire.STEP_LIST: steps}),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: num_examples, wire.TRAIN_LOSS: 1.0}),
    })
    return Message(content, reply_to=request)


def _steps(keys, values, universe=16):
    return wire.encode_steps(np.array(keys, np.uint64), np.array(values, np.float32), universe)


def test_a_good_reply_is_accepted(server):
    stats = RoundStats()

    accepted = server._accept(_reply(server, _steps([1, 15], [0.5, -1.0])), stats)

    assert accepted is not None and accepted[0] == 10.0
    assert accepted[1].tolist() == [1, 15] and (stats.rejected, stats.sync_mismatches) == (0, 0)


@pytest.mark.parametrize(
    "steps",
    [
        _steps([16], [0.5], universe=32),  # seed index outside the pool of 16
        _steps([2], [float("inf")]),
        _steps([1] * 5, [0.1] * 5),  # more steps than configured
        b"\x01\x00",  # truncated
    ],
)
def test_bad_payloads_are_rejected_and_counted(server, steps):
    stats = RoundStats()

    assert server._accept(_reply(server, steps), stats) is None
    assert stats.rejected == 1


def test_a_client_with_other_weights_is_a_counted_sync_mismatch(server):
    stats = RoundStats()

    assert server._accept(_reply(server, _steps([1], [0.5]), digest="0" * 64), stats) is None
    assert (stats.rejected, stats.sync_mismatches) == (1, 1)


def test_zero_examples_is_rejected(server):
    stats = RoundStats()

    assert server._accept(_reply(server, _steps([1], [0.5]), num_examples=0), stats) is None
    assert stats.rejected == 1


def test_rejected_replies_leave_the_round_without_an_update(server):
    before = state_digest(server.params)

    server.aggregate_train(1, [_reply(server, _steps([99], [0.5], universe=128))])

    assert server.state_round == 1 and len(server.log[0].keys) == 0
    assert state_digest(server.params) == before
