"""Federated evaluation (``eval.federated``): clients score the global model on their own
held-out share, the server takes the example-weighted mean.

In process (the real strategies and client handlers on real ``Message`` objects, through
``tests/lora/conftest.py``'s grid) for the arithmetic and the failures; in Flower's real
simulation engine, through ``fedtune run``, for both client families end to end.
"""

import json
import math
import statistics

import pytest
from flwr.app import Error, Message, MessageType

from fedtune.client.zo_protocol import answer_evaluate, answer_train
from fedtune.config import ConfigError, parse_config
from fedtune.server.lora_strategy import FederatedLora
from fedtune.server.strategy import FedKSeed
from fedtune.workload import Workload, evaluate
from fedtune.zo.client import ZOClient
from tests.conftest import SMALL_LORA_CONFIG, run_cli
from tests.lora.conftest import InProcessGrid, micro_config

FED = ["eval.federated=true", "federation.num_clients=3", "federation.clients_per_round=3"]


def _zo_config(*overrides):
    return parse_config({
        "seed": 1, "model": {"config": "micro-llama"},
        "data": {"num_examples": 200, "eval_examples": 16, "max_length": 16},
        "federation": {"num_clients": 3, "clients_per_round": 3, "min_replies": 1},
        "algorithm": {"num_candidates": 16, "local_steps": 3, "batch_size": 4, "lr": 5e-4},
    }, list(overrides))


def _zo_run(cfg, rounds=2, fail_evaluate=()):
    """``rounds`` FedKSeed rounds in process; the nodes in ``fail_evaluate`` raise on evaluate."""
    client = ZOClient(cfg)  # one process-wide client, as in a simulation's worker

    def handle(msg, context):
        if msg.metadata.message_type != MessageType.EVALUATE:
            return answer_train(msg, context, cfg, client)
        if msg.metadata.dst_node_id in fail_evaluate:
            return Message(Error(code=1, reason="RuntimeError: out of memory"), reply_to=msg)
        return answer_evaluate(msg, context, client)

    grid = InProcessGrid(cfg)
    grid.handlers = {n: handle for n in grid.node_ids}
    strategy = FedKSeed(cfg)
    records = []
    strategy.start_rounds(grid, rounds, records.append, connect_timeout=1)
    return strategy, grid, records


def _lora_run(cfg, rounds=2, fail_evaluate=()):
    grid = InProcessGrid(cfg)
    for node in fail_evaluate:  # raises on evaluate, trains as usual
        grid.handlers[node] = _failing_evaluate(cfg, grid)
    strategy = FederatedLora(cfg)
    records = []
    strategy.start_rounds(grid, rounds, records.append, connect_timeout=1)
    return strategy, grid, records


def _failing_evaluate(cfg, grid):
    from fedtune.client.lora import train_lora

    def handle(msg, context):
        if msg.metadata.message_type == MessageType.EVALUATE:
            raise RuntimeError("evaluation crashed")
        return train_lora(cfg, msg, context, grid.run_dir)

    return handle


def _per_client(cfg, model, partitions):
    """Each partition's (examples, loss, accuracy) on its held-out share, computed here from the
    split and fedtune.workload.evaluate."""
    workload = Workload(cfg)
    train = workload.examples[0]
    per_client = []
    for p in partitions:
        held = workload.local_split(p, cfg.federation.num_clients)[1]
        scores = evaluate(model, workload.encode([train[i] for i in held]), 64, workload.device)
        per_client.append((len(held), scores["eval_loss"], scores["eval_accuracy"]))
    return per_client


def _by_hand(cfg, model, partitions):
    """The example-weighted mean of loss and accuracy over :func:`_per_client`, with the examples."""
    per_client = _per_client(cfg, model, partitions)
    total = sum(n for n, _, _ in per_client)
    loss = sum(n * v for n, v, _ in per_client) / total
    accuracy = sum(n * a for n, _, a in per_client) / total
    return total, loss, accuracy


def _spread(cfg, model, partitions):
    """The lowest, median and highest of the clients' own accuracies (:func:`_per_client`)."""
    own = [a for _, _, a in _per_client(cfg, model, partitions)]
    return min(own), statistics.median(own), max(own)


def _asked(grid, server_round):
    """The partitions the round's evaluate messages went to (the grid's node config says which)."""
    from fedtune import wire

    return sorted(grid.contexts[m.metadata.dst_node_id].node_config["partition-id"] for m in grid.sent
                  if m.metadata.message_type == MessageType.EVALUATE
                  and wire.read_int(m.content[wire.CONFIG], wire.ROUND) == server_round)


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("federated_fraction", 0), ("federated_fraction", 1.5),
                                            ("federated_fraction", "nan"), ("federated_holdout", 0),
                                            ("federated_holdout", 1), ("federated_holdout", -0.2)])
def test_bad_fractions_are_refused_in_one_line_naming_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        _zo_config("eval.federated=true", f"eval.{key}={value}")

    assert len(info.value.errors) == 1 and f"`eval.{key}`" in info.value.errors[0], info.value.errors


def test_its_keys_without_federated_evaluation_are_refused():
    with pytest.raises(ConfigError) as info:
        _zo_config("eval.federated_holdout=0.3")

    assert info.value.errors == [("`eval.federated_holdout` applies to `eval.federated = true`, got 0.3 with "
                                 "federated evaluation off; set eval.federated = true or remove eval.federated_holdout")]


def test_dp_and_device_clients_are_refused_with_federated_evaluation():
    with pytest.raises(ConfigError) as dp:
        _zo_config("eval.federated=true", "privacy.dp=central", "algorithm.weighting=uniform")
    with pytest.raises(ConfigError) as device:
        _zo_config("eval.federated=true", "ondevice.clients=1")

    assert [e for e in dp.value.errors if "eval.federated" in e] == dp.value.errors and len(dp.value.errors) == 1
    assert "privacy.dp" in dp.value.errors[0]
    assert len(device.value.errors) == 1 and "ondevice.clients" in device.value.errors[0]
    _zo_config("privacy.dp=central", "algorithm.weighting=uniform")  # each alone is fine
    _zo_config("eval.federated=true")


@pytest.mark.slow
def test_the_cli_refuses_federated_evaluation_under_dp_with_one_line_and_exit_2(small_config, tmp_path):
    path = small_config(name="dp")

    result = run_cli("run", path, "--set", "eval.federated=true", "--set", "privacy.dp=central",
                     "--set", "algorithm.weighting=uniform")

    assert result.returncode == 2, result.stdout + result.stderr
    assert "`eval.federated` with `privacy.dp` = 'central'" in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written


# --- the split --------------------------------------------------------------------------------


def test_off_the_partition_is_untouched_on_a_seeded_share_is_held_out():
    off, on = Workload(_zo_config()), Workload(_zo_config("eval.federated=true", "eval.federated_holdout=0.25"))

    for p in range(3):
        whole = off.partitions(3)[p].tolist()
        assert off.local_split(p, 3) == (whole, []) and off.partition(p, 3) == whole
        train, held = on.local_split(p, 3)
        assert sorted(train + held) == whole and not set(train) & set(held)
        assert len(held) == int(0.25 * len(whole))  # floor(holdout x n); every partition here has >= 4
        assert on.partition(p, 3) == train
        assert Workload(_zo_config("eval.federated=true", "eval.federated_holdout=0.25")).local_split(p, 3) == (
            train, held)  # seeded: every party draws the same split


# --- in process: the weighted mean, failures, the default -----------------------------------


@pytest.mark.slow
def test_zo_aggregate_is_the_example_weighted_mean_of_the_clients_own_scores(task_identity):
    cfg = _zo_config("eval.federated=true")

    strategy, grid, records = _zo_run(cfg)

    assert [("fed_eval_loss" in r) for r in records] == [True, True, True]  # round 0 too
    last = records[-1]
    assert _asked(grid, 2) == [0, 1, 2]  # fraction 1: every client of a round is asked
    examples, loss, accuracy = _by_hand(cfg, strategy.model, [0, 1, 2])
    assert last["fed_eval_examples"] == examples and last["fed_eval_clients"] == 3 and last["fed_eval_failed"] == 0
    # the same sums in another order: equal to float64 rounding
    assert last["fed_eval_loss"] == pytest.approx(loss, rel=1e-12)
    assert last["fed_eval_accuracy"] == pytest.approx(accuracy, rel=1e-12)
    assert all(r.get("sync_mismatches", 0) == 0 for r in records)  # every client scored the server's weights
    low, median, high = _spread(cfg, strategy.model, [0, 1, 2])
    assert (last["fed_eval_accuracy_min"], last["fed_eval_accuracy_median"], last["fed_eval_accuracy_max"]) == \
        pytest.approx((low, median, high), rel=1e-12)


@pytest.mark.slow
def test_lora_aggregate_is_the_example_weighted_mean_of_the_clients_own_scores(task_identity):
    cfg = micro_config("algorithm.name=fedit", *FED, "eval.metrics=[\"loss\", \"accuracy\", \"macro_f1\"]")

    strategy, grid, records = _lora_run(cfg)

    asked = _asked(grid, 2)
    assert asked == [0, 1, 2]
    examples, loss, accuracy = _by_hand(cfg, strategy.model, asked)
    last = records[-1]
    assert last["fed_eval_examples"] == examples and last["fed_eval_clients"] == 3
    assert last["fed_eval_loss"] == pytest.approx(loss, rel=1e-12)
    assert last["fed_eval_accuracy"] == pytest.approx(accuracy, rel=1e-12)
    assert 0 <= last["fed_eval_accuracy"] <= 1 and 0 <= last["fed_eval_macro_f1"] <= 1
    low, median, high = _spread(cfg, strategy.model, asked)
    assert (last["fed_eval_accuracy_min"], last["fed_eval_accuracy_median"], last["fed_eval_accuracy_max"]) == \
        pytest.approx((low, median, high), rel=1e-12)
    assert low <= last["fed_eval_accuracy"] <= high


@pytest.mark.slow
def test_a_fraction_asks_fewer_clients_on_a_stream_of_its_own(task_identity):
    cfg = micro_config("algorithm.name=fedit", "eval.federated=true", "federation.num_clients=4",
                       "eval.federated_fraction=0.5")

    _, grid, records = _lora_run(cfg, rounds=1)

    assert len(_asked(grid, 1)) == 2 == records[-1]["fed_eval_clients"]
    assert records[-1]["sampled"] == 3  # training's sample is as before


@pytest.mark.slow
@pytest.mark.parametrize("family", ["zo", "lora"])
def test_a_client_that_fails_evaluation_is_left_out_and_counted(task_identity, family):
    if family == "zo":
        cfg = _zo_config("eval.federated=true")
        strategy, _, records = _zo_run(cfg, rounds=1, fail_evaluate={InProcessGrid(cfg).node_ids[1]})
    else:
        cfg = micro_config("algorithm.name=fedit", *FED)
        strategy, _, records = _lora_run(cfg, rounds=1, fail_evaluate={InProcessGrid(cfg).node_ids[1]})

    last = records[-1]
    assert last["replies"] == 3  # training was not touched
    assert last["fed_eval_clients"] == 2 and last["fed_eval_failed"] == 1
    examples, loss, _ = _by_hand(cfg, strategy.model, [0, 2])
    assert last["fed_eval_examples"] == examples
    assert last["fed_eval_loss"] == pytest.approx(loss, rel=1e-12)


@pytest.mark.slow
def test_off_nothing_is_asked_and_no_key_is_written(task_identity):
    cfg = micro_config("algorithm.name=fedit")

    _, grid, records = _lora_run(cfg, rounds=1)

    assert not [m for m in grid.sent if m.metadata.message_type == MessageType.EVALUATE]
    assert not [k for r in records for k in r if k.startswith("fed_")]


# --- Flower's simulation engine, through `fedtune run` -----------------------------------------


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _holdouts(path):
    from fedtune.config import load_config

    cfg = load_config(path)
    workload = Workload(cfg)
    return sum(len(workload.local_split(p, cfg.federation.num_clients)[1]) for p in range(cfg.federation.num_clients))


def _check_run(result, run_dir, path, rounds):
    assert result.returncode == 0, result.stdout + result.stderr
    records = _records(run_dir)
    assert [r["round"] for r in records] == list(range(rounds + 1))
    for record in records:
        assert math.isfinite(record["fed_eval_loss"]) and 0 <= record["fed_eval_accuracy"] <= 1, record
        # all 3 clients asked (fraction 1, 3 per round of 3): the examples are their 3 holdouts
        assert record["fed_eval_clients"] == 3 and record["fed_eval_failed"] == 0
        assert record["fed_eval_examples"] == _holdouts(path)
        assert record["fed_eval_bytes_up_per_client"] > 0 and record["fed_eval_bytes_down_per_client"] > 0
    assert f"round {rounds}/{rounds}: train loss" in result.stdout and "fed eval loss" in result.stdout
    return records


@pytest.mark.slow
def test_zo_run_in_the_simulation_engine_writes_fed_eval_lines(small_config, tmp_path):
    path = small_config(name="fed-zo", rounds=2, num_clients=3, per_round=3, extra="[eval]\nfederated = true\n")

    result = run_cli("run", path, timeout=600)

    records = _check_run(result, tmp_path / "runs" / "fed-zo", path, 2)
    assert all(r["sync_mismatches"] == 0 and r["replies"] == 3 for r in records[1:])


@pytest.mark.slow
def test_lora_run_in_the_simulation_engine_writes_fed_eval_lines_and_tensorboard_scalars(tmp_path):
    path = tmp_path / "lora.toml"
    path.write_text(SMALL_LORA_CONFIG.format(name="fed-lora", output_dir=tmp_path / "runs", num_clients=3,
                                             rule="fedit", two_phase="false", method="none")
                    + "[eval]\nfederated = true\nfederated_holdout = 0.25\n")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli("run", path, "--set", "log.tensorboard=true", timeout=600)

    run_dir = tmp_path / "runs" / "fed-lora"
    records = _check_run(result, run_dir, path, 2)
    assert all(r["replies"] == 3 for r in records[1:])
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("fed_eval_loss")] == [
        (r["round"], pytest.approx(r["fed_eval_loss"])) for r in records]
