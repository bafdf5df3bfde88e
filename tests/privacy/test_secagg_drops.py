"""SecAgg+ rounds in which clients die at each stage of the protocol, in real Flower
simulations: up to the threshold the round sums the survivors' vectors and the model
moves; beyond it the round halts and says so.

tests/privacy/secagg_drop_run.py runs the real ServerApp and ClientApp, drops the chosen
simulation nodes at the chosen stage and records each client's clear vector and what
SecAgg+ gave the server.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedtune import wire
from fedtune.config import load_config
from fedtune.privacy import SecAggSettings, error_bound
from fedtune.zo.seedlog import SeedLog
from tests.conftest import REPO, SMALL_CONFIG, SMALL_LORA_CONFIG

STAGES = ("setup", "share_keys", "collect", "unmask")  # the secagg_dropped_<stage> metrics
FLOWER_STAGE = {"setup": "setup", "share_keys": "share_keys", "collect": "collect_masked_vectors",
                "unmask": "unmask"}


def _seed_config(tmp_path, clients):
    text = SMALL_CONFIG.format(name="drops", rounds=1, output_dir=tmp_path / "runs", num_clients=clients,
                               per_round=clients, algorithm="fedkseed")
    return text + "\n[privacy]\nsecagg = true\n"


def _run(tmp_path, config_text, drops):
    """One simulation with ``drops`` (Flower stage -> simulation node indices); returns
    (round 1's record, the run directory, the recording directory, the run's log)."""
    config, out = tmp_path / "drops.toml", tmp_path / "out"
    config.write_text(config_text)
    out.mkdir()
    args = [f"{stage}={','.join(map(str, nodes))}" for stage, nodes in drops.items()]

    result = subprocess.run([sys.executable, str(REPO / "tests/privacy/secagg_drop_run.py"), str(config), str(out),
                             *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = Path(json.loads((out / "server.json").read_text())["run_dir"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1]
    return records[1], run_dir, out, result.stdout + result.stderr


def _clear_mean(out, expected_clients):
    """The weighted mean of the round's clear vectors, and their weights; asserts how many
    clients trained (those that got the collect stage's message and answered it)."""
    files = sorted(out.glob("clear-r1-p*.npz"))
    assert len(files) == expected_clients
    clear = [np.load(f) for f in files]
    weights = [float(f["weight"]) for f in clear]
    return sum(w * f["vector"].astype(np.float64) for w, f in zip(weights, clear)) / sum(weights), weights


def _secure_mean(out):
    """The mean SecAgg+ handed the server in round 1 (its only run)."""
    assert len(list(out.glob("sum-r1-*.npz"))) == 1
    recorded = np.load(out / "sum-r1-1.npz")
    assert bool(recorded["formed"])
    return recorded["mean"]


def _dropped(record):
    return {stage: record[f"secagg_dropped_{stage}"] for stage in STAGES}


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_fedkseed_round_sums_the_survivors_when_a_client_drops_at_any_stage(tmp_path, stage):
    # 4 clients, threshold 3 (a majority): one may drop.
    record, run_dir, out, _ = _run(tmp_path, _seed_config(tmp_path, 4), {FLOWER_STAGE[stage]: [0]})

    # A client dropped before the collect stage's reply never trained; one that dropped in the
    # unmask stage had its masked vector summed already: it is in the sum, its mask rebuilt.
    in_sum = 4 if stage == "unmask" else 3
    exact, weights = _clear_mean(out, in_sum)
    settings = SecAggSettings.from_config(load_config(tmp_path / "drops.toml"))
    bound = error_bound(weights, settings)
    assert 0 < bound < 1e-5  # 2**30 levels over +-128, four clients at most
    assert record["secagg_sum"] is True and record["secagg_error_bound"] == pytest.approx(bound)
    assert _dropped(record) == {s: int(s == stage) for s in STAGES}
    assert (record["sampled"], record["replies"], record["failed"], record["rejected"]) == (4, in_sum, 4 - in_sum, 0)
    # the unmasked mean: within the quantisation bound (float64 adds ~1e-16 relative)
    assert np.max(np.abs(_secure_mean(out) - exact)) <= bound
    # the update the server logged and applied: the same, rounded to float32 (2**-23 relative)
    updates = [wire.decode_update(p, max_key=64) for p in SeedLog.open(run_dir / "seedlog.bin").payloads]
    assert len(updates) == 1
    r, keys, scalars, _ = updates[0]
    applied = np.zeros(64)
    applied[keys.astype(np.int64)] = scalars
    assert r == 1 and np.all(np.abs(applied - exact) <= bound + np.abs(exact) * 2**-23)
    assert set(keys.tolist()) == set(np.flatnonzero(exact).tolist())
    # the model moved: the round's seeds changed its weights, and so its eval loss
    assert record["distinct_seeds"] == len(keys) > 0
    assert record["eval_loss"] != json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["eval_loss"]


@pytest.mark.slow
def test_a_setup_drop_and_a_collect_drop_in_one_round_leave_the_survivors_sum(tmp_path):
    # 5 clients, threshold 3: a node dead since setup (no public key) beside one whose masks
    # the server must rebuild from its neighbours' shares (it shared its keys, then died)
    config = _seed_config(tmp_path, 5) + "reconstruction_threshold = 3\n"

    record, _, out, _ = _run(tmp_path, config, {"setup": [0], "collect_masked_vectors": [1]})

    exact, weights = _clear_mean(out, 3)
    bound = error_bound(weights, SecAggSettings.from_config(load_config(tmp_path / "drops.toml")))
    assert record["secagg_sum"] is True and record["replies"] == 3 and record["failed"] == 2
    assert _dropped(record) == {"setup": 1, "share_keys": 0, "collect": 1, "unmask": 0}
    assert np.max(np.abs(_secure_mean(out) - exact)) <= bound  # float64 adds ~1e-16 relative
    assert record["distinct_seeds"] > 0


@pytest.mark.slow
def test_more_drops_than_the_threshold_allows_halt_the_round_and_it_says_so(tmp_path):
    # 4 clients, threshold 3: two dead at share-keys leave two, and the protocol stops there
    record, run_dir, out, log = _run(tmp_path, _seed_config(tmp_path, 4), {"share_keys": [0, 1]})

    assert not bool(np.load(out / "sum-r1-1.npz")["formed"])
    assert record["secagg_sum"] is False and record["secagg_error_bound"] is None
    assert _dropped(record) == {"setup": 0, "share_keys": 2, "collect": 0, "unmask": 0}
    assert (record["sampled"], record["replies"], record["failed"]) == (4, 0, 4)
    assert record["distinct_seeds"] == 0
    # the round's update is empty: the model stays as it was
    [(r, keys, _, _)] = [wire.decode_update(p, max_key=64) for p in SeedLog.open(run_dir / "seedlog.bin").payloads]
    assert r == 1 and keys.size == 0
    assert "round 1/1:" in log and "0/4 replied, SecAgg+ HALTED, no sum (dropped 2 at share-keys)," in log


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["setup", "share_keys"])
def test_fedit_round_sums_the_survivors_when_a_client_drops_before_sharing_its_keys(tmp_path, stage):
    # FedIT's flattened adapter update through the same protocol; 4 clients, threshold 3
    text = SMALL_LORA_CONFIG.format(name="drops", output_dir=tmp_path / "runs", num_clients=4, rule="fedit",
                                    two_phase="false", method="none")
    text = text.replace("rounds = 2", "rounds = 1").replace("clients_per_round = 3", "clients_per_round = 4")
    text += "\n[privacy]\nsecagg = true\nscalar_clip = 4.0\n"

    record, run_dir, out, _ = _run(tmp_path, text, {stage: [0]})

    exact, weights = _clear_mean(out, 3)
    bound = error_bound(weights, SecAggSettings.from_config(load_config(tmp_path / "drops.toml")))
    assert 0 < bound < 1e-6  # 2**30 levels over +-4, three clients
    assert record["secagg_sum"] is True and record["replies"] == 3 and record["failed"] == 1
    assert _dropped(record) == {s: int(s == stage) for s in STAGES}
    assert np.max(np.abs(_secure_mean(out) - exact)) <= bound  # float64 adds ~1e-16 relative
    # the model moved: B starts at zero (LoRA's init) and is now global + the mean update
    adapter = load_file(run_dir / "model" / "adapter_model.safetensors")
    b = [t for n, t in adapter.items() if "lora_B" in n]
    assert b and any(np.any(t != 0) for t in b)
