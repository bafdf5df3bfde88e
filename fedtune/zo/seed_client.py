"""The flow every ZO client runs, whatever its backend: sync through the seed log, draw the
round's keys and batches, take the local steps, report.

:class:`fedtune.zo.client.ZOClient` (torch) and :class:`fedtune.device.DeviceClient` (numpy +
ONNX Runtime) subclass :class:`SeedClient` and supply only what differs: how weights are
loaded, replayed, copied and hashed, and how a batch's loss is computed. So the keys a
client draws, the rows it trains on and what it reports cannot drift apart between the two.
Torch-free.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from fedtune.config import RunConfig
from fedtune.lru import LRU, PARTITION_CACHE
from fedtune.privacy.sample import private_estimate, secret_rows
from fedtune.progress import Progress, counting_steps
from fedtune.rng import derive_seed, generator, secret_generator

from .estimators import Release
from .seeds import SeedUpdate
from .sync import ClientReport, SeedKeys, missing_updates, run_key

__all__ = ["SeedClient"]

log = logging.getLogger(__name__)


class SeedClient(ABC):
    """The process-wide ZO client for one run (built once, reused by every virtual client).

    Subclasses set ``workload`` (``examples``, ``partition``, ``encode``), ``params`` (the
    working copy, perturbed in place) and ``base`` (the global weights at ``synced_round``),
    both lists of ``(name, tensor or array)``, then call ``super().__init__(cfg)``.
    """

    workload: Any
    params: Sequence[tuple[str, Any]]
    base: Sequence[tuple[str, Any]]

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.key = run_key(cfg)
        self.synced_round = 0
        self._dirty = False
        self._digest: str | None = None
        self._keys = SeedKeys(cfg)
        self.max_key, self.universe, self.seed_of_key = self._keys.max_key, self._keys.universe, self._keys.seed_of_key
        self._replay_rate = 0.0
        # encoded partitions of the clients this process played last: bounded, not one per client
        self._partitions: LRU[tuple[int, int], dict[str, Any]] = LRU(PARTITION_CACHE)

    # --- what a backend supplies ---------------------------------------------------------

    @abstractmethod
    def _load_base(self, weights: Mapping[str, np.ndarray]) -> None:
        """Overwrite ``base`` with full weights sent by the server."""

    @abstractmethod
    def _replay_base(self, update: SeedUpdate) -> None:
        """Apply one log entry to ``base``, canonically."""

    @abstractmethod
    def _reset_working_copy(self) -> None:
        """Copy ``base`` into ``params`` in place."""

    @abstractmethod
    def _base_digest(self) -> str:
        """:func:`fedtune.zo.seeds.weights_digest` of ``base``."""

    @abstractmethod
    def _local_train(self, loss_for_step: Callable[[int], Any], keys: list[int], release: Release | None) -> Any:
        """The local ZO steps on ``params``, ``algorithm.directions`` keys per step, each
        direction's estimate made by ``release`` when given (returns a ``LocalResult``)."""

    @abstractmethod
    def _batch_loss(self, encoded: dict[str, Any], batch_size: int, seed: int, step: int) -> Any:
        """The loss of step ``step``'s batch with the current ``params``."""

    def _example_losses(self, encoded: dict[str, Any], rows: np.ndarray) -> np.ndarray:
        """Each of ``rows``' loss with the current ``params``, ``float64 (B,)`` (``privacy.dp = "sample"``).

        Raises:
            NotImplementedError: on a backend without per-example losses (the config refuses it first).
        """
        raise NotImplementedError(f"{type(self).__name__} has no per-example losses for privacy.dp = 'sample'")

    # --- the shared flow -----------------------------------------------------------------

    def sync(
        self, state_round: int, updates: Sequence[SeedUpdate], weights: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Bring ``base`` (and the working copy) to global state ``state_round``.

        Raises:
            OutOfSync: if ``updates`` do not bridge the client's state to ``state_round``.
        """
        if weights is not None:
            self._load_base(weights)
            self.synced_round, self._digest = state_round, None
        todo = missing_updates(self.synced_round, state_round, updates)
        changed = weights is not None or bool(todo)
        start, directions = time.perf_counter(), 0
        progress = Progress("replaying the seed log", len(todo), "rounds", self.cfg.log.progress_s)
        for update in todo:
            self._replay_base(update)
            directions += len(update.keys)
            progress.advance(1)
        if directions:
            elapsed = max(time.perf_counter() - start, 1e-9)
            self._replay_rate = directions * sum(int(np.prod(t.shape)) for _, t in self.base) / elapsed
        self.synced_round = state_round
        if changed:
            self._digest = None
        if changed or self._dirty:
            self._reset_working_copy()
            self._dirty = False

    def digest(self) -> str:
        if self._digest is None:
            self._digest = self._base_digest()
        return self._digest

    def _data(self, partition_id: int, num_partitions: int) -> dict[str, Any]:
        def build() -> dict[str, Any]:
            indices = self.workload.partition(partition_id, num_partitions)
            train = self.workload.examples[0]
            return self.workload.encode([train[i] for i in indices])

        return self._partitions.get_or_build((partition_id, num_partitions), build)

    def train(
        self, round: int, partition_id: int, num_partitions: int, probabilities: np.ndarray | None = None
    ) -> ClientReport:
        """Local ZO steps from the synced state (call :meth:`sync` first).

        Args:
            round: the round being trained (with ``partition_id``, it seeds the draws).
            partition_id, num_partitions: which share of the data this client holds.
            probabilities: FedKSeed-Pro's sampling distribution over the candidates
                (None: uniform, plain FedKSeed).
        """
        cfg, a = self.cfg, self.cfg.algorithm
        encoded = self._data(partition_id, num_partitions)
        num_examples = int(encoded["input_ids"].shape[0])
        # one key per direction, step by step (q = a.directions per step); with q = 1 the
        # draws are exactly those of one key per step
        num_keys = a.local_steps * a.directions
        if self._keys.pool is None:
            keys = [derive_seed(cfg.seed, "mezo", round, partition_id, s) for s in range(num_keys)]
        else:
            draw = generator(cfg.seed, "steps", round, partition_id)
            keys = draw.choice(a.num_candidates, size=num_keys, p=probabilities).tolist()
        batch_seed = derive_seed(cfg.seed, "batch", round, partition_id)
        batch_size = min(a.batch_size, num_examples)

        self._dirty = True
        progress = Progress(f"partition {partition_id}: local steps", a.local_steps, "steps", cfg.log.progress_s)
        release: Release | None = None
        if cfg.privacy.dp == "sample":  # each step's rows and noise from OS entropy (fedtune.privacy.sample)
            secret = secret_generator()
            rows = secret_rows(num_examples, batch_size, a.local_steps, secret)
            release = partial(private_estimate, clip=cfg.privacy.dp_clip,
                              noise_multiplier=cfg.privacy.noise_multiplier, rng=secret)
            loss_for_step = partial(self._step_example_losses, encoded, rows)
        else:
            loss_for_step = partial(self._batch_loss, encoded, batch_size, batch_seed)
        result = self._local_train(counting_steps(loss_for_step, progress), keys, release)
        if result.skipped:
            log.warning("round %d, partition %d: %d step(s) skipped for a non-finite loss",
                        round, partition_id, result.skipped)
        return ClientReport(
            keys=result.keys,
            scalars=result.scalars,
            num_examples=num_examples,
            train_loss=result.mean_loss if math.isfinite(result.mean_loss) else math.nan,
            skipped_steps=result.skipped,
            state_round=self.synced_round,
            digest=self.digest() if cfg.eval.check_sync else "",
            replay_rate=self._replay_rate,
        )

    def _step_example_losses(self, encoded: dict[str, Any], rows: list[np.ndarray], step: int) -> np.ndarray:
        return self._example_losses(encoded, rows[step])

    def _seed_of(self, key: int) -> int:
        return int(self.seed_of_key(np.array([key]))[0])
