"""The seed side of FedKSeed, torch-free: candidate pool, seed updates, aggregation.

Qin et al., "Federated Full-Parameter Tuning of Billion-Sized Language Models with
Communication Cost under 18 Kilobytes", ICML 2024 (https://arxiv.org/abs/2312.06353).
Everything here runs with numpy alone, so a torch-free device (and the server's
bookkeeping) uses the same definitions; applying an update to weights is
:func:`fedtune.zo.fedkseed.replay_` (torch) or :func:`replay_numpy_` (numpy).

The replay is fedtune's canonical form of a round (docs/architecture.md): the broadcast
scalars are float32, each coefficient is ``float32(-lr * G_k)`` computed in float64, and
the additions run in the entry's order, so every party that starts from the same weights
ends bit-identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedtune.rng import add_scaled_many_, derive_seed

__all__ = [
    "SeedUpdate",
    "aggregate",
    "candidate_seeds",
    "replay_coefficient",
    "replay_numpy_",
    "weights_digest",
]


def candidate_seeds(run_seed: int, num_candidates: int) -> np.ndarray:
    """The pool of K candidate seeds every party derives from the run's seed.

    Returns:
        ``uint64`` array of shape ``(num_candidates,)``.
    """
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"`num_candidates` (K) must be an int >= 1, got {num_candidates!r}")
    return np.array(
        [derive_seed(run_seed, "fedkseed-pool", k) for k in range(num_candidates)], dtype=np.uint64
    )


@dataclass(frozen=True)
class SeedUpdate:
    """One round's aggregated update: the unit of the seed log and of replay.

    Attributes:
        round: the round that produced it (applying it yields global state ``round``).
        keys: ``uint64 (n,)`` candidate indices (FedKSeed) or raw seeds (MeZO), ascending:
            the canonical replay order.
        seeds: ``uint64 (n,)`` stream seeds of the keys.
        scalars: ``float32 (n,)`` aggregated projected gradients ``G``.
        lr: the learning rate the round applies.
    """

    round: int
    keys: np.ndarray
    seeds: np.ndarray
    scalars: np.ndarray
    lr: float

    def __post_init__(self) -> None:
        n = len(self.keys)
        if len(self.seeds) != n or len(self.scalars) != n:
            raise ValueError(
                f"keys, seeds and scalars must have one length, got {n}, "
                f"{len(self.seeds)}, {len(self.scalars)}"
            )
        if self.scalars.dtype != np.float32:
            raise TypeError(f"`scalars` must be float32, got {self.scalars.dtype}")


def replay_coefficient(lr: float, scalar: float | np.floating) -> float:
    """The canonical coefficient of one replayed direction: ``float32(-lr * G)``."""
    return float(np.float32(-float(lr) * float(np.float32(scalar))))


def replay_numpy_(arrays: Sequence[tuple[str, np.ndarray]], update: SeedUpdate) -> None:
    """Apply one round's update to numpy arrays in place (float32, float16 or
    ``ml_dtypes.bfloat16``); bit-identical to :func:`fedtune.zo.fedkseed.replay_` on the
    same weights in the same dtype."""
    seeds = [int(seed) for seed in update.seeds.tolist()]
    coefs = [replay_coefficient(update.lr, scalar) for scalar in update.scalars.tolist()]
    add_scaled_many_(arrays, seeds, coefs)


def weights_digest(named: Sequence[tuple[str, np.ndarray]]) -> str:
    """SHA-256 over the names and raw little-endian bytes of the arrays, in name order
    (the bytes of the arrays' own dtype: 2 per element for bfloat16 and float16).

    The identity of a global state: every party (torch or numpy) computes the same digest
    for the same weights, and the server compares clients' digests with its own.
    """
    digest = hashlib.sha256()
    for name, array in sorted(named, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def aggregate(
    contributions: Sequence[tuple[float, np.ndarray, np.ndarray]],
    *,
    round: int,
    lr: float,
    seed_of_key: Callable[[np.ndarray], np.ndarray],
) -> SeedUpdate:
    """Sum clients' per-step scalars per key into one round's :class:`SeedUpdate`.

    ``G_k = sum_i (w_i / sum_j w_j) * sum_{s : key_s = k} g_s``, accumulated in float64
    in the given client order (the caller fixes it, e.g. by node id), then rounded once to
    float32: what is broadcast is what every party replays.

    Args:
        contributions: ``(weight, keys uint64 (n_i,), scalars float32 (n_i,))`` per client.
        round: the round being aggregated.
        lr: the round's learning rate.
        seed_of_key: vectorised key -> stream seed.

    Raises:
        ValueError: on no contributions, a non-positive total weight or mismatched lengths.
    """
    if not contributions:
        raise ValueError("`contributions` is empty: no client update to aggregate")
    total = float(sum(weight for weight, _, _ in contributions))
    if not total > 0:
        raise ValueError(f"client weights must sum to a positive number, got {total}")
    all_keys = np.concatenate([keys for _, keys, _ in contributions]).astype(np.uint64)
    unique = np.unique(all_keys)  # ascending: the canonical replay order
    sums = np.zeros(len(unique), dtype=np.float64)
    for weight, keys, scalars in contributions:
        if len(keys) != len(scalars):
            raise ValueError(f"keys and scalars differ in length: {len(keys)} vs {len(scalars)}")
        np.add.at(sums, np.searchsorted(unique, keys), (weight / total) * scalars.astype(np.float64))
    scalars32 = sums.astype(np.float32)
    keep = scalars32 != 0  # a zero contributes nothing: leave it off the wire and the log
    keys_out = unique[keep]
    return SeedUpdate(
        round=round,
        keys=keys_out,
        seeds=np.asarray(seed_of_key(keys_out), dtype=np.uint64),
        scalars=scalars32[keep],
        lr=float(lr),
    )
