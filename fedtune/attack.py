"""An experiment tool: chosen simulated clients send corrupted updates (``[attack]``).

It exists to measure Byzantine-robust aggregation (:mod:`fedtune.robust`, ``bench/robust.py``):
the clients whose partition ids ``attack.clients`` lists train honestly, then corrupt what
they upload, as a malicious client could. Their synced state (and its digest) stays honest,
so the server accepts the reply; only the update is corrupted:

- ``scale``: the update times ``factor``;
- ``sign-flip``: the update times ``-factor``;
- ``random``: Gaussian noise of standard deviation ``factor`` x the update's RMS per
  coordinate, in place of the update; drawn from ``(seed, "attack", round, partition)``, so a
  run repeats bit for bit.

The update is FedKSeed's list of per-step scalars (its keys untouched) or a LoRA client's
``trained - global`` adapter tensors. Torch-free (numpy), for either client.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedtune.config import AttackConfig
from fedtune.rng import generator

__all__ = ["attack_rng", "corrupt", "corrupt_state", "is_malicious"]


def is_malicious(attack: AttackConfig, partition_id: int) -> bool:
    """Whether the client of ``partition_id`` corrupts its uploads."""
    return partition_id in attack.clients


def corrupt(update: np.ndarray, attack: AttackConfig, rng: np.random.Generator) -> np.ndarray:
    """``update`` corrupted as ``attack.kind`` says, in ``update``'s dtype (a new array)."""
    values = np.asarray(update, dtype=np.float64)
    if attack.kind == "scale":
        out = values * attack.factor
    elif attack.kind == "sign-flip":
        out = values * -attack.factor
    elif attack.kind == "random":
        rms = float(np.sqrt(np.mean(values**2))) if values.size else 0.0
        out = rng.standard_normal(values.shape) * (attack.factor * rms)
    else:
        raise ValueError(f"unknown attack kind {attack.kind!r}")
    return out.astype(np.asarray(update).dtype)


def attack_rng(seed: int, server_round: int, partition_id: int) -> np.random.Generator:
    """The generator of a malicious client's ``random`` draws in one round."""
    return generator(seed, "attack", server_round, partition_id)


def corrupt_state(
    trained: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], attack: AttackConfig,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """A LoRA client's adapter ``trained`` with its update ``trained - base`` corrupted, as one
    vector over ``base``'s names in sorted order (so ``random`` uses the whole update's RMS).

    Returns float32 arrays by name: ``base + corrupt(trained - base)``.
    """
    names = sorted(base)
    deltas = [np.asarray(trained[n], np.float64) - np.asarray(base[n], np.float64) for n in names]
    flat = np.concatenate([d.ravel() for d in deltas]) if deltas else np.zeros(0)
    bad = corrupt(flat, attack, rng)
    out, start = {}, 0
    for name, delta in zip(names, deltas, strict=True):
        part = bad[start : start + delta.size].reshape(delta.shape)
        out[name] = (np.asarray(base[name], np.float64) + part).astype(np.float32)
        start += delta.size
    return out
