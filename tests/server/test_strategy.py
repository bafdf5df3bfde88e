"""The FedKSeed strategy: bad replies are rejected and counted, never applied; DP rounds clip, noise and account."""


import dataclasses
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedtune import wire
from fedtune._proto import fedtune_wire_pb2 as pb
from fedtune.config import ConfigError, parse_config
from fedtune.server.strategy import FedKSeed
from fedtune.server.strategy import SeedRoundStats as RoundStats
from fedtune.zo.client import state_digest

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
        wire.STATE: ConfigRecord({wire.ROUND: server.state_round, wire.DIGEST: digest or state_digest(server.params),
                                  wire.STEP_LIST: steps}),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: num_examples, wire.TRAIN_LOSS: 1.0}),
    })
    return Message(content, reply_to=request)


def _steps(keys, values, universe=16):
    return wire.encode_steps(np.array(keys, np.uint64), np.array(values, np.float32), universe)


def test_a_good_reply_is_accepted(server):
    stats = RoundStats()

    accepted = server.accept(_reply(server, _steps([1, 15], [0.5, -1.0])), stats)

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

    assert server.accept(_reply(server, steps), stats) is None
    assert stats.rejected == 1


def test_a_client_with_other_weights_is_a_counted_sync_mismatch(server):
    stats = RoundStats()

    assert server.accept(_reply(server, _steps([1], [0.5]), digest="0" * 64), stats) is None
    assert (stats.rejected, stats.sync_mismatches) == (1, 1)


def test_zero_examples_is_rejected(server):
    stats = RoundStats()

    assert server.accept(_reply(server, _steps([1], [0.5]), num_examples=0), stats) is None
    assert stats.rejected == 1


def test_rejected_replies_leave_the_round_without_an_update(server):
    before = state_digest(server.params)

    server.aggregate_train(1, [_reply(server, _steps([99], [0.5], universe=128))])

    assert server.state_round == 1 and len(server.log[0].keys) == 0
    assert state_digest(server.params) == before


def _dp(dp, noise_multiplier, update_bits=8):
    raw = {"model": {"config": "micro-llama"}, "data": {"num_examples": 100, "eval_examples": 8},
           "federation": {"num_clients": 4, "clients_per_round": 2, "min_replies": 1},
           "algorithm": {"num_candidates": 16, "local_steps": 4, "weighting": "uniform"},
           "privacy": {"dp": dp, "dp_clip": 1.0, "update_bits": update_bits}}
    cfg = parse_config(raw)
    # noise 0 is refused in a config (no privacy at all); the tests use it to see the clip alone
    return dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, noise_multiplier=noise_multiplier))


def _dp_round(server, steps):
    server.population, stats = 4, RoundStats(sampled=len(steps))  # as `sample` would leave them
    server.aggregate_train(server.state_round + 1, [_reply(server, s) for s in steps], stats)
    return server.log[-1], stats


def test_central_dp_in_clear_clips_each_client_at_the_server_then_averages(task_identity):
    server = FedKSeed(_dp("central", 0.0, update_bits=32))  # no noise, no rounding: the clipped mean itself

    update, stats = _dp_round(server, [_steps([1, 3], [3.0, 4.0]), _steps([3], [0.5])])  # norms 5 and 0.5

    # (0.6, 0.8) and 0.5, averaged: G_1 = 0.3, G_3 = (0.8 + 0.5) / 2
    assert update.keys.tolist() == [1, 3] and update.scalars.tolist() == pytest.approx([0.3, 0.65])
    assert stats.privacy["dp_epsilon"] is None and stats.privacy["dp_noise_multiplier"] == 0.0  # z = 0


def test_central_dp_noises_every_seed_and_its_epsilon_survives_a_restart(task_identity, tmp_path):
    # 32-bit scalars: at 8 bits a noised scalar that rounds to code 0 leaves the entry (one of
    # 14 untouched seeds does so in ~1 round of 10), which is the rounding's business, not the noise's
    server = FedKSeed(_dp("central", 1.0, update_bits=32), tmp_path)

    for _ in range(2):
        update, stats = _dp_round(server, [_steps([1], [0.5]), _steps([2], [0.5])])
    resumed = FedKSeed(_dp("central", 1.0, update_bits=32), tmp_path, resume=True)

    assert len(update.keys) == 16  # the server's noise reaches all K seeds: every party replays them
    assert stats.privacy["dp_epsilon"] == server.ledger.epsilon() > 0
    assert resumed.state_round == 2 and state_digest(resumed.params) == state_digest(server.params)
    assert resumed.ledger.releases == server.ledger.releases
    assert resumed.ledger.epsilon() == server.ledger.epsilon()


def test_a_dp_entry_is_logged_on_the_8_bit_grid_and_replayed_from_its_codes(task_identity, tmp_path):
    clear = FedKSeed(_dp("central", 0.0, update_bits=32))
    server = FedKSeed(_dp("central", 0.0), tmp_path)
    steps = [_steps([1, 3, 9], [3.0, 4.0, 0.001]), _steps([3, 5], [0.5, -0.2])]

    exact, _ = _dp_round(clear, steps)
    update, _ = _dp_round(server, steps)
    resumed = FedKSeed(_dp("central", 0.0), tmp_path, resume=True)

    msg = pb.SeedUpdate.FromString(server.encoded_log[-1])
    assert msg.scalars == b"" and len(msg.scalars_q8) == len(update.keys)  # one byte a key
    q, scale = wire.quantize_scalars_q8(exact.scalars)
    assert scale == np.float32(exact.scalars.max() / 127)
    # key 9 (0.0001 after clipping and averaging) rounds to code 0 and leaves the entry
    assert exact.keys.tolist() == [1, 3, 5, 9] and update.keys.tolist() == [1, 3, 5]
    np.testing.assert_array_equal(update.scalars, wire.dequantize_scalars_q8(q[:3], scale))
    assert np.max(np.abs(update.scalars - exact.scalars[:3])) <= scale / 2
    # the server replayed what it logged: a resumed server rebuilds the same weights from the codes
    assert resumed.log[-1].scalars.tolist() == update.scalars.tolist()
    assert state_digest(resumed.params) == state_digest(server.params) != state_digest(clear.params)


def test_local_dp_takes_a_step_per_candidate_and_counts_every_client_seen(task_identity):
    server = FedKSeed(_dp("local", 1.0))
    server.partitions = {5: 3}
    dense = _steps(range(16), [0.1] * 16)  # what a local-DP client sends: 16 > local_steps = 4

    update, stats = _dp_round(server, [dense, _steps([1], [float("nan")])])  # the second is rejected

    assert stats.replies == 1 and update.scalars.tolist() == pytest.approx([0.1] * 16)  # taken as sent
    # both replies reached the server (one node id here): a release of partition 3's vector
    assert server.ledger.releases[0].clients == ((3, 3),)


class _Pool:
    """The one grid call `sample` makes in simulation: the pool's node ids."""

    def get_node_ids(self):
        return [21, 22]


def test_only_central_dp_draws_its_sample_from_os_entropy(task_identity):
    def samples(dp):
        server = FedKSeed(_dp(dp, 1.0))
        server.assign_partitions = True
        return {tuple(server.partitions[n] for n in server.sample(_Pool(), 1)) for _ in range(20)}

    # 2 of 4 clients: 6 possible samples; 20 equal secret draws would have probability 6**-19
    assert len(samples("local")) == 1  # seeded by (seed, round): anyone with the config knows it
    assert len(samples("central")) > 1  # amplification by sampling needs a sample nobody else knows


def test_a_distributed_round_is_accounted_with_the_noise_shares_actually_summed(task_identity):
    cfg = parse_config({"model": {"config": "micro-llama"}, "data": {"num_examples": 100, "eval_examples": 8},
                        "federation": {"num_clients": 4, "clients_per_round": 4},
                        "algorithm": {"num_candidates": 16, "weighting": "uniform"},
                        "privacy": {"secagg": True, "dp": "distributed", "noise_multiplier": 2.0}})
    server = FedKSeed(cfg)
    server.population, server.partitions = 4, {21: 0, 22: 1, 23: 2, 24: 3}
    stats = RoundStats(sampled=4)

    server.account(1, stats, [[21, 23]])  # two of the four masked vectors made it into the sum

    # 2 of 4 noise shares: std 2 C sqrt(2 / 4)
    assert stats.privacy["dp_noise_multiplier"] == pytest.approx(2.0 * math.sqrt(0.5))
    assert server.ledger.releases[0].clients == ((0, 2),)
    assert stats.privacy["dp_epsilon"] == server.ledger.epsilon() > 0


def _momentum(beta):
    raw = {"model": {"config": "micro-llama"}, "data": {"num_examples": 100, "eval_examples": 8},
           "federation": {"num_clients": 2, "clients_per_round": 2, "min_replies": 1},
           "algorithm": {"num_candidates": 16, "local_steps": 4, "server_momentum": beta}}
    return parse_config(raw)


def _round(server, steps):
    server.aggregate_train(server.state_round + 1, [_reply(server, s) for s in steps], RoundStats())
    return server.log[-1]


ROUNDS = [[_steps([1, 15], [0.5, -1.0]), _steps([3], [2.0])], [_steps([1], [0.25])], [_steps([2, 3], [1.0, 1.0])]]


def test_server_momentum_logs_beta_times_the_last_entry_plus_the_rounds_mean(task_identity, tmp_path):
    plain, server = FedKSeed(_momentum(0.0)), FedKSeed(_momentum(0.5), tmp_path)

    raw = [_round(plain, steps) for steps in ROUNDS]
    logged = [_round(server, steps) for steps in ROUNDS]

    expected = np.zeros(16)
    for g, m in zip(raw, logged):
        expected *= 0.5
        np.add.at(expected, g.keys.astype(np.int64), g.scalars.astype(np.float64))
        keys = np.flatnonzero(expected.astype(np.float32))
        assert m.keys.tolist() == keys.tolist()
        assert m.scalars.tolist() == expected[keys].astype(np.float32).tolist()
    assert logged[1].keys.tolist() == [1, 3, 15]  # round 1's seeds carry on into round 2
    with pytest.raises(ConfigError, match="`algorithm.server_momentum` needs a pool of seeds"):
        parse_config({"model": {"config": "micro-llama"}, "algorithm": {"name": "mezo", "server_momentum": 0.9}})


def test_a_resumed_server_continues_the_momentum_from_the_seed_log(task_identity, tmp_path):
    whole = FedKSeed(_momentum(0.9))
    for steps in ROUNDS:
        _round(whole, steps)
    crashed = FedKSeed(_momentum(0.9), tmp_path)
    for steps in ROUNDS[:2]:
        _round(crashed, steps)

    resumed = FedKSeed(_momentum(0.9), tmp_path, resume=True)
    last = _round(resumed, ROUNDS[2])

    assert last.keys.tolist() == whole.log[-1].keys.tolist()
    assert last.scalars.tolist() == whole.log[-1].scalars.tolist()
    assert state_digest(resumed.params) == state_digest(whole.params)
