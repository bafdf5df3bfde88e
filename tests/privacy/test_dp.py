"""Differential privacy's mechanisms: clipping, noise that is really there at the stated scale,
and the [privacy] checks (the accountant: test_accounting.py; simulations: test_dp_simulation.py)."""

import dataclasses
import math
import os

import numpy as np
import pytest

from fedtune import algorithms
from fedtune.config import ConfigError, parse_config
from fedtune.privacy.dp import (
    add_central_noise,
    clip_and_noise,
    noise_multiplier,
    noised_seed_steps,
    private_mean,
)

BASE = {"model": {"config": "micro-llama"}, "federation": {"num_clients": 20, "clients_per_round": 4},
        "algorithm": {"weighting": "uniform", "num_candidates": 8}}
DRAWS = 200_000
# The sample std of N normal draws has a relative standard error of 1 / sqrt(2 N) (0.16% at
# 200k): 5 of them fail a correct scale with probability below 1e-6.
STD_REL = 5 / math.sqrt(2 * DRAWS)


def _cfg(dp, secagg=True, **privacy):
    noise = privacy.pop("noise_multiplier", 1.0)
    cfg = parse_config({**BASE, "privacy": {"secagg": secagg, "dp": dp, **privacy}})
    # noise 0 is refused in a config (no privacy at all); the tests use it to see the clip alone
    return dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, noise_multiplier=noise))


def test_clip_scales_large_updates_to_the_norm_and_leaves_small_ones():
    cfg = _cfg("central", dp_clip=2.0)

    big, was_big = clip_and_noise(np.array([6.0, 8.0]), cfg)  # norm 10
    small, was_small = clip_and_noise(np.array([0.3, 0.4]), cfg)

    assert big.tolist() == pytest.approx([1.2, 1.6]) and was_big
    assert small.tolist() == [0.3, 0.4] and not was_small  # central: clients only clip


@pytest.mark.parametrize(("dp", "std"), [("distributed", 3.0 / 2), ("local", 3.0)])
def test_a_clients_noise_has_the_stated_scale(dp, std):
    np.random.seed(0)  # Flower's noise draws from numpy's global generator
    cfg = _cfg(dp, noise_multiplier=1.5, dp_clip=2.0)

    noise, _ = clip_and_noise(np.zeros(DRAWS), cfg)

    # z C = 3: distributed, one of n = 4 shares: z C / sqrt(n) = 1.5; local, all of it: 3
    assert np.std(noise) == pytest.approx(std, rel=STD_REL)
    assert abs(np.mean(noise)) < 5 * std / math.sqrt(DRAWS)  # 5 standard errors of the mean


def test_the_servers_noise_on_the_mean_has_the_stated_scale():
    np.random.seed(1)
    cfg = _cfg("central", noise_multiplier=1.5, dp_clip=2.0)

    noise = add_central_noise(np.zeros(DRAWS), cfg, 4)

    assert np.std(noise) == pytest.approx(3.0 / 4, rel=STD_REL)  # z C / n on the mean of n = 4


def test_the_clear_central_mean_clips_each_update_then_noises_the_mean():
    np.random.seed(2)
    vectors = [np.array([6.0, 8.0, 0.0]), np.array([0.0, 0.0, 1.0])]  # norms 10 and 1
    exact = (np.array([1.2, 1.6, 0.0]) + np.array([0.0, 0.0, 1.0])) / 2  # clipped to C = 2, averaged

    noiseless = private_mean(vectors, _cfg("central", secagg=False, dp_clip=2.0, noise_multiplier=0.0))
    noised = private_mean([np.zeros(DRAWS)] * 4, _cfg("central", secagg=False, dp_clip=2.0, noise_multiplier=1.5))

    assert noiseless.tolist() == pytest.approx(exact.tolist())
    assert np.std(noised) == pytest.approx(3.0 / 4, rel=STD_REL)


def test_the_clear_local_mean_takes_the_clients_vectors_as_they_are():
    vectors = [np.array([6.0, 8.0]), np.array([0.0, 2.0])]  # already noised by their clients

    mean = private_mean(vectors, _cfg("local", secagg=False, dp_clip=2.0))

    assert mean.tolist() == [3.0, 5.0]  # no second clip, no second noise


def test_local_dp_sends_a_clipped_noised_step_per_candidate():
    np.random.seed(3)
    cfg = _cfg("local", secagg=False, dp_clip=1.0, noise_multiplier=0.0)  # no noise: see the clip
    keys, g = np.array([2, 5, 2], np.uint64), np.array([3.0, 4.0, 3.0], np.float32)  # dense: [.., 6, .., 4, ..]

    sent_keys, sent = noised_seed_steps(keys, g, cfg)
    _, noised = noised_seed_steps(keys, g, _cfg("local", secagg=False, dp_clip=1.0, noise_multiplier=2.0))

    assert sent_keys.tolist() == list(range(8)) and sent.dtype == np.float32
    expected = np.zeros(8)
    expected[[2, 5]] = [6 / math.sqrt(52), 4 / math.sqrt(52)]  # the dense vector scaled to norm 1
    assert sent.tolist() == pytest.approx(expected.tolist(), rel=1e-6)  # float32 on the wire
    assert np.count_nonzero(noised) == 8  # the noise reaches every candidate


def test_the_distributed_multiplier_counts_only_the_survivors_shares():
    cfg = _cfg("distributed", noise_multiplier=2.0)

    assert noise_multiplier(cfg, 4) == 2.0  # every one of n = 4 shares
    assert noise_multiplier(cfg, 1) == pytest.approx(1.0)  # 2 sqrt(1 / 4)
    assert noise_multiplier(_cfg("central", noise_multiplier=2.0), 1) == 2.0  # the server's noise, whoever is in
    assert noise_multiplier(_cfg("local", noise_multiplier=2.0), 1) == 2.0  # each client's own


def test_dp_without_secagg_is_central_or_local_and_needs_uniform_weights():
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "algorithm": {"weighting": "examples"}, "privacy": {"dp": "distributed"}})

    assert "'distributed' needs `privacy.secagg = true`" in str(info.value)
    assert "needs `algorithm.weighting = \"uniform\"`" in str(info.value)
    assert len(info.value.errors) == 2
    for dp in ("central", "local"):
        assert parse_config({**BASE, "privacy": {"dp": dp}}).privacy.dp == dp


@pytest.mark.parametrize("dp", ["central", "distributed", "local"])
def test_dp_without_noise_is_refused_in_one_line(dp):
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "privacy": {"dp": dp, "noise_multiplier": 0.0, "secagg": dp == "distributed"}})

    assert info.value.errors == [
        (f"`privacy.noise_multiplier` = 0 with `privacy.dp` = {dp!r} adds no noise: the clipped updates would be "
        "released as they are (epsilon infinite); set noise_multiplier > 0, or privacy.dp = 'none' (and "
        "`privacy.secagg = true` to hide the updates without DP)")]


def test_dp_refuses_what_has_no_dense_vector_to_clip_and_noise():
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "algorithm": {"name": "mezo", "weighting": "uniform"}, "ondevice": {"clients": 1},
                      "privacy": {"dp": "local"}})
    with pytest.raises(ConfigError) as lora:
        parse_config({**BASE, "model": {"config": "micro-bert", "task": "seq-cls"}, "data": {"source": "topics"},
                      "algorithm": {"name": "lorafair", "weighting": "uniform"}, "compress": {"method": "topk"},
                      "privacy": {"dp": "central"}})

    supported = algorithms.supporting("dp")  # the registry's list, so a new algorithm needs no edit here
    assert {"fedkseed", "fedkseed-pro", "fedit", "ffa-lora", "lorafair"} <= set(supported) and "mezo" not in supported
    assert f"`privacy.dp` supports algorithm.name {', '.join(supported)}, got 'mezo'" in str(info.value)
    assert "`privacy.dp` does not support ONNX device clients" in str(info.value)
    assert "`privacy.dp` with 'lorafair' needs `privacy.secagg = true`" in str(lora.value)
    assert "`compress.method` must be 'none', got 'topk'" in str(lora.value)


def test_the_noise_ignores_global_seeds_and_differs_in_forked_processes():
    cfg = _cfg("local", secagg=False, dp_clip=1.0, noise_multiplier=1.0)
    np.random.seed(0)
    first, _ = clip_and_noise(np.zeros(64), cfg)
    np.random.seed(0)  # whoever seeds numpy's global generator learns nothing of the next draw
    second, _ = clip_and_noise(np.zeros(64), cfg)
    assert not np.array_equal(first, second)

    # A forked child inherits the parent's memory, numpy's global state included; its noise
    # must still be its own.
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its draw, leave without running the parent's exit handlers
        os.close(read)
        os.write(write, clip_and_noise(np.zeros(64), cfg)[0].tobytes())
        os._exit(0)
    os.close(write)
    mine = clip_and_noise(np.zeros(64), cfg)[0]
    with os.fdopen(read, "rb") as pipe:
        theirs = np.frombuffer(pipe.read(), dtype=np.float64)
    os.waitpid(pid, 0)
    assert theirs.shape == (64,) and not np.array_equal(mine, theirs)
