"""SecAgg+ set-up: [privacy] validation, the dense seed vector, the quantisation bound (no simulation)."""

import numpy as np
import pytest

from fedtune import algorithms
from fedtune._flwr_compat import dequantize, quantize
from fedtune.config import ConfigError, parse_config
from fedtune.privacy import (
    SecAggSettings,
    dense_seed_vector,
    error_bound,
    flatten,
    q_ratio,
    seed_sums_from_mean,
    unflatten,
)
from fedtune.privacy.secagg import auto_quantization_range

BASE = {"model": {"config": "micro-llama"}, "federation": {"num_clients": 10, "clients_per_round": 5}}


def _cfg(privacy, algorithm="fedkseed", **sections):
    return parse_config({**BASE, "algorithm": {"name": algorithm}, "privacy": privacy, **sections})


def test_inconsistent_secagg_settings_are_all_refused_at_once_before_any_round():
    privacy = {"secagg": True, "reconstruction_threshold": 6, "scalar_clip": 10.0, "clipping_range": 4.0,
               "quantization_range": 2**30}

    with pytest.raises(ConfigError) as info:
        _cfg(privacy)

    text = str(info.value)
    assert "`privacy.reconstruction_threshold` (6) must be 0 (a majority) or in [2, 5]" in text
    assert "`privacy.clipping_range` (4.0) is smaller than `privacy.scalar_clip` (10.0)" in text
    assert "reaches SecAgg+'s modulus 2**32" in text
    assert len(info.value.errors) == 3


def test_secagg_needs_a_dense_vector_and_enough_clients():
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "algorithm": {"name": "mezo"}, "federation": {"num_clients": 4, "clients_per_round": 2},
                      "privacy": {"secagg": True, "num_shares": 2}})

    text = str(info.value)
    supported = algorithms.supporting("secagg")  # the registry's list, so a new algorithm needs no edit here
    assert {"fedkseed", "fedkseed-pro", "fedit", "ffa-lora", "lorafair"} <= set(supported) and "mezo" not in supported
    assert f"`privacy.secagg` supports algorithm.name {', '.join(supported)}, got 'mezo'" in text
    assert "needs clients_per_round >= 3" in text
    assert "`privacy.num_shares` must be 0 (every sampled client) or in [3, clients_per_round=2]" in text


def test_secagg_refuses_compression_and_one_phase_lorafair():
    with pytest.raises(ConfigError) as info:
        _cfg({"secagg": True}, algorithm="lorafair", compress={"method": "topk"})

    assert "needs `lora.two_phase = true`" in str(info.value)
    assert "`compress.method` must be 'none', got 'topk'" in str(info.value)
    assert len(info.value.errors) == 2


def test_flatten_and_unflatten_round_trip_in_name_order():
    tensors = {"b": np.arange(6.0).reshape(2, 3), "a": np.array([-9.0, 0.5])}

    vector, clipped = flatten(tensors, clip=4.0)

    assert vector.tolist() == [-4.0, 0.5, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0] and clipped == 2
    back = unflatten(vector, {"a": (2,), "b": (2, 3)})
    assert back["b"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 4.0]]
    with pytest.raises(ValueError, match="does not hold 7 values"):
        unflatten(vector, {"a": (1,), "b": (2, 3)})


def test_auto_settings_resolve_from_the_config():
    cfg = _cfg({"secagg": True, "scalar_clip": 64.0})

    s = SecAggSettings.from_config(cfg)

    # 5 clients: 5 x 2**29 < 2**32 <= 5 x 2**30
    assert s.quantization_range == 2**29 == auto_quantization_range(5)
    assert s.clipping_range == 64.0 and s.threshold == 3 and s.num_shares == 0
    assert s.max_weight == cfg.data.num_examples  # weighting = "examples": no partition is larger
    assert auto_quantization_range(2) == 2**30  # capped: Flower rounds in int32


def test_dense_vector_sums_steps_per_seed_and_clips():
    keys = np.array([3, 1, 3, 0], dtype=np.uint64)
    scalars = np.array([2.5, -1.0, 0.75, 40.0], dtype=np.float32)

    vector, clipped = dense_seed_vector(keys, scalars, 5, clip=32.0)

    assert vector.tolist() == [32.0, -1.0, 0.0, 3.25, 0.0]
    assert clipped == 1


def test_flowers_quantiser_stays_within_the_reported_bound():
    # Flower's own quantise / dequantise of a weighted mean, as the workflow computes it.
    cfg = _cfg({"secagg": True, "scalar_clip": 8.0, "quantization_range": 2**12}, algorithm="fedkseed")
    s = SecAggSettings.from_config(cfg)
    values = np.random.default_rng(0).uniform(-8, 8, size=(5, 1000))
    weights = [37.0, 80.0, 5.0, 61.0, 120.0]
    q = [q_ratio(w, s) for w in weights]
    quantised = sum(quantize([values[i] * (q[i] / s.quantization_range)], s.clipping_range,
                             s.quantization_range)[0] for i in range(5))
    mean = (dequantize([quantised], s.clipping_range, s.quantization_range)[0] - 4 * s.clipping_range) \
        * s.quantization_range / sum(q)
    exact = np.average(values, axis=0, weights=weights)

    error = np.abs(mean - exact).max()

    bound = error_bound(weights, s)
    assert error <= bound
    # and not vacuous: the max over 1000 values of five rounding errors (each uniform-ish in one
    # step) comes within a small factor of five steps; 10x leaves room for Flower's unseeded rounding
    assert bound < 10 * error


def test_untouched_seeds_come_back_as_exact_zeros():
    cfg = _cfg({"secagg": True})
    s = SecAggSettings.from_config(cfg)
    weights = [10.0, 20.0]
    scale = sum(q_ratio(w, s) for w in weights) / s.quantization_range
    one_level = s.step / scale
    mean = np.array([0.0, 1e-13, one_level, -3 * one_level, 0.4 * one_level])

    assert seed_sums_from_mean(mean, weights, s).tolist() == [0.0, 0.0, one_level, -3 * one_level, 0.0]
