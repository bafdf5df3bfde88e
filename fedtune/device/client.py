"""The on-device ZO client: numpy weights, ONNX Runtime forwards, no torch.

The twin of :class:`fedtune.zo.client.ZOClient`: both run
:class:`fedtune.zo.seed_client.SeedClient`'s flow, so the same sync through the seed log
(:func:`fedtune.zo.seeds.replay_numpy_`, bit-identical to the torch replay), the same
SHA-256 of the synced weights, the same keys, batches and MeZO steps. Only the
forward differs (ONNX Runtime instead of torch), so a device's projected gradients match a
torch client's to float32 rounding, and its synced weights match bit for bit.

Memory: two copies of the trainable weights, as in the torch client (``base``, the global
state, and ``params``, perturbed in place and read by the ONNX session through bound
OrtValues without a copy); frozen tensors live once, inside the session.

A run that trains only a pretrained sentence encoder's label-name head
(:func:`fedtune.config.device_mode` ``"head"``) exports the frozen encoder's features
graph instead: the client runs it once over its partition and takes every ZO step on the
head in numpy (:mod:`fedtune.device.head`), as the torch client's feature cache does. The
sync, keys, rows and replay are the same code, so the digest still matches bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from fedtune.config import RunConfig
from fedtune.data.arrays import sample_batch
from fedtune.lru import LRU
from fedtune.onnx.files import MODEL_KEY, model_key, tokenizer_path, weights_path
from fedtune.onnx.runtime import OnnxFeatures, OnnxLoss
from fedtune.zo.estimators import Release
from fedtune.zo.seed_client import SeedClient
from fedtune.zo.seeds import SeedUpdate, replay_numpy_, weights_digest
from fedtune.zo.sync import ClientReport, OutOfSync, run_key

from .head import head_loss
from .mezo import local_train
from .workload import DeviceWorkload

__all__ = ["ClientReport", "DeviceClient", "OutOfSync", "device_client_for", "run_key"]

FEATURES = "features"  # the key of the cached features in a head run's encoded data


def _load_weights(onnx_path: Path, expected_key: str) -> list[tuple[str, np.ndarray]]:
    """The trainable tensors at state 0, from the file written beside the export."""
    from safetensors import safe_open

    path = weights_path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no initial weights at {str(path)!r}: fedtune.onnx.export writes them beside {onnx_path.name}"
        )
    with safe_open(str(path), framework="np") as f:
        key = (f.metadata() or {}).get(MODEL_KEY)
        if key != expected_key:
            raise ValueError(f"{path} holds the weights of model key {key!r}, this run's is {expected_key!r}: "
                             "re-export it for this run's config")
        return [(name, np.ascontiguousarray(f.get_tensor(name), dtype=np.float32)) for name in f.keys()]  # noqa: SIM118 (a file, not a dict)


class DeviceClient(SeedClient):
    """The process-wide device client for one run.

    Args:
        cfg: the run's config.
        onnx_path: the exported graph; its initial weights (and, for a label-name head run,
            its tokenizer) lie beside it.
        threads: ONNX Runtime intra-op threads (0: its default).

    Raises:
        FileNotFoundError: if the graph, its weights or its tokenizer file is missing.
        ValueError: if the run is one no device mode supports, or the files were exported
            for another model (key mismatch).
        fedtune.onnx.OnnxInputError: if the graph's inputs do not match the weights.
    """

    def __init__(self, cfg: RunConfig, onnx_path: str | os.PathLike[str], *, threads: int = 0) -> None:
        onnx_path = Path(onnx_path)
        self.workload = DeviceWorkload(cfg, tokenizer_path(onnx_path))  # refuses an unsupported run first
        weights = _load_weights(onnx_path, model_key(cfg))
        self.encoder: OnnxFeatures | None = None  # a head run: the frozen encoder's features graph
        if self.workload.mode == "head":  # the file holds the whole head; the run trains part or all of it
            self.base = [(name, a) for name, a in weights if any(fnmatchcase(name, p) for p in cfg.model.trainable)]
            if not self.base:
                raise ValueError(f"{weights_path(onnx_path)} holds {[n for n, _ in weights]}, none of which "
                                 f"`model.trainable` = {list(cfg.model.trainable)} selects")
            self.encoder = OnnxFeatures(onnx_path, threads=threads)
            metadata = self.encoder.metadata
        else:
            self.base = weights  # the global weights at `synced_round`
            self.runtime = OnnxLoss(onnx_path, {name: a.shape for name, a in self.base}, threads=threads)
            metadata = self.runtime.metadata
        self.params = [(name, array.copy()) for name, array in self.base]  # the working copy
        self.named = dict(weights) | dict(self.params)  # a head run's frozen part stays as loaded
        if metadata.get(MODEL_KEY) != model_key(cfg):
            raise ValueError(f"{onnx_path} was exported for model key {metadata.get(MODEL_KEY)!r}, "
                             f"this run's is {model_key(cfg)!r}: re-export it for this run's config")
        super().__init__(cfg)

    def _data(self, partition_id: int, num_partitions: int) -> dict[str, Any]:
        encoded = super()._data(partition_id, num_partitions)
        if self.encoder is not None and FEATURES not in encoded:  # once per partition, kept with its data
            encoded[FEATURES] = self.encoder.features(encoded, self.cfg.eval.batch_size)
        return encoded

    def _load_base(self, weights: Mapping[str, np.ndarray]) -> None:
        for name, array in self.base:
            array[...] = np.asarray(weights[name], dtype=np.float32).reshape(array.shape)

    def _replay_base(self, update: SeedUpdate) -> None:
        replay_numpy_(self.base, update)

    def _reset_working_copy(self) -> None:
        for (_, p), (_, b) in zip(self.params, self.base):
            np.copyto(p, b)  # in place: the session's bindings stay valid

    def _base_digest(self) -> str:
        return weights_digest(self.base)

    def _local_train(self, loss_for_step: Callable[[int], Any], keys: list[int], release: Release | None) -> Any:
        a = self.cfg.algorithm
        return local_train(self.params, loss_for_step, keys=keys, seed_of_key=self._seed_of, eps=a.eps, lr=a.lr,
                           estimator=a.estimator, directions=a.directions, release=release)

    def _batch_loss(self, encoded: dict[str, Any], batch_size: int, seed: int, step: int) -> float:
        if self.encoder is not None:  # the same rows as below: sample_batch's draw depends only on N
            batch = sample_batch({key: encoded[key] for key in (FEATURES, "labels")}, batch_size, seed=seed, step=step)
            return head_loss(batch[FEATURES], batch["labels"], self.named)
        return self.runtime.loss(self.named, sample_batch(encoded, batch_size, seed=seed, step=step))


_clients: LRU[tuple[str, str], DeviceClient] = LRU(1)  # one run per process at a time


def device_client_for(cfg: RunConfig, onnx_path: str | os.PathLike[str], *, threads: int = 0) -> DeviceClient:
    """This process's device client for ``cfg``'s run, built on first use; another run's is dropped first."""
    return _clients.get_or_build((run_key(cfg), str(onnx_path)), lambda: DeviceClient(cfg, onnx_path, threads=threads))
