"""SecAgg+ settings and the dense vectors fedtune sums with it (Flower's protocol, no crypto here).

Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020
(https://eprint.iacr.org/2020/704), as implemented by Flower: ``SecAggPlusWorkflow`` on the
server, ``secaggplus_mod`` on the client. This module only decides the protocol's numbers
from a run's config and lays fedtune's updates out as the vectors the protocol sums:

- LoRA (FedIT, FFA-LoRA): the rule's uplink tensors' update (trained - global), flattened
  in name order (:func:`flatten`) and clipped to ``+-privacy.scalar_clip``; LoRA-FAIR's
  second sum, the ``B_k A_k Āᵀ`` projections, the same way.
- FedKSeed: a client's update is a dense ``(K,)`` vector, entry k the sum of the projected
  gradients of its steps on candidate k (zero for candidates it did not draw), clipped to
  ``+-privacy.scalar_clip``. The protocol returns ``sum_i q_i v_i / sum_i q_i`` with
  ``q_i ~ weight_i / max_weight``: fedtune's per-seed weighted mean G, the very quantity the
  clear path aggregates (:func:`fedtune.zo.seeds.aggregate`).

Flower's client quantises each value stochastically to ``quantization_range`` levels over
``[-clipping_range, clipping_range]`` (one level: ``step = 2 c / Q``), so each client adds
less than one step of error per value; :func:`error_bound` turns that into the bound on the
recovered mean. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtune.config import SECAGG_MODULUS, RunConfig

__all__ = [
    "SecAggSettings",
    "dense_seed_vector",
    "error_bound",
    "flatten",
    "q_ratio",
    "seed_sums_from_mean",
    "unflatten",
    "update_vector",
]


@dataclass(frozen=True)
class SecAggSettings:
    """The numbers one SecAgg+ round runs with (resolved from ``[privacy]``).

    Attributes:
        num_shares: shares of each client's secrets; ``0`` = every sampled client.
        threshold: shares that unmask a client (at most ``sampled - threshold`` may drop).
        clipping_range: c, SecAgg+ clips every value to ``[-c, c]``.
        quantization_range: Q, levels over ``[-c, c]``.
        max_weight: a client's update is scaled by ``weight / max_weight`` (<= 1).
        scalar_clip: the clip clients apply to their own values first (<= c).
    """

    num_shares: int
    threshold: int
    clipping_range: float
    quantization_range: int
    max_weight: float
    scalar_clip: float

    @classmethod
    def from_config(cls, cfg: RunConfig, num_sampled: int | None = None) -> SecAggSettings:
        """Resolve the ``0 = auto`` values for a round of ``num_sampled`` clients
        (default ``federation.clients_per_round``)."""
        p = cfg.privacy
        n = cfg.federation.clients_per_round if num_sampled is None else num_sampled
        shares = p.num_shares if p.num_shares and p.num_shares < n else 0
        threshold = p.reconstruction_threshold or max(2, (shares or n) // 2 + 1)
        levels = p.quantization_range or auto_quantization_range(cfg.federation.clients_per_round)
        if p.max_weight:
            max_weight = p.max_weight
        else:
            max_weight = float(cfg.data.num_examples) if cfg.algorithm.weighting == "examples" else 1.0
        return cls(
            num_shares=shares,
            threshold=threshold,
            clipping_range=p.clipping_range or p.scalar_clip,
            quantization_range=levels,
            max_weight=max_weight,
            scalar_clip=p.scalar_clip,
        )

    @property
    def step(self) -> float:
        """One quantisation level, in the values' unit."""
        return 2 * self.clipping_range / self.quantization_range


def auto_quantization_range(clients: int) -> int:
    """The largest power of two Q <= 2**30 with ``clients x Q`` below SecAgg+'s 2**32 modulus.

    Each client's quantised value lies in ``[0, Q]`` and its weight factor in ``[0, Q]``: their
    sum over ``clients`` must stay below the modulus or the masked sum wraps. 2**30 keeps
    Flower's int32 stochastic rounding clear of overflow.
    """
    return min(2**30, 2 ** math.floor(math.log2((SECAGG_MODULUS - 1) / clients)))


def q_ratio(weight: float, settings: SecAggSettings) -> int:
    """The integer weight factor Flower's client derives: ``round(weight / max_weight x Q)``."""
    return round(weight / settings.max_weight * settings.quantization_range)


def dense_seed_vector(
    keys: np.ndarray, scalars: np.ndarray, num_candidates: int, clip: float
) -> tuple[np.ndarray, int]:
    """A client's FedKSeed steps as the dense vector SecAgg+ sums.

    Args:
        keys: ``uint64 (n,)`` candidate indices of the steps, each in ``[0, num_candidates)``.
        scalars: ``float32 (n,)`` projected gradients g of the steps.
        num_candidates: K.
        clip: each entry (the sum of g over the steps on one candidate) is clipped to ``+-clip``.

    Returns:
        ``(vector float64 (K,), how many entries the clip changed)``.
    """
    vector = np.zeros(num_candidates, dtype=np.float64)
    np.add.at(vector, np.asarray(keys, dtype=np.int64), np.asarray(scalars, dtype=np.float64))
    clipped = int(np.count_nonzero(np.abs(vector) > clip))
    return np.clip(vector, -clip, clip), clipped


def error_bound(weights: Sequence[float], settings: SecAggSettings) -> float:
    """Largest possible |recovered mean - exact weighted mean| of any one value.

    Each client's scaled value ``(q_i / Q) x_i`` is rounded stochastically to a level: an
    error below one ``step``. The server divides the sum by ``sum_i q_i / Q``. The weights
    themselves are rounded to ``q_i``; mixing the values (|x| <= c) with the rounded instead
    of the exact weights moves the mean by at most ``2 c sum_i |q_i/Q - w_i/W| / sum_i q_i/Q``
    (W = max_weight).
    """
    levels = settings.quantization_range
    q = [q_ratio(w, settings) / levels for w in weights]
    total = sum(q)
    if not weights or total <= 0:
        return math.inf
    drift = sum(abs(qi - w / settings.max_weight) for qi, w in zip(q, weights))
    return (len(weights) * settings.step + 2 * settings.clipping_range * drift) / total


def seed_sums_from_mean(mean: np.ndarray, weights: Sequence[float], settings: SecAggSettings) -> np.ndarray:
    """The recovered per-seed means, with the seeds no client touched set to exactly zero.

    The protocol's integer sum for a value is the sum of the clients' quantised values; its
    offset from "every client sent 0" is an integer m, and the float mean is
    ``m x step / sum_i (q_i/Q)`` plus float64 rounding. Entries with ``m = 0`` are exact
    zeros: they leave the seed update, as unused seeds do in the clear path.
    """
    scale = sum(q_ratio(w, settings) for w in weights) / settings.quantization_range
    levels = np.rint(np.abs(mean) * scale / settings.step)
    return np.where(levels >= 1, mean, 0.0)


def flatten(tensors: Mapping[str, Any], clip: float) -> tuple[np.ndarray, int]:
    """Named arrays (numpy or torch) as one float64 vector, in sorted name order, clipped.

    Returns:
        ``(vector, how many entries the clip changed)``.
    """
    parts = [np.asarray(tensors[name], dtype=np.float64).ravel() for name in sorted(tensors)]
    vector = np.concatenate(parts) if parts else np.zeros(0)
    clipped = int(np.count_nonzero(np.abs(vector) > clip))
    return np.clip(vector, -clip, clip), clipped


def update_vector(trained: Mapping[str, Any], base: Mapping[str, Any]) -> np.ndarray:
    """A LoRA client's update, ``trained - base`` over ``base``'s names (the rule's uplink
    tensors), as one float64 vector in name order (unclipped): the vector SecAgg+ sums."""
    return flatten({n: np.asarray(trained[n], np.float64) - np.asarray(base[n], np.float64) for n in base},
                   math.inf)[0]


def unflatten(vector: np.ndarray, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The inverse of :func:`flatten`: ``{name: float64 array of its shape}``.

    Raises:
        ValueError: if the vector's length is not the shapes' total size.
    """
    sizes = {name: int(np.prod(shapes[name])) for name in sorted(shapes)}
    if len(vector) != sum(sizes.values()):
        raise ValueError(f"a vector of {len(vector)} values does not hold {sum(sizes.values())} values of {len(sizes)} tensors")
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = vector[start : start + size].reshape(shapes[name])
        start += size
    return out
