"""Differential privacy in real Flower simulations (`fedtune run`): every mode's noise reaches
the model, every party stays in sync, and metrics.jsonl carries the ledger's epsilon each round."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedtune.config import load_config
from fedtune.privacy.accounting import LEDGER_FILE, PrivacyLedger
from tests.conftest import REPO, SMALL_LORA_CONFIG, run_cli


def _run(path, name, tmp_path):
    result = run_cli("run", path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "runs" / name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, load_config(run_dir / "config.toml"), run_dir


def _uniform(path, privacy):
    path.write_text(path.read_text().replace("[algorithm]\n", '[algorithm]\nweighting = "uniform"\n')
                    + "\n[privacy]\n" + privacy)
    return path


def _epsilon_after_each_round(cfg, run_dir):
    """The ledger file read back one release at a time: what each round should have reported."""
    lines = (run_dir / LEDGER_FILE).read_text().splitlines()
    values = []
    for count in range(1, len(lines) + 1):
        partial = run_dir / f"ledger-{count}.jsonl"
        partial.write_text("".join(line + "\n" for line in lines[:count]))
        values.append(PrivacyLedger(cfg, partial).epsilon())
    return values


@pytest.mark.slow
def test_central_dp_in_clear_fedkseed_keeps_every_party_in_sync(small_config, tmp_path):
    path = _uniform(small_config(name="central", rounds=2, num_clients=5, per_round=3),
                    'dp = "central"\nnoise_multiplier = 1.0\ndp_clip = 4.0\n')

    records, cfg, run_dir = _run(path, "central", tmp_path)

    ledger = PrivacyLedger(cfg, run_dir / LEDGER_FILE)
    assert [(r.round, r.population, r.sampled, r.noise_multipliers, r.clients) for r in ledger.releases] == [
        (1, 5, 3, (1.0,), ()), (2, 5, 3, (1.0,), ())]  # no client list: central's sample stays secret
    assert [r["dp_epsilon"] for r in records[1:]] == _epsilon_after_each_round(cfg, run_dir)
    for record in records[1:]:
        # round 2's clients replayed round 1's noised update and proved it with their digests
        assert record["replies"] == record["sampled"] == 3 and record["sync_mismatches"] == 0
        assert record["distinct_seeds"] == 64  # the server's noise reaches every candidate
        assert record["dp_noise_multiplier"] == 1.0 and record["dp_delta"] == 1e-5


@pytest.mark.slow
def test_distributed_dp_under_secagg_reports_each_rounds_multiplier(small_config, tmp_path):
    path = _uniform(small_config(name="distributed", rounds=2, num_clients=5, per_round=4),
                    'secagg = true\ndp = "distributed"\nnoise_multiplier = 0.8\ndp_clip = 4.0\n')

    records, cfg, run_dir = _run(path, "distributed", tmp_path)

    releases = PrivacyLedger(cfg, run_dir / LEDGER_FILE).releases
    assert [len(r.clients[0]) for r in releases] == [4, 4]  # the partitions whose vectors were summed
    assert [r["dp_epsilon"] for r in records[1:]] == _epsilon_after_each_round(cfg, run_dir)
    assert records[1]["dp_epsilon"] < records[2]["dp_epsilon"]
    for record in records[1:]:
        assert record["replies"] == 4 and record["sync_mismatches"] == 0
        assert record["dp_noise_multiplier"] == 0.8  # all 4 shares in the sum
        # each of the 4 clients drew at most 4 of the 64 seeds; the clients' noise reaches all 64
        assert record["distinct_seeds"] == 64


@pytest.mark.slow
def test_distributed_dp_accounts_a_round_with_drop_outs_at_its_survivors_multiplier(small_config, tmp_path):
    # tests/privacy/secagg_run.py: in round 2, partition 0 drops out before its masked vector,
    # partition 1's masked vector is truncated (refused), partition 2 fails after its vector
    # was summed: 4 of the 6 noise shares are in round 2's sum.
    path = _uniform(small_config(name="dropouts", rounds=2, num_clients=6, per_round=6),
                    'secagg = true\nreconstruction_threshold = 3\ndp = "distributed"\nnoise_multiplier = 0.9\n'
                    "dp_clip = 4.0\n")
    out = tmp_path / "out"
    out.mkdir()

    result = subprocess.run([sys.executable, str(REPO / "tests/privacy/secagg_run.py"), str(path), str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = Path(json.loads((out / "server.json").read_text())["run_dir"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cfg = load_config(run_dir / "config.toml")
    releases = PrivacyLedger(cfg, run_dir / LEDGER_FILE).releases
    assert [r.clients for r in releases] == [((0, 1, 2, 3, 4, 5),), ((2, 3, 4, 5),)]
    assert [r["dp_noise_multiplier"] for r in records[1:]] == [0.9, pytest.approx(0.9 * math.sqrt(4 / 6))]
    assert [r["dp_epsilon"] for r in records[1:]] == _epsilon_after_each_round(cfg, run_dir)
    # the survivors' weaker noise costs more than a full round would have
    full = PrivacyLedger(cfg)
    for release in releases:
        full.record(dataclasses.replace(release, noise_multipliers=(0.9,)))
    assert records[2]["dp_epsilon"] > full.epsilon()
    assert all(r["sync_mismatches"] == 0 for r in records[1:])


def _lora(tmp_path, name, rule, privacy):
    path = tmp_path / f"{name}.toml"
    text = SMALL_LORA_CONFIG.format(name=name, output_dir=tmp_path / "runs", num_clients=4, rule=rule,
                                    two_phase="true" if rule == "lorafair" else "false", method="none")
    path.write_text(text)
    return _uniform(path, privacy)


@pytest.mark.slow
def test_local_dp_in_clear_fedit_counts_every_clients_releases(tmp_path):
    path = _lora(tmp_path, "local", "fedit", 'dp = "local"\nnoise_multiplier = 2.0\ndp_clip = 1.0\n')

    records, cfg, run_dir = _run(path, "local", tmp_path)

    releases = PrivacyLedger(cfg, run_dir / LEDGER_FILE).releases
    assert [len(r.clients[0]) for r in releases] == [3, 3]  # 3 of the 4 clients a round
    assert [r["dp_epsilon"] for r in records[1:]] == _epsilon_after_each_round(cfg, run_dir)
    for record in records[1:]:
        assert record["replies"] == record["sampled"] == 3 and record["dp_noise_multiplier"] == 2.0


@pytest.mark.slow
@pytest.mark.parametrize("dp", ["central", "local"])
def test_two_phase_lorafair_under_secagg_and_dp_accounts_two_sums_a_round(tmp_path, dp):
    path = _lora(tmp_path, dp, "lorafair", f'secagg = true\nscalar_clip = 4.0\ndp = "{dp}"\nnoise_multiplier = 2.0\n')

    records, cfg, run_dir = _run(path, dp, tmp_path)

    releases = PrivacyLedger(cfg, run_dir / LEDGER_FILE).releases
    assert [r.noise_multipliers for r in releases] == [(2.0, 2.0), (2.0, 2.0)]  # the factors, the projections
    assert [r["dp_epsilon"] for r in records[1:]] == _epsilon_after_each_round(cfg, run_dir)
    for record in records[1:]:
        assert record["replies"] == record["sampled"] == 3
        assert record["dp_noise_multiplier"] == record["dp_noise_multiplier_phase2"] == 2.0


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 32])
def test_dp_secagg_downlink_does_not_grow_with_the_log(small_config, tmp_path, bits):
    # Every client is sampled every round: from round 2 on each gets the one entry (K noised
    # scalars) after the state it confirmed, not the whole log (which grew by K scalars a round).
    path = _uniform(small_config(name="downlink", rounds=4, num_clients=4, per_round=4),
                    'secagg = true\ndp = "distributed"\nnoise_multiplier = 1.0\ndp_clip = 1.0\n'
                    f"update_bits = {bits}\n")

    records, _, _ = _run(path, "downlink", tmp_path)

    down = [r["bytes_down_per_client"] for r in records[1:]]
    assert all(r["replies"] == 4 and r["sync_mismatches"] == 0 for r in records[1:])
    entry = down[1] - down[0]  # round 1's log is empty; round 2 sends its one entry
    assert entry > (64 if bits == 8 else 4 * 64)  # K = 64 codes (one byte each) or float32 scalars
    if bits == 32:
        assert down[1] == down[2] == down[3]
    else:  # a key whose noised scalar rounds to code 0 leaves its entry: a byte less, not an entry more
        assert all(abs(d - down[1]) < entry / 4 for d in down[2:])


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "secagg"), [("fedkseed", "false"), ("mezo", "false"), ("fedkseed", "true")])
def test_sample_dp_replays_bit_exactly_and_accounts_each_client(small_config, tmp_path, algorithm, secagg):
    # Example-level DP: the clients noise their own scalars; round 2's clients replay round 1's
    # update from what was sent and prove it with their digests (sync_mismatches), so every
    # party holds the same bits although no one could redraw the noise.
    name = f"sample-{algorithm}-{secagg}"
    path = _uniform(small_config(name=name, rounds=2, num_clients=5, per_round=3, algorithm=algorithm),
                    f'secagg = {secagg}\ndp = "sample"\nnoise_multiplier = 1.0\ndp_clip = 1.0\n')

    records, cfg, run_dir = _run(path, name, tmp_path)

    releases = PrivacyLedger(cfg, run_dir / LEDGER_FILE).releases
    assert [len(r.clients[0]) for r in releases] == [3, 3]  # the 3 clients that trained each round
    sizes = {c: n for r in releases for c, n in zip(r.clients[0], r.examples, strict=True)}
    assert sum(sizes.values()) <= 400 and all(n > 0 for n in sizes.values())  # each client's N, from the split
    assert [r["dp_epsilon"] for r in records[1:]] == _epsilon_after_each_round(cfg, run_dir)
    assert 0 < records[1]["dp_epsilon"] <= records[2]["dp_epsilon"]  # a client of round 1 may sit out round 2
    for record in records[1:]:
        assert record["replies"] == record["sampled"] == 3 and record["sync_mismatches"] == 0
        assert record["dp_noise_multiplier"] == 1.0 and "train_loss" not in record
