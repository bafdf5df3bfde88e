"""Differential privacy: clipping, noise that is really there, and epsilon from dp-accounting."""

import json
import math

import numpy as np
import pytest
from dp_accounting import dp_event, rdp

from fedtune.config import ConfigError, parse_config
from fedtune.privacy.dp import RDP_ORDERS, add_central_noise, clip_and_noise, epsilon
from tests.conftest import run_cli

BASE = {"model": {"config": "micro-llama"}, "federation": {"num_clients": 20, "clients_per_round": 4},
        "algorithm": {"weighting": "uniform"}}


def _cfg(**privacy):
    return parse_config({**BASE, "privacy": {"secagg": True, **privacy}})


def test_epsilon_grows_with_rounds_and_is_the_librarys():
    cfg = _cfg(dp="central", noise_multiplier=1.1, dp_delta=1e-5)

    values = [epsilon(cfg, rounds) for rounds in (1, 10, 100)]

    assert values[0] < values[1] < values[2]
    accountant = rdp.RdpAccountant(orders=list(RDP_ORDERS))  # the library, called directly
    accountant.compose(dp_event.PoissonSampledDpEvent(4 / 20, dp_event.GaussianDpEvent(1.1)), 100)
    assert values[2] == accountant.get_epsilon(1e-5)


def test_epsilon_without_sampling_is_below_the_classic_rdp_bound():
    # q = 1: the Gaussian mechanism's RDP is alpha / (2 z^2) a round; the classic conversion
    # eps <= T alpha / (2 z^2) + log(1/delta) / (alpha - 1), minimised over alpha, bounds the
    # library's (tighter) conversion from above.
    cfg = parse_config({**BASE, "federation": {"num_clients": 4, "clients_per_round": 4},
                        "privacy": {"secagg": True, "dp": "distributed", "noise_multiplier": 2.0}})

    eps = epsilon(cfg, 5)

    classic = min(5 * a / (2 * 2.0**2) + math.log(1e5) / (a - 1) for a in RDP_ORDERS)
    assert 0 < eps <= classic


def test_clip_scales_large_updates_to_the_norm_and_leaves_small_ones():
    cfg = _cfg(dp="central", dp_clip=2.0)

    big, was_big = clip_and_noise(np.array([6.0, 8.0]), cfg)  # norm 10
    small, was_small = clip_and_noise(np.array([0.3, 0.4]), cfg)

    assert big.tolist() == pytest.approx([1.2, 1.6]) and was_big
    assert small.tolist() == [0.3, 0.4] and not was_small  # central: clients only clip


def test_the_noise_is_really_added_with_the_stated_scale():
    np.random.seed(0)  # Flower's noise draws from numpy's global generator
    n = 200_000
    distributed = _cfg(dp="distributed", noise_multiplier=1.5, dp_clip=2.0)

    client_noise, _ = clip_and_noise(np.zeros(n), distributed)
    server_noise = add_central_noise(np.zeros(n), _cfg(dp="central", noise_multiplier=1.5, dp_clip=2.0), 4)

    # a client's share: z C / sqrt(n_sampled) = 3 / 2; the server's on the mean: z C / n = 3 / 4.
    # The sample std of 200k normals is within 0.5% (about 3 standard errors) of the true one.
    assert np.std(client_noise) == pytest.approx(1.5, rel=5e-3)
    assert np.std(server_noise) == pytest.approx(0.75, rel=5e-3)
    assert abs(np.mean(client_noise)) < 4 * 1.5 / math.sqrt(n)


def test_dp_needs_secagg_and_uniform_weights():
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "algorithm": {"weighting": "examples"}, "privacy": {"dp": "central"}})

    assert "needs `privacy.secagg = true`" in str(info.value)
    assert "needs `algorithm.weighting = \"uniform\"`" in str(info.value)
    assert len(info.value.errors) == 2


@pytest.mark.slow
def test_distributed_dp_under_secagg_noises_every_seed_and_reports_epsilon(small_config, tmp_path):
    extra = '\n[privacy]\nsecagg = true\ndp = "distributed"\nnoise_multiplier = 0.8\ndp_clip = 4.0\n'
    path = small_config(name="dp", rounds=2, num_clients=5, per_round=4, extra=extra)
    text = path.read_text().replace("[algorithm]\n", '[algorithm]\nweighting = "uniform"\n')
    path.write_text(text)

    result = run_cli("run", path, timeout=300)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "runs" / "dp" / "metrics.jsonl").read_text().splitlines()]
    cfg = parse_config({**BASE, "federation": {"num_clients": 5, "clients_per_round": 4},
                        "privacy": {"secagg": True, "dp": "distributed", "noise_multiplier": 0.8}})
    assert [r["dp_epsilon"] for r in records[1:]] == [epsilon(cfg, 1), epsilon(cfg, 2)]
    assert records[1]["dp_epsilon"] < records[2]["dp_epsilon"]
    for record in records[1:]:
        assert record["dp_delta"] == 1e-5 and record["replies"] == 4 and record["sync_mismatches"] == 0
        # each of the 4 clients drew at most 4 of the 64 seeds; the clients' noise reaches all 64
        assert record["distinct_seeds"] == 64
