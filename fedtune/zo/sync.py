"""What every ZO client shares, torch or not: the run's identity, the out-of-sync signal and
the report of a round. Torch-free, so the on-device client uses the very same definitions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedtune import algorithms, wire
from fedtune.config import RunConfig

from .seeds import SeedUpdate, candidate_seeds

__all__ = ["ClientReport", "OutOfSync", "SeedKeys", "missing_updates", "run_key"]


class SeedKeys:
    """How a run's direction keys map to stream seeds, and how they travel.

    FedKSeed and FedKSeed-Pro key a direction by its index in the pool of K candidates
    (``max_key = K``); unpooled MeZO keys it by the seed itself (``max_key = None``).
    """

    def __init__(self, cfg: RunConfig) -> None:
        a = cfg.algorithm
        pooled = algorithms.get(a.name).pooled
        self.pool = candidate_seeds(cfg.seed, a.num_candidates) if pooled else None
        self.max_key = a.num_candidates if pooled else None
        self.universe = wire.key_universe(pooled, a.num_candidates)  # keys lie in [0, universe); 0: 2**64

    def seed_of_key(self, keys: np.ndarray) -> np.ndarray:
        """Vectorised key -> stream seed (pool look-up for FedKSeed, identity for MeZO)."""
        keys = np.asarray(keys, dtype=np.uint64)
        return keys if self.pool is None else self.pool[keys.astype(np.int64)]


def missing_updates(synced_round: int, state_round: int, updates: Sequence[SeedUpdate]) -> list[SeedUpdate]:
    """The updates that take a client from ``synced_round`` to ``state_round``, in order.

    Raises:
        OutOfSync: if ``updates`` do not hold every round in between (or the client is
            ahead of the requested state).
    """
    by_round = {u.round: u for u in updates}
    needed = range(synced_round + 1, state_round + 1)
    if synced_round > state_round or any(r not in by_round for r in needed):
        raise OutOfSync(synced_round, state_round)
    return [by_round[r] for r in needed]


def run_key(cfg: RunConfig) -> str:
    """What must match between a client's cache and a run: model, data (and the held-out share
    federated evaluation carves from it), seed, algorithm, how the steps run on the model."""
    text = repr((cfg.seed, cfg.model, cfg.data, cfg.algorithm.name, cfg.algorithm.num_candidates,
                 cfg.algorithm.cache_features, held_out_share(cfg)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def held_out_share(cfg: RunConfig) -> float:
    """The share of each client's data federated evaluation holds out (0 when it is off):
    part of what a client's cached data depends on."""
    return cfg.eval.federated_holdout if cfg.eval.federated else 0.0


class OutOfSync(Exception):
    """The client cannot reach the requested global state from the updates it holds."""

    def __init__(self, have: int, need: int) -> None:
        super().__init__(f"client holds global state {have}, cannot reach {need} from the updates sent")
        self.have = have
        self.need = need


@dataclass(frozen=True)
class ClientReport:
    """What a client sends back after its local steps."""

    keys: np.ndarray  # uint64 (steps,) direction keys
    scalars: np.ndarray  # float32 (steps,) projected gradients
    num_examples: int  # size of the client's partition
    train_loss: float
    skipped_steps: int
    state_round: int
    digest: str  # of the synced global weights; "" when sync checks are off
    replay_rate: float  # elements/s of the last replay (0.0 if nothing was replayed)
