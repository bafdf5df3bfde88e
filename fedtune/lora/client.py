"""A federated-LoRA client's round: load the global adapter, train locally, report.

One :class:`LoraClient` lives per process and run (:func:`client_for`): in simulation a
worker process plays many virtual clients in turn, so it builds the base model and its
PEFT wrapper once; each virtual client overwrites the adapter with the global one it was
sent, so nothing of one client leaks into the next.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedtune import algorithms
from fedtune.config import RunConfig
from fedtune.data.batches import sample_batch
from fedtune.dtypes import torch_dtype
from fedtune.lru import LRU, PARTITION_CACHE
from fedtune.progress import Progress, counting_steps
from fedtune.rng import derive_seed
from fedtune.rng.torch_backend import seeded_init
from fedtune.workload import Workload
from fedtune.zo.sync import held_out_share

from .adapters import read_state, write_state
from .factors import factor_pairs
from .fair import project
from .hetlora import pad, truncate, zero_beyond
from .payload import shapes_of
from .rules import rule_class
from .train import local_train
from .weights import trained_model

__all__ = ["LoraClient", "LoraReport", "client_for", "lora_run_key"]

log = logging.getLogger(__name__)


def lora_run_key(cfg: RunConfig) -> str:
    """What must match between a client's cache and a run: model, data (and federated
    evaluation's held-out share), seed, rule, adapter."""
    text = repr((cfg.seed, cfg.model, cfg.data, cfg.algorithm.name, cfg.lora, cfg.sections, held_out_share(cfg)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LoraReport:
    """What a client sends back after its local steps."""

    state: dict[str, torch.Tensor]  # the rule's uplink tensors, float32 CPU, by PEFT name
    num_examples: int  # size of the client's partition
    train_loss: float  # mean over the local steps (nan if none)
    skipped_steps: int  # steps skipped for a non-finite loss
    rank: int  # the rank it kept (hetlora: after self-pruning), its factors' in ``state``


class LoraClient:
    """The process-wide LoRA client for one run.

    Args:
        cfg: the run's config; ``algorithm.name`` must be a registered LoRA rule.
    """

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.key = lora_run_key(cfg)
        self.workload = Workload(cfg)
        spec = algorithms.get(cfg.algorithm.name)
        self.rule = rule_class(spec.rule)(cfg.lora)
        self.loss_term = spec.client_loss(cfg) if spec.client_loss is not None else None
        self._rank_of = spec.client_rank  # heterogeneous ranks (hetlora): the partition's own
        self.pruner = spec.rank_pruner(cfg) if spec.rank_pruner is not None else None  # rank self-pruning
        self.model, self.params = trained_model(self.workload, cfg, client=True)  # adapters, or model.trainable's tensors
        self.uplink = self.rule.uplink_names(self.params)
        self.shapes = shapes_of(self.params)
        self.uplink_shapes = {n: self.shapes[n] for n in self.uplink}
        self._zeros = {n: torch.zeros(s) for n, s in self.uplink_shapes.items()}  # what pads a cut adapter
        # encoded partitions of the clients this process played last: bounded, not one per client
        self._partitions: LRU[tuple[int, int], dict[str, torch.Tensor]] = LRU(PARTITION_CACHE)

    def data(self, partition_id: int, num_partitions: int) -> dict[str, torch.Tensor]:
        """The partition's training examples, encoded (``input_ids``, ``attention_mask``, ``labels``), cached."""

        def build() -> dict[str, torch.Tensor]:
            indices = self.workload.partition(partition_id, num_partitions)
            train = self.workload.examples[0]
            return self.workload.encode([train[i] for i in indices])

        return self._partitions.get_or_build((partition_id, num_partitions), build)

    def train(
        self,
        round: int,
        partition_id: int,
        num_partitions: int,
        global_state: Mapping[str, torch.Tensor],
        rank: int | None = None,
    ) -> LoraReport:
        """Local steps from the global adapter ``global_state`` (the rule's uplink tensors, whole
        or cut to ``rank``) at adapter rank ``rank`` (None: :meth:`rank`'s).

        Batches (and dropout on CPU) are seeded by ``(seed, round, partition_id)``. With rank
        self-pruning the report's state is cut to the rank the client keeps.
        """
        a = self.cfg.algorithm
        write_state(self.params, self.full(global_state))
        rank = self.rank(partition_id) if rank is None else rank
        if rank < self.cfg.lora.rank:  # a smaller client: the first `rank` slices, the rest held at zero
            zero_beyond(self.params, rank)
        encoded = self.data(partition_id, num_partitions)
        num_examples = int(encoded["input_ids"].shape[0])
        batch_seed = derive_seed(self.cfg.seed, "batch", round, partition_id)

        def batch_for_step(step: int) -> dict[str, torch.Tensor]:
            return sample_batch(encoded, min(a.batch_size, num_examples), seed=batch_seed, step=step)

        trained = {n: self.params[n] for n in self.uplink}
        extra_loss = None
        if self.loss_term is not None:  # the algorithm's own term (FedProx), against the global adapter
            term = self.loss_term
            anchors = {n: t.detach().clone() for n, t in trained.items()}

            def extra_loss() -> torch.Tensor:
                return term(trained, anchors)

        progress = Progress(f"partition {partition_id}: local steps", a.local_steps, "steps", self.cfg.log.progress_s)
        with seeded_init(self.cfg.seed, "lora-dropout", round, partition_id):
            result = local_train(
                self.model,
                [self.params[n] for n in self.uplink],
                counting_steps(batch_for_step, progress),
                a.local_steps,
                optimizer=self.cfg.lora.optimizer,
                lr=a.lr,
                weight_decay=self.cfg.lora.weight_decay,
                device=self.workload.device,
                extra_loss=extra_loss,
                base_dtype=torch_dtype(self.cfg.model.dtype),
            )
        if result.skipped:
            log.warning("round %d, partition %d: %d step(s) skipped for a non-finite loss",
                        round, partition_id, result.skipped)
        state = self.view(read_state(self.params, self.uplink), rank)
        kept = self.pruner(state, rank) if self.pruner is not None else rank
        return LoraReport(self.view(state, kept), num_examples, result.mean_loss, result.skipped, kept)

    def evaluate(
        self, partition_id: int, num_partitions: int, global_state: Mapping[str, torch.Tensor]
    ) -> tuple[int, dict[str, float]]:
        """The global adapter ``global_state`` (the rule's uplink tensors, at full rank: the
        global model as the server holds it) scored on this client's own held-out share:
        :meth:`fedtune.workload.Workload.evaluate_local`."""
        write_state(self.params, global_state)
        return self.workload.evaluate_local(self.model, partition_id, num_partitions)

    def rank(self, partition_id: int) -> int:
        """The adapter rank the client of ``partition_id`` starts at (``lora.rank`` unless the algorithm says)."""
        return self._rank_of(self.cfg, partition_id) if self._rank_of is not None else self.cfg.lora.rank

    def view(self, state: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
        """``state`` as a client of rank ``rank`` sends it: its factors cut to that rank."""
        return truncate(state, rank) if rank < self.cfg.lora.rank else dict(state)

    def shapes_at(self, rank: int) -> dict[str, tuple[int, ...]]:
        """The uplink tensors' shapes at rank ``rank`` (what a hetlora client is sent and sends)."""
        return shapes_of(self.view(self._zeros, rank))

    def full(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Uplink tensors, whole or cut to a rank, at ``lora.rank``: the slices cut away are zero."""
        return pad(state, self._zeros)

    def project(
        self, trained: Mapping[str, torch.Tensor], a_mean: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """LoRA-FAIR's second secure sum: ``B_k A_k Āᵀ`` (d×r, float32) per module.

        Args:
            trained: this client's trained factors of the round (both of every module).
            a_mean: ``Ā`` by the ``lora_A`` tensor names.
        """
        return {
            module: project(trained[a], trained[b], a_mean[a]).float()
            for module, (a, b) in factor_pairs(trained).items()
        }


_clients: LRU[str, LoraClient] = LRU(1)  # one run per process at a time


def client_for(cfg: RunConfig) -> LoraClient:
    """This process's client for ``cfg``'s run, built on first use; another run's is dropped first."""
    return _clients.get_or_build(lora_run_key(cfg), lambda: LoraClient(cfg))
