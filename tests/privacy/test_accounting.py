"""The accountant: epsilon per mode against dp-accounting called directly and a hand-computed
RDP bound, per-round multipliers composed, and a ledger that survives a restart."""

import dataclasses
import math

import pytest
from dp_accounting import dp_event, rdp
from dp_accounting.privacy_accountant import NeighboringRelation

from fedtune.config import parse_config
from fedtune.privacy.accounting import RDP_ORDERS, PrivacyLedger, Release

BASE = {"model": {"config": "micro-llama"}, "federation": {"num_clients": 20, "clients_per_round": 4},
        "algorithm": {"weighting": "uniform"}}
DELTA = 1e-5


def _ledger(dp, z=1.1, path=None):
    cfg = parse_config({**BASE, "privacy": {"secagg": dp == "distributed", "dp": dp, "dp_delta": DELTA}})
    # z = 0 is refused in a config; the ledger must still account a release without noise right
    return PrivacyLedger(dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, noise_multiplier=z)), path)


def _library(event, count=1):
    accountant = rdp.RdpAccountant(list(RDP_ORDERS), NeighboringRelation.REPLACE_ONE)
    accountant.compose(event, count)
    return accountant.get_epsilon(DELTA)


def _gaussian_epsilon_by_hand(rdp_per_order):
    """dp-accounting's RDP -> (epsilon, delta) conversion (Canonne, Kamath, Steinke 2020, Prop. 12),
    written out: min over orders a of rdp(a) + log(1 - 1/a) - log(delta a) / (a - 1)."""
    return min(rdp_per_order(a) + math.log1p(-1 / a) - math.log(DELTA * a) / (a - 1) for a in RDP_ORDERS)


def test_central_is_a_fixed_size_sample_without_replacement_of_a_gaussian_at_half_z():
    ledger = _ledger("central", z=1.1)

    values = []
    for round_ in (1, 2, 3):
        ledger.record(Release(round_, 20, 4, (1.1,)))
        values.append(ledger.epsilon())

    # replace-one moves a clipped sum by 2C: noise z C is multiplier z / 2 to the library
    event = dp_event.SampledWithoutReplacementDpEvent(20, 4, dp_event.GaussianDpEvent(1.1 / 2))
    assert values[2] == pytest.approx(_library(event, 3), rel=1e-12)
    assert values[0] < values[1] < values[2]  # monotone in rounds


def test_central_epsilon_falls_with_z_and_with_the_sampling_rate():
    def eps(z, population):
        ledger = _ledger("central", z=z)
        ledger.record(Release(1, population, 4, (z,)))
        return ledger.epsilon()

    assert eps(2.0, 20) < eps(1.0, 20)
    assert eps(1.0, 40) < eps(1.0, 20) < eps(1.0, 4)  # 4 of 4 sampled: no amplification


def test_everyone_sampled_is_the_plain_gaussian_at_half_z_by_hand():
    ledger = _ledger("central", z=2.0)

    for round_ in (1, 2, 3):
        ledger.record(Release(round_, 4, 4, (2.0,)))

    # 3 rounds of a Gaussian with replace-one sensitivity 2C and noise 2C: RDP 3 a (2C)^2 / (2 (2C)^2)
    assert ledger.epsilon() == pytest.approx(_gaussian_epsilon_by_hand(lambda a: 3 * a / 2), rel=1e-9)


def test_two_sums_of_one_round_are_composed_inside_its_one_sample():
    one, two = _ledger("central"), _ledger("central")

    one.record(Release(1, 20, 4, (1.1,)))
    two.record(Release(1, 20, 4, (1.1, 1.1)))  # LoRA-FAIR: the factors' sum and the projections'

    both = dp_event.ComposedDpEvent([dp_event.GaussianDpEvent(0.55), dp_event.GaussianDpEvent(0.55)])
    assert two.epsilon() == pytest.approx(_library(dp_event.SampledWithoutReplacementDpEvent(20, 4, both)))
    assert two.epsilon() > one.epsilon()


def test_local_reports_the_client_that_took_part_most_by_hand():
    ledger = _ledger("local", z=2.0)

    ledger.record(Release(1, 20, 4, (2.0,), ((0, 1, 2, 3),)))
    ledger.record(Release(2, 20, 4, (2.0,), ((0, 4, 5, 6),)))
    ledger.record(Release(3, 20, 4, (2.0,), ((0, 7, 8, 9),)))

    # client 0, three releases of its own vector (sensitivity 2C) with noise 2C; nobody else matters
    assert ledger.epsilon() == pytest.approx(_gaussian_epsilon_by_hand(lambda a: 3 * a / 2), rel=1e-9)
    # no amplification: the server knows who took part, so this is above central's with 4 of 20 sampled
    central = _ledger("central", z=2.0)
    for round_ in (1, 2, 3):
        central.record(Release(round_, 20, 4, (2.0,)))
    assert ledger.epsilon() > central.epsilon()


def test_distributed_composes_each_rounds_actual_multiplier():
    full, dropped = _ledger("distributed", z=2.0), _ledger("distributed", z=2.0)
    clients = ((0, 1, 2, 3),)

    full.record(Release(1, 4, 4, (2.0,), clients))
    full.record(Release(2, 4, 4, (2.0,), clients))
    dropped.record(Release(1, 4, 4, (2.0,), clients))
    dropped.record(Release(2, 4, 4, (1.0,), ((0, 1),)))  # 1 of 4 shares: 2 sqrt(1/4)

    expected = dp_event.ComposedDpEvent([dp_event.GaussianDpEvent(1.0), dp_event.GaussianDpEvent(0.5)])
    assert dropped.epsilon() == pytest.approx(_library(expected), rel=1e-12)
    assert dropped.epsilon() > full.epsilon()


def test_no_noise_is_no_privacy_and_no_release_is_none_spent():
    central, local = _ledger("central", z=0.0), _ledger("local", z=0.0)

    assert central.epsilon() == 0 and local.epsilon() == 0
    central.record(Release(1, 20, 4, (0.0,)))
    local.record(Release(1, 20, 4, (0.0,), ((3,),)))
    assert central.epsilon() == math.inf and local.epsilon() == math.inf


@pytest.mark.parametrize("dp", ["central", "distributed"])
def test_epsilon_rebuilt_from_the_ledger_file_equals_the_uninterrupted_one(tmp_path, dp):
    releases = [Release(r, 20, 4, (2.0 if r % 2 else 1.5,), ((r % 5, 7),) if dp != "central" else ())
                for r in range(1, 6)]
    whole = _ledger(dp, z=2.0)
    for release in releases:
        whole.record(release)
    path = tmp_path / "privacy.jsonl"
    before = _ledger(dp, z=2.0, path=path)
    for release in releases[:3]:
        before.record(release)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"round": 4, "popul')  # the crash came mid-line: round 4 was never applied

    after = _ledger(dp, z=2.0, path=path)  # the restarted server
    assert after.releases == releases[:3]
    for release in releases[3:]:
        after.record(release)

    assert after.epsilon() == whole.epsilon()
    assert _ledger(dp, z=2.0, path=path).releases == releases  # the torn line stays unread
