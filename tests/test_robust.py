"""Robust aggregation (fedtune/robust.py), the attack tool (fedtune/attack.py) and their bad input."""

import numpy as np
import pytest

from fedtune.attack import attack_rng, corrupt, corrupt_state, is_malicious
from fedtune.config import AttackConfig, ConfigError, RobustConfig, parse_config
from fedtune.robust import robust_mean
from tests.conftest import run_cli

HONEST = [np.array([1.0, -2.0, 0.0]), np.array([2.0, -1.0, 0.0]), np.array([3.0, -3.0, 0.5]),
          np.array([2.5, -2.5, 0.0])]
EVIL = np.array([1000.0, 1000.0, -1000.0])


def test_median_is_coordinate_wise_and_ignores_one_outlier():
    out = robust_mean([*HONEST, EVIL], RobustConfig(method="median"))

    assert out.tolist() == [2.5, -2.0, 0.0]


def test_trimmed_mean_cuts_floor_fraction_times_n_at_each_end_per_coordinate():
    vectors = [*HONEST, EVIL]  # n = 5, trim 0.2: one value cut at each end of every coordinate

    out = robust_mean(vectors, RobustConfig(method="trimmed-mean", trim_fraction=0.2))

    assert out.tolist() == pytest.approx([(2.0 + 2.5 + 3.0) / 3, (-2.5 - 2.0 - 1.0) / 3, 0.0], abs=1e-12)


def test_krum_selects_an_honest_update_and_multi_krum_averages_the_best():
    vectors = [*HONEST, EVIL, EVIL * 0.9]

    krum = robust_mean(vectors, RobustConfig(method="krum", krum_byzantine=2))
    multi = robust_mean(vectors, RobustConfig(method="krum", krum_byzantine=2, krum_keep=4))

    assert any(np.array_equal(krum, h) for h in HONEST)
    assert multi.tolist() == pytest.approx(np.mean(HONEST, axis=0).tolist())  # the 4 honest ones


def test_robust_mean_is_deterministic_and_refuses_ragged_or_empty_input():
    vectors = [np.random.default_rng(i).standard_normal(50) for i in range(7)]
    cfg = RobustConfig(method="trimmed-mean", trim_fraction=0.3)

    assert robust_mean(vectors, cfg).tobytes() == robust_mean([v.copy() for v in vectors], cfg).tobytes()
    with pytest.raises(ValueError, match="differ in length"):
        robust_mean([np.zeros(2), np.zeros(3)], cfg)
    with pytest.raises(ValueError, match="empty"):
        robust_mean([], cfg)
    with pytest.raises(ValueError, match="robust method"):
        robust_mean(vectors, RobustConfig())


@pytest.mark.parametrize(("kind", "expected"), [("scale", [1000.0, -2000.0]), ("sign-flip", [-1000.0, 2000.0])])
def test_scale_and_sign_flip_multiply_the_update(kind, expected):
    out = corrupt(np.array([1.0, -2.0], np.float32), AttackConfig(kind=kind), attack_rng(0, 1, 0))

    assert out.dtype == np.float32 and out.tolist() == expected


def test_random_replaces_the_update_with_seeded_noise_of_factor_times_its_rms():
    update = np.full(10_000, 0.5, np.float32)
    attack = AttackConfig(kind="random", factor=10.0)

    out = corrupt(update, attack, attack_rng(0, 3, 2))

    assert np.array_equal(out, corrupt(update, attack, attack_rng(0, 3, 2)))  # a run repeats bit for bit
    assert not np.array_equal(out, corrupt(update, attack, attack_rng(0, 4, 2)))  # fresh each round
    assert abs(float(out.mean())) < 0.2 and float(out.std()) == pytest.approx(5.0, rel=0.05)


def test_corrupt_state_corrupts_the_change_from_the_global_adapter_only():
    base = {"b": np.ones((2, 2), np.float32), "a": np.zeros(3, np.float32)}
    trained = {"b": np.full((2, 2), 1.5, np.float32), "a": np.array([1.0, 0.0, -1.0], np.float32)}

    out = corrupt_state(trained, base, AttackConfig(kind="sign-flip", factor=2.0), attack_rng(0, 1, 0))

    assert out["b"].tolist() == [[0.0, 0.0], [0.0, 0.0]]  # 1 + (-2 x 0.5)
    assert out["a"].tolist() == [-2.0, 0.0, 2.0] and out["a"].dtype == np.float32
    assert is_malicious(AttackConfig(clients=(3,)), 3) and not is_malicious(AttackConfig(clients=(3,)), 4)


BASE = {"model": {"config": "micro-llama"}, "federation": {"num_clients": 10, "clients_per_round": 10, "min_replies": 5}}


def _errors(**tables):
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, **tables})
    return info.value.errors


def test_valid_robust_and_attack_sections_parse():
    cfg = parse_config({**BASE, "robust": {"method": "krum", "krum_byzantine": 2},
                        "attack": {"clients": [0, 9], "kind": "random", "factor": 5}})

    assert cfg.robust.method == "krum" and cfg.attack.clients == (0, 9) and cfg.attack.factor == 5.0
    for name in ("fedkseed", "fedkseed-pro", "fedit", "ffa-lora", "fedprox", "fedadam", "fedyogi", "fedadagrad"):
        parse_config({**BASE, "algorithm": {"name": name}, "robust": {"method": "median"}})


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        ({"robust": {"method": "median"}, "privacy": {"secagg": True}},
         "`robust.method` = 'median' needs each client's update in clear, but `privacy.secagg` = true"),
        ({"robust": {"method": "median"}, "privacy": {"dp": "central", "noise_multiplier": 1.0},
          "algorithm": {"weighting": "uniform"}},
         "`robust.method` = 'median' with `privacy.dp` = 'central'"),
        ({"robust": {"method": "trimmed-mean", "trim_fraction": 0.5}},
         "`robust.trim_fraction` (0.5) must be in [0, 0.5)"),
        ({"robust": {"method": "trimmed-mean", "trim_fraction": 0.05}},
         "`robust.trim_fraction` (0.05) x `federation.clients_per_round` (10) is below 1"),
        ({"robust": {"method": "krum", "krum_byzantine": 4}},
         "needs `federation.clients_per_round` >= 2f + 3 = 11, got 10"),
        ({"robust": {"method": "median"}, "algorithm": {"name": "mezo"}},
         "got 'mezo' (MeZO draws a fresh seed every step"),
        ({"robust": {"method": "median"}, "algorithm": {"name": "lorafair"}},
         "got 'lorafair' (LoRA-FAIR's correction"),
        ({"robust": {"method": "median"}, "algorithm": {"name": "hetlora"}}, "got 'hetlora' (HetLoRA's clients"),
        ({"robust": {"method": "geomedian"}}, "`robust.method` must be one of 'none', 'median', 'trimmed-mean', 'krum'"),
        ({"attack": {"clients": [10]}}, "`attack.clients` must be partition ids in [0, num_clients=10), got [10]"),
        ({"attack": {"factor": 0}}, "`attack.factor` must be a finite number > 0, got 0"),
    ],
)
def test_bad_robust_or_attack_config_is_one_clear_line(tables, expected):
    errors = _errors(**tables)

    assert any(expected in line for line in errors), errors


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("robust.method=median", "privacy.secagg=true"), "robust aggregation does not compose with SecAgg+"),
        (("robust.method=trimmed-mean", "robust.trim_fraction=0.6"), "would drop every client"),
        (("robust.method=median", "algorithm.name=mezo"), "`robust.method` supports algorithm.name"),
        (("robust.method=mode",), "`robust.method` must be one of"),
    ],
)
def test_bad_robust_config_exits_2_and_writes_nothing(small_config, tmp_path, overrides, expected):
    path = small_config(num_clients=4, per_round=4)

    result = run_cli("run", path, *[arg for o in overrides for arg in ("--set", o)], timeout=120)

    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "runs").exists()
