"""A deployed node's weight cache (fedtune/client/node_cache.py): a fresh ClientApp process per
message, as in Flower's deployment engine, resumes from its node's disk instead of state 0."""

import os
import time

import numpy as np

from fedtune.client.node_cache import CACHE_DIR, CACHE_KEEP, cache_path, keep_of, prune, restore, store
from fedtune.client.zo_protocol import answer_train
from fedtune.config import parse_config
from fedtune.server.strategy import FedKSeed
from fedtune.zo.client import ZOClient
from tests.lora.conftest import InProcessGrid

CFG = parse_config(
    {"model": {"config": "micro-llama"}, "data": {"num_examples": 120, "eval_examples": 8},
     "federation": {"num_clients": 3, "clients_per_round": 3, "min_replies": 1},
     "algorithm": {"num_candidates": 16, "local_steps": 3}}
)


def _fresh_process(msg, context):
    """Every message in a new client, at the initial weights: what a fresh process builds."""
    return answer_train(msg, context, CFG, ZOClient(CFG))


def _run(tmp_path, cache: bool, rounds=4):
    grid = InProcessGrid(CFG, handlers=dict.fromkeys(range(101, 101 + 7 * 3, 7), _fresh_process))
    if cache:
        for node, context in grid.contexts.items():
            context.node_config[CACHE_DIR] = str(tmp_path / f"node-{node}")
    strategy = FedKSeed(CFG)
    records = []
    strategy.start_rounds(grid, rounds, records.append, connect_timeout=1)
    return strategy, grid, records[1:]


def test_fresh_processes_resume_from_the_node_cache_instead_of_asking_for_the_log(task_identity, tmp_path):
    _, _, without = _run(tmp_path, cache=False)
    strategy, grid, with_cache = _run(tmp_path, cache=True)

    # without a cache every fresh process holds state 0; from round 3 on, the server sends
    # only what a node has not confirmed, and each one asks for the rest
    assert [r["resynced"] for r in without] == [0, 0, 3, 3]
    # with it, each node's last process left its synced weights on the node's disk
    assert [r["resynced"] for r in with_cache] == [0, 0, 0, 0]
    assert all(r["replies"] == 3 and r["rejected"] == r["sync_mismatches"] == 0 for r in with_cache)
    for node, context in grid.contexts.items():
        assert cache_path(context, ZOClient(CFG)).is_file(), node
    # the runs are the same run: the cache changes how a client gets there, not where
    plain, _, _ = _run(tmp_path / "again", cache=False)
    for (name, a), (_, b) in zip(strategy.params, plain.params, strict=True):
        assert a.equal(b), name


def test_a_cache_of_another_run_or_a_later_state_is_ignored(task_identity, tmp_path):
    client = ZOClient(CFG)
    path = tmp_path / f"{client.key}.safetensors"
    initial = {name: t.detach().clone() for name, t in client.base}
    client.synced_round = 3
    for _, t in client.base:
        t.add_(1.0)
    store(path, client)

    fresh = ZOClient(CFG)
    restore(path, fresh, state_round=2)  # the server is at state 2: a cache of state 3 is not ours
    assert fresh.synced_round == 0 and all(t.equal(initial[n]) for n, t in fresh.base)
    other = tmp_path / "other.safetensors"
    other.write_bytes(path.read_bytes().replace(client.key.encode(), b"0" * len(client.key)))
    restore(other, fresh, state_round=5)  # another run's key in the metadata
    assert fresh.synced_round == 0
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    restore(tmp_path / "junk.safetensors", fresh, state_round=5)
    assert fresh.synced_round == 0

    restore(path, fresh, state_round=5)
    assert fresh.synced_round == 3
    for name, t in fresh.base:
        np.testing.assert_array_equal(t.numpy(), initial[name].numpy() + 1.0)


def test_a_cache_with_other_tensors_is_ignored_before_anything_is_overwritten(task_identity, tmp_path):
    from safetensors.numpy import save_file

    client = ZOClient(CFG)
    initial = {name: t.detach().clone() for name, t in client.base}
    arrays = {name: np.ones(tuple(t.shape), np.float32) for name, t in client.base}
    arrays.pop(next(iter(arrays)))  # one tensor missing: the file of another model
    path = tmp_path / "cache.safetensors"
    save_file(arrays, str(path), metadata={"run-key": client.key, "round": "2"})

    restore(path, client, state_round=4)

    assert client.synced_round == 0 and all(t.equal(initial[n]) for n, t in client.base)


def test_the_cache_keeps_the_newest_runs_and_clears_stale_temporary_files(task_identity, tmp_path):
    now = time.time()
    for age, name in enumerate(["run-a", "run-b", "run-c"], start=1):  # run-a newest
        (tmp_path / f"{name}.safetensors").write_bytes(b"x")
        os.utime(tmp_path / f"{name}.safetensors", (now - 60 * age, now - 60 * age))
    stale, fresh = tmp_path / "run-c.safetensorsab12.tmp", tmp_path / "run-a.safetensorscd34.tmp"
    for path, age in ((stale, 2 * 3600), (fresh, 10)):  # a killed write long ago; one under way
        path.write_bytes(b"x")
        os.utime(path, (now - age, now - age))
    client = ZOClient(CFG)
    client.synced_round = 1

    store(tmp_path / f"{client.key}.safetensors", client, keep=2)

    # this run's file (just written) and the newest other run's stay; the older runs go, and
    # so does the temporary file nobody is writing any more
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{client.key}.safetensors", "run-a.safetensors", fresh.name])
    assert prune(tmp_path, keep=1) == [tmp_path / "run-a.safetensors"]
    assert (tmp_path / f"{client.key}.safetensors").is_file()


def test_the_node_config_says_how_many_runs_to_keep():
    from flwr.app import Context, RecordDict

    def context(node_config):
        return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})

    assert keep_of(context({})) == 2
    assert keep_of(context({CACHE_KEEP: 5})) == 5
    assert keep_of(context({CACHE_KEEP: 0})) == 1  # never the run being written
