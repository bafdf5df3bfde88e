"""Example-level DP (privacy.dp = "sample", fedtune.privacy.sample): each example's scalar
clipped, noise at the stated scale from the secret generator, the step using exactly the
released scalar, per-row losses, the accountant, and the config's refusals.
The real simulations are in test_dp_simulation.py."""

import math
from functools import partial

import numpy as np
import pytest
import torch

from fedtune import rng
from fedtune.config import ConfigError, parse_config
from fedtune.privacy.accounting import RDP_ORDERS, PrivacyLedger, Release
from fedtune.privacy.sample import private_estimate, secret_rows
from fedtune.workload import Workload, batch_loss, row_losses
from fedtune.zo.client import ZOClient
from fedtune.zo.estimators import estimate_step

BASE = {"model": {"config": "micro-llama"}, "data": {"num_examples": 200, "eval_examples": 16},
        "federation": {"num_clients": 4, "clients_per_round": 2, "min_replies": 1},
        "algorithm": {"weighting": "uniform", "num_candidates": 32, "local_steps": 3, "batch_size": 4, "lr": 1e-3}}
DELTA = 1e-5
DRAWS = 200_000
# The sample std of N normal draws has a relative standard error of 1 / sqrt(2 N) (0.16% at
# 200k): 5 of them fail a correct scale with probability below 1e-6.
STD_REL = 5 / math.sqrt(2 * DRAWS)


def _cfg(**privacy):
    return parse_config({**BASE, "privacy": {"dp": "sample", "dp_clip": 1.0, "noise_multiplier": 1.0, **privacy}})


class _Seeded:
    """A stand-in for the secret generator whose draws the test can repeat."""

    def __init__(self, seed):
        self.seed = seed

    def __call__(self):
        return np.random.default_rng(self.seed)


# --- the mechanism ---------------------------------------------------------------------

def test_each_examples_estimate_is_clipped_before_the_mean_and_the_noise():
    # C = 2: 1e9 -> 2, -3e7 -> -2, 0.5 stays, inf (an overflowed loss) counts as 0: mean 0.5 / 4
    estimates = np.array([1e9, -3e7, 0.5, math.inf])
    noise = np.random.default_rng(7).normal(0.0, 1.5 * 2.0 / 4)

    scalar = private_estimate(estimates, clip=2.0, noise_multiplier=1.5, rng=np.random.default_rng(7))

    assert scalar == 0.125 + noise


def test_the_noise_has_std_sigma_c_over_b_and_the_clipped_mean_stays_within_c():
    secret = rng.secret_generator()
    huge = np.array([1e12, -1e12, 5e11, 7e11, 1e12, 3e12, -2e12, 9e11])  # B = 8: six positive, two negative

    draws = np.array([private_estimate(huge, clip=0.5, noise_multiplier=2.0, rng=secret) for _ in range(DRAWS)])

    clipped_mean = (6 * 0.5 - 2 * 0.5) / 8  # each example at +-C
    assert abs(draws.mean() - clipped_mean) < 5 * (2.0 * 0.5 / 8) / math.sqrt(DRAWS)
    assert draws.std() == pytest.approx(2.0 * 0.5 / 8, rel=STD_REL)


def test_a_step_moves_the_weights_by_exactly_the_released_scalar():
    # L_j(w) = a_j w with w scalar, z = +1: g_j = a_j; the a_j are far beyond C = 1
    slopes = np.array([4e6, -2e6, 3e6, 1e6])
    w = np.array([0.0])

    def perturb(seed, coef):
        w[0] += coef

    released = []

    def release(g):
        released.append(private_estimate(g, clip=1.0, noise_multiplier=1.0, rng=np.random.default_rng(3)))
        return released[-1]

    result = estimate_step(perturb, lambda: slopes * w[0], seeds=[5], eps=0.5, lr=0.25, release=release)

    # g_j = (a_j 0.5 - a_j (-0.5)) / (2 eps) = a_j, clipped to (1, -1, 1, 1): mean 0.5, noise std 1 x 1 / 4
    assert released[0] == 0.5 + np.random.default_rng(3).normal(0.0, 0.25)
    assert result.scalars == (released[0],)
    # w + eps - 2 eps + (eps - lr scalar): the restore-and-update of one pass
    assert w[0] == 0.5 - 1.0 + (0.5 - 0.25 * released[0])
    assert not result.skipped


def test_a_non_finite_example_loss_never_skips_a_private_step():
    losses = iter([np.array([1.0, math.nan]), np.array([0.5, 2.0])])

    result = estimate_step(lambda seed, coef: None, lambda: next(losses), seeds=[1], eps=0.5, lr=0.0,
                           release=partial(private_estimate, clip=1.0, noise_multiplier=1.0,
                                           rng=np.random.default_rng(0)))

    assert not result.skipped and math.isfinite(result.scalars[0])  # a skip would tell the server about the data


def test_the_forward_estimator_clips_each_examples_one_sided_difference():
    # L(w) per example (1, 2, 3), L(w + eps z) = (1.25, 1, 3.5) with eps = 0.5: g_j = (0.5, -2, 1), C = 0.75
    losses = iter([np.array([1.0, 2.0, 3.0]), np.array([1.25, 1.0, 3.5])])
    noise = np.random.default_rng(5).normal(0.0, 1.0 * 0.75 / 3)

    result = estimate_step(lambda seed, coef: None, lambda: next(losses), seeds=[1], eps=0.5, lr=0.0,
                           estimator="forward", release=partial(private_estimate, clip=0.75, noise_multiplier=1.0,
                                                                rng=np.random.default_rng(5)))

    assert result.scalars == ((0.5 - 0.75 + 0.75) / 3 + noise,)


def test_secret_rows_are_distinct_fixed_size_and_fresh_each_step():
    rows = secret_rows(10, 4, 200, rng.secret_generator())
    few = secret_rows(3, 8, 1, rng.secret_generator())

    assert all(len(r) == 4 and len(set(r.tolist())) == 4 and r.min() >= 0 and r.max() < 10 for r in rows)
    assert len({tuple(r.tolist()) for r in rows}) > 100  # C(10, 4) = 210 subsets
    assert sorted(few[0].tolist()) == [0, 1, 2]  # B = min(batch_size, N)


# --- per-row losses ----------------------------------------------------------------------

def test_row_losses_are_each_rows_own_batch_loss():
    cfg = parse_config(BASE)
    workload = Workload(cfg)
    model = workload.build_model()
    encoded = workload.encode(workload.examples[0][:3])

    with torch.no_grad():
        rows = row_losses(model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits,
                          encoded["labels"])
        alone = [float(batch_loss(model, {k: v[i : i + 1] for k, v in encoded.items()}, torch.device("cpu")))
                 for i in range(3)]

    # float32 forwards of one row and of three padded rows differ by a few ulps of the logits
    assert rows.tolist() == pytest.approx(alone, rel=1e-5)


def test_seq_cls_row_losses_average_to_the_batch_loss():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0]])
    labels = torch.tensor([0, 1, 1])

    rows = row_losses(logits, labels)

    # float32 cross-entropy is logsumexp(logits) - logit, about 1 minus 1 in row 2: a few float32 ulps of 1
    expected = [math.log1p(math.exp(-3.0)), math.log(2.0), math.log1p(math.exp(-4.0))]
    assert rows.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(rows.mean()) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))


# --- the client ------------------------------------------------------------------------------

def _train(cfg):
    client = ZOClient(cfg)
    client.sync(0, [])
    return client.train(1, 0, 4)


def test_a_private_clients_scalars_differ_between_two_runs_of_one_seed():
    cfg = _cfg()

    first, second = _train(cfg), _train(cfg)
    plain = [_train(parse_config(BASE)) for _ in range(2)]

    assert np.array_equal(first.keys, second.keys)  # the seeds are the run's: replay needs them
    assert not np.array_equal(first.scalars, second.scalars)  # the noise is not
    assert np.array_equal(plain[0].scalars, plain[1].scalars)  # (without DP a run repeats itself)
    assert first.skipped_steps == 0 and len(first.scalars) == cfg.algorithm.local_steps


def test_the_rows_and_the_noise_come_from_the_secret_generator(monkeypatch):
    cfg = _cfg()
    monkeypatch.setattr("fedtune.zo.seed_client.secret_generator", _Seeded(11))

    first, second = _train(cfg), _train(cfg)

    assert np.array_equal(first.scalars, second.scalars)  # only that generator differed between runs


# --- the accountant -----------------------------------------------------------------------

def _library(n, b, sigma, steps):
    from dp_accounting import dp_event, rdp
    from dp_accounting.privacy_accountant import NeighboringRelation

    accountant = rdp.RdpAccountant(list(RDP_ORDERS), NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_event.SelfComposedDpEvent(
        dp_event.SampledWithoutReplacementDpEvent(n, b, dp_event.GaussianDpEvent(sigma / 2)), steps))
    return accountant.get_epsilon(DELTA)


def _ledger(sigma=1.0, local_steps=3, batch_size=4):
    cfg = parse_config({**BASE, "algorithm": {**BASE["algorithm"], "local_steps": local_steps,
                                              "batch_size": batch_size},
                        "privacy": {"dp": "sample", "noise_multiplier": sigma, "dp_delta": DELTA}})
    return PrivacyLedger(cfg)


def test_a_client_is_its_steps_of_a_sampled_gaussian_at_half_sigma():
    ledger = _ledger(sigma=1.2)

    ledger.record(Release(1, 4, 2, (1.2,), ((0, 2),), (40, 40)))
    ledger.record(Release(2, 4, 2, (1.2,), ((0, 3),), (40, 40)))

    # client 0 trained twice: 6 steps of 4 rows out of 40
    assert ledger.epsilon() == pytest.approx(_library(40, 4, 1.2, 6), rel=1e-12)


def test_q_directions_on_one_batch_are_q_gaussians_inside_one_sampled_step():
    from dp_accounting import dp_event, rdp
    from dp_accounting.privacy_accountant import NeighboringRelation

    cfg = parse_config({**BASE, "algorithm": {**BASE["algorithm"], "directions": 2},
                        "privacy": {"dp": "sample", "noise_multiplier": 2.0, "dp_delta": DELTA}})
    ledger = PrivacyLedger(cfg)
    ledger.record(Release(1, 4, 1, (2.0,), ((0,),), (40,)))

    accountant = rdp.RdpAccountant(list(RDP_ORDERS), NeighboringRelation.REPLACE_ONE)
    two = dp_event.ComposedDpEvent([dp_event.GaussianDpEvent(1.0), dp_event.GaussianDpEvent(1.0)])
    accountant.compose(dp_event.SelfComposedDpEvent(dp_event.SampledWithoutReplacementDpEvent(40, 4, two), 3))
    assert ledger.epsilon() == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-12)
    assert ledger.epsilon() > _library(40, 4, 2.0, 3)  # more released than one direction a step


def test_epsilon_grows_with_steps_and_falls_with_sigma():
    def eps(sigma, rounds, local_steps=3):
        ledger = _ledger(sigma=sigma, local_steps=local_steps)
        for r in range(1, rounds + 1):
            ledger.record(Release(r, 4, 1, (sigma,), ((0,),), (40,)))
        return ledger.epsilon()

    assert eps(1.0, 1) < eps(1.0, 2) < eps(1.0, 4)
    assert eps(1.0, 1, local_steps=3) < eps(1.0, 1, local_steps=6)
    assert eps(4.0, 2) < eps(2.0, 2) < eps(1.0, 2) < eps(0.5, 2)


def test_the_reported_epsilon_bounds_every_clients_own():
    ledger = _ledger(sigma=1.0)
    # client 1 is small (N = B: no amplification), client 0 trains most, client 2 is large
    releases = [Release(1, 4, 3, (1.0,), ((0, 1, 2),), (30, 4, 200)),
                Release(2, 4, 2, (1.0,), ((0, 2),), (30, 200)),
                Release(3, 4, 1, (1.0,), ((0,),), (30,))]
    for release in releases:
        ledger.record(release)

    own = {0: _library(30, 4, 1.0, 9), 1: _library(4, 4, 1.0, 3), 2: _library(200, 4, 1.0, 6)}
    assert ledger.epsilon() == pytest.approx(max(own.values()), rel=1e-12)
    assert all(value <= ledger.epsilon() for value in own.values())


def test_the_ledger_reads_its_sample_releases_back(tmp_path):
    path = tmp_path / "privacy.jsonl"
    cfg = _cfg()
    first = PrivacyLedger(cfg, path)
    first.record(Release(1, 4, 2, (1.0,), ((1, 3),), (50, 60)))

    again = PrivacyLedger(cfg, path)

    assert again.releases == first.releases and again.epsilon() == first.epsilon()


# --- the config ----------------------------------------------------------------------------

@pytest.mark.parametrize(("table", "message"), [
    ({"algorithm": {"name": "fedit"}},
     "`privacy.dp` = 'sample' supports algorithm.name fedkseed, fedkseed-pro, mezo"),
    ({"privacy": {"noise_multiplier": 0.0}},
     "`privacy.noise_multiplier` = 0 with `privacy.dp` = 'sample' adds no noise"),
    ({"algorithm": {"weighting": "examples"}},
     "`privacy.dp` = 'sample' needs `algorithm.weighting = \"uniform\"`"),
])
def test_sample_dp_refuses(table, message):
    merged = {**BASE, "privacy": {"dp": "sample", **table.get("privacy", {})},
              "algorithm": {**BASE["algorithm"], **table.get("algorithm", {})}}

    with pytest.raises(ConfigError) as info:
        parse_config(merged)

    assert message in str(info.value)


def test_sample_dp_is_accepted_for_every_zo_algorithm_with_secagg_and_in_clear():
    for name in ("fedkseed", "fedkseed-pro", "mezo"):
        assert parse_config({**BASE, "algorithm": {**BASE["algorithm"], "name": name},
                             "privacy": {"dp": "sample"}}).privacy.dp == "sample"
    with_secagg = parse_config({**BASE, "federation": {"num_clients": 4, "clients_per_round": 3, "min_replies": 2},
                                "privacy": {"dp": "sample", "secagg": True}})
    assert with_secagg.privacy.secagg and not with_secagg.privacy.client_level
    # a robust statistic of private scalars is post-processing: allowed, unlike client-level DP
    robust = parse_config({**BASE, "robust": {"method": "median"}, "privacy": {"dp": "sample"}})
    assert robust.robust.method == "median"
    with pytest.raises(ConfigError, match="with `privacy.dp` = 'local'"):
        parse_config({**BASE, "robust": {"method": "median"}, "privacy": {"dp": "local"}})
