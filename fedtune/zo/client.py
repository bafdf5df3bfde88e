"""A zeroth-order client's round: reach the global state, take local steps, report.

One :class:`ZOClient` lives per process and run. In simulation a worker process plays many
virtual clients in turn, so it builds the model once and keeps a single copy of the
global weights (``base``) beside the working model: each virtual client starts from
``base`` and the per-client state between rounds is nothing at all (docs/architecture.md).

Reaching the global state of round ``s`` means replaying the seed log's entries after
the client's own state, in order, onto ``base``; the replay is canonical, so ``base``
ends bit-identical to the server's weights. A client that cannot reach ``s`` from what it
was sent (it was away longer than the log window) says so, and the server sends it the
full weights once.

When every weight the client perturbs is in a label-name head (``model.trainable =
["classifier.*"]`` or a part of it) the encoder below it never changes, so the client
computes its examples' sentence features once (``algorithm.cache_features``, on by
default) and each ZO step runs the head alone on them: the same loss function, with the
encoder's forward passes taken out of the steps' cost. The features are kept with the
client's encoded data, for as long as that is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedtune.config import RunConfig
from fedtune.data.batches import sample_batch
from fedtune.dtypes import autocast, copy_bits_, to_numpy
from fedtune.lru import LRU
from fedtune.models import LabelNameClassifier
from fedtune.workload import Workload, batch_loss, example_losses, row_losses

from .estimators import Release
from .fedkseed import local_train, replay_
from .seed_client import SeedClient
from .seeds import SeedUpdate, weights_digest
from .sync import ClientReport, OutOfSync, run_key

__all__ = ["ClientReport", "OutOfSync", "ZOClient", "frozen_head", "head_features", "state_digest"]

FEATURES = "features"  # the key of the cached features in a client's encoded data


def state_digest(named: Sequence[tuple[str, torch.Tensor]]) -> str:
    """:func:`fedtune.zo.seeds.weights_digest` of torch tensors, over their own dtype's bytes."""
    return weights_digest([(name, to_numpy(t)) for name, t in named])


class ZOClient(SeedClient):
    """The torch ZO client: one model, one copy of the global weights (``base``)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.workload = Workload(cfg)
        self.model = self.workload.build_model(client=True)
        self.params = self.workload.trainable(self.model)
        # The global weights at `synced_round`; the working model is a scratch copy.
        self.base = [(name, p.detach().clone()) for name, p in self.params]
        self.head = frozen_head(self.model, [name for name, _ in self.params]) if cfg.algorithm.cache_features else None
        super().__init__(cfg)

    def _data(self, partition_id: int, num_partitions: int) -> dict[str, Any]:
        encoded = super()._data(partition_id, num_partitions)
        if self.head is not None and FEATURES not in encoded:
            encoded[FEATURES] = head_features(self.head, encoded, self.cfg.eval.batch_size, self.workload.device)
        return encoded

    def _load_base(self, weights: Mapping[str, np.ndarray]) -> None:
        for name, tensor in self.base:
            copy_bits_(tensor, np.asarray(weights[name]))

    def _replay_base(self, update: SeedUpdate) -> None:
        replay_(self.base, update)

    def _reset_working_copy(self) -> None:
        with torch.no_grad():
            for (_, p), (_, b) in zip(self.params, self.base):
                p.data.copy_(b)

    def _base_digest(self) -> str:
        return state_digest(self.base)

    def _local_train(self, loss_for_step: Callable[[int], Any], keys: list[int], release: Release | None) -> Any:
        a = self.cfg.algorithm
        return local_train(self.params, loss_for_step, keys=keys, seed_of_key=self._seed_of, eps=a.eps, lr=a.lr,
                           estimator=a.estimator, directions=a.directions, release=release)

    def evaluate(self, partition_id: int, num_partitions: int) -> tuple[int, dict[str, float]]:
        """The synced global weights (call :meth:`sync` first: it resets the working copy) scored
        on this client's own held-out share: :meth:`fedtune.workload.Workload.evaluate_local`."""
        return self.workload.evaluate_local(self.model, partition_id, num_partitions)

    def _batch_loss(self, encoded: dict[str, Any], batch_size: int, seed: int, step: int) -> torch.Tensor:
        with autocast(self.workload.device, self.cfg.model.dtype):  # float32 adapters/head over a 16-bit base
            return self._forward_loss(encoded, batch_size, seed, step)

    def _example_losses(self, encoded: dict[str, Any], rows: np.ndarray) -> np.ndarray:
        index, device = torch.from_numpy(rows), self.workload.device
        with autocast(device, self.cfg.model.dtype):
            if self.head is not None:
                logits = self.head.classify(encoded[FEATURES][index.to(encoded[FEATURES].device)]).logits
                losses = row_losses(logits, encoded["labels"][index].to(device))
            else:
                losses = example_losses(self.model, {key: value[index] for key, value in encoded.items()}, device)
        return losses.double().cpu().numpy()

    def _forward_loss(self, encoded: dict[str, Any], batch_size: int, seed: int, step: int) -> torch.Tensor:
        if self.head is not None:  # the same rows as below: sample_batch's draw depends only on N
            batch = sample_batch({key: encoded[key] for key in (FEATURES, "labels")}, batch_size, seed=seed, step=step)
            device = self.workload.device
            return self.head.classify(batch[FEATURES].to(device), batch["labels"].to(device)).loss
        batch = sample_batch(encoded, batch_size, seed=seed, step=step)
        return batch_loss(self.model, batch, self.workload.device)


def frozen_head(model: torch.nn.Module, trainable: Sequence[str]) -> LabelNameClassifier | None:
    """``model`` when it is a label-name classifier whose ``trainable`` names are all in its
    head (so its encoder is frozen and its features can be cached); else None."""
    if isinstance(model, LabelNameClassifier) and trainable and all(n.startswith("classifier.") for n in trainable):
        return model
    return None


@torch.no_grad()  # not inference_mode: bench/quality.py trains a probe on these features
def head_features(
    head: LabelNameClassifier, encoded: dict[str, torch.Tensor], batch_size: int, device: torch.device
) -> torch.Tensor:
    """:meth:`LabelNameClassifier.features` of every row of ``encoded``, ``(N, H)``, on ``device``."""
    rows = int(encoded["input_ids"].shape[0])
    return torch.cat([
        head.features(encoded["input_ids"][start : start + batch_size].to(device),
                      encoded["attention_mask"][start : start + batch_size].to(device))
        for start in range(0, rows, batch_size)
    ])


_clients: LRU[str, ZOClient] = LRU(1)  # one run per process at a time


def client_for(cfg: RunConfig) -> ZOClient:
    """This process's client for ``cfg``'s run, built on first use; another run's is dropped first."""
    return _clients.get_or_build(run_key(cfg), lambda: ZOClient(cfg))
