"""Federated LoRA (FedIT, FFA-LoRA, LoRA-FAIR) as a Flower strategy on the Message API.

The strategy holds the base model with its PEFT adapter and the global adapter state.
Each round it sends every sampled client the global adapter (dense float32), collects
their updates (compressed as ``[compress]`` says), checks each against the expected layout
(a mismatch is dropped and counted in ``rejected``), rebuilds each client's adapter as
global + update and lets the rule (:mod:`fedtune.lora`) form the next global adapter.

With ``lora.two_phase`` (LoRA-FAIR only) the server uses weighted sums alone, as secure
aggregation would give them: phase 1 sums the factors, phase 2 sends ``Ā`` back to the
same clients and sums their ``B_k A_k Āᵀ``. The full ``Σ p_k B_k A_k`` is then never
formed, so ``bias_before`` / ``bias_after`` are not reported (null).

Sampling and summation order go by partition id (asked once with a query message), not
by Flower's random node ids, so runs with the same seed sample the same clients.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedtune import algorithms, wire
from fedtune import emulator as emu
from fedtune.config import RunConfig
from fedtune.lora import Aggregate, read_state, rule_class, write_state
from fedtune.lora.client import lora_run_key
from fedtune.lora.factors import factor_pairs, is_factor_a, weighted_mean
from fedtune.lora.fair import correct
from fedtune.lora.hetlora import truncate
from fedtune.lora.payload import pack, plus_vector, unpack, unpack_update
from fedtune.lora.weights import trained_model, trains_model_tensors
from fedtune.privacy import update_vector
from fedtune.privacy.accounting import ledger_for
from fedtune.privacy.dp import private_mean
from fedtune.robust import robust_mean
from fedtune.server.centroids import centroid_head, head_names
from fedtune.server.rounds import RoundLoop, RoundStats
from fedtune.server.secagg import run_secure_lora_round
from fedtune.workload import Workload

__all__ = ["Accepted", "FederatedLora", "LoraRoundStats"]

log = logging.getLogger(__name__)


@dataclass
class LoraRoundStats(RoundStats):
    """A LoRA round's numbers: the common ones and the aggregation bias."""

    bias_before: float = math.nan
    bias_after: float = math.nan

    def as_metrics(self) -> dict[str, Any]:
        return {**super().as_metrics(), "bias_before": self.bias_before, "bias_after": self.bias_after}


@dataclass(frozen=True)
class Accepted:
    """An accepted phase-1 reply: who sent it, its weight, and its uplink tensors (global +
    update; empty if masked: SecAgg+ sums the update itself)."""

    partition: int
    node: int
    weight: float
    state: dict[str, torch.Tensor]


class FederatedLora(RoundLoop):
    """Server side of the federated-LoRA rules.

    Args:
        cfg: the run's configuration (``algorithm.name`` a registered LoRA rule).
        run_dir: where the DP ledger goes (``privacy.dp``; None: in memory only).
    """

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.workload = Workload(cfg)
        spec = algorithms.get(cfg.algorithm.name)
        self.rule = rule_class(spec.rule)(cfg.lora)
        # FedOpt: an optimizer on the server turns each round's aggregate into the next global adapter
        self.server_optimizer = spec.server_optimizer(cfg) if spec.server_optimizer is not None else None
        self.client_rank = spec.client_rank  # heterogeneous ranks (hetlora): updates cut to the client's
        # hetlora's rank self-pruning: clients report the rank they kept, the server remembers it per partition
        self.prunes = spec.rank_pruner is not None and spec.rank_pruner(cfg) is not None
        self.ranks: dict[int, int] = {}  # partition id -> its client's rank, where it pruned
        self.model, self.params = trained_model(self.workload, cfg)  # adapters, or model.trainable's tensors
        self.state = read_state(self.params)  # the global adapter, float32 on CPU
        self.uplink = self.rule.uplink_names(self.params)
        self.uplink_shapes = {n: tuple(self.params[n].shape) for n in self.uplink}
        pairs = factor_pairs(self.params)
        self.projection_shapes = {m: tuple(self.params[b].shape) for m, (_, b) in pairs.items()}  # (d, r)
        self.run_key = lora_run_key(cfg)
        self.partitions: dict[int, int] = {}  # node id -> partition id it reported
        self.state_round = 0  # no resume for the LoRA rules yet: every run starts fresh
        self.ledger = ledger_for(cfg, run_dir)
        if cfg.model.head_init == "centroids":
            head_names(list(self.uplink))  # the head must travel, or the clients never see it
        # the model clients run when it is not the full one (Offsite-Tuning's emulator): scored each round too
        self.emulator = trained_model(self.workload, cfg, client=True) if spec.client_model is not None else None

    # --- Flower's Strategy interface -------------------------------------------------

    def summary(self) -> None:
        a, f, lo = self.cfg.algorithm, self.cfg.federation, self.cfg.lora
        extra = ""
        if a.name == "lorafair":
            extra = f", lambda {lo.fair_lambda:g}, {lo.fair_steps or 'closed-form'} solve"
        if self.emulator is not None:
            log.info(
                "%s: %s; the adapter's %d tensors (%d parameters) tuned first-order by clients on the "
                "emulator; %d local %s steps x batch %d, lr %g; %d of %d clients per round",
                a.name, emu.summary(self.emulator[0], self.model, self.emulator[1]), len(self.state),
                sum(t.numel() for t in self.state.values()),
                a.local_steps, lo.optimizer, a.batch_size, a.lr, f.clients_per_round, f.num_clients,
            )
            return
        if trains_model_tensors(self.cfg):
            log.info(
                "%s: first-order fine-tuning of %d model tensors (%d parameters, model.trainable); "
                "%d local %s steps x batch %d, lr %g; %d of %d clients per round",
                a.name, len(self.state), sum(t.numel() for t in self.state.values()),
                a.local_steps, lo.optimizer, a.batch_size, a.lr, f.clients_per_round, f.num_clients,
            )
            return
        if a.name == "hetlora":
            h = self.cfg.section("hetlora")
            extra = f", client ranks {list(h.ranks) or lo.rank}"
            if h.prune:
                extra += f", self-pruning (gamma {h.prune_gamma:g}, threshold {h.prune_threshold:g}, min {h.min_rank})"
        log.info(
            "%s: LoRA r=%d alpha=%g on %d modules (%d adapter parameters, %d sent per client)%s%s; "
            "%d local %s steps x batch %d, lr %g; %d of %d clients per round",
            a.name, lo.rank, lo.alpha, len(factor_pairs(self.params)),
            sum(t.numel() for t in self.state.values()),
            sum(self.state[n].numel() for n in self.uplink), extra, ", two-phase" if lo.two_phase else "",
            a.local_steps, lo.optimizer, a.batch_size, a.lr, f.clients_per_round, f.num_clients,
        )

    def _config(self, server_round: int, phase: int) -> ConfigRecord:
        return ConfigRecord({wire.ROUND: server_round, wire.RUN_KEY: self.run_key, wire.PHASE: phase})

    def phase2_content(self, server_round: int, a_mean: bytes) -> RecordDict:
        """LoRA-FAIR's phase-2 train content: ``Ā`` (``a_mean``: its encoded bundle)."""
        return RecordDict({wire.CONFIG: self._config(server_round, 2), wire.A_MEAN: ConfigRecord({wire.BUNDLE: a_mean})})

    def messages_to(self, server_round: int, node_ids: Sequence[int], message_type: str) -> list[Message]:
        """The global adapter (the rule's uplink tensors, dense), phase 1, to each node: for
        training cut to the rank the server keeps for the node's client (hetlora), for
        evaluation whole."""
        train = message_type == MessageType.TRAIN
        messages = []
        bundles: dict[int, Any] = {}  # the global adapter encoded once a round (per client rank, hetlora)
        for node in node_ids:
            rank = self.rank_of(self.partitions.get(node, -1)) if train else self.cfg.lora.rank
            if rank not in bundles:
                bundles[rank] = pack(self.base_for(rank))[wire.BUNDLE]
            content = self._config(server_round, 1)
            if train and self.client_rank is not None:  # hetlora: the client trains the rank the server keeps for it
                content[wire.RANK] = rank
            messages.append(self.tag(Message(  # each message gets its own record of the bundle
                RecordDict({wire.CONFIG: content, wire.ADAPTER: ConfigRecord({wire.BUNDLE: bundles[rank]})}),
                dst_node_id=node,
                message_type=message_type,
            )))
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.messages_to(server_round, self.sample(grid, server_round), MessageType.TRAIN)

    def accept(self, reply: Message, stats: LoraRoundStats, *, masked: bool = False) -> Accepted | None:
        """Validate one phase-1 reply; None (counted, logged) if it failed or does not fit.

        The one acceptance of a reply, in clear and under SecAgg+ (``masked``: the update
        is SecAgg+'s masked vector, only the metrics are in clear to check).
        """
        node = reply.metadata.src_node_id
        partition = self.partitions.get(node, -1)
        if self.failed(reply, stats):
            return None
        try:
            metrics = reply.content[wire.METRICS]
            rank = self._reported_rank(metrics, self.rank_of(partition))
            state: dict[str, torch.Tensor] = {}
            if not masked:  # (masked: a hetlora client padded its update to lora.rank with zeros)
                what = f"the update of client {node}"
                state = unpack_update(reply.content[wire.ADAPTER], self.base_for(rank), what, max_bytes=self.max_bytes)
            weight = self.weight_of(metrics)
        except (KeyError, TypeError, wire.WireError) as exc:
            stats.rejected += 1
            log.warning("rejected the update of client %s: %s", node, exc)
            return None
        self.note_metrics(metrics, weight, stats)
        if rank < self.rank_of(partition):
            self.ranks[partition] = rank  # self-pruned: its next rounds train (and are sent) this rank
        return Accepted(partition, node, weight, state)

    def rank_of(self, partition_id: int) -> int:
        """The adapter rank the client of ``partition_id`` trains now: ``lora.rank`` unless the
        algorithm gives ranks per client (hetlora), where it is the config's, or lower once the
        client pruned."""
        if self.client_rank is None:
            return self.cfg.lora.rank
        return self.ranks.get(partition_id, self.client_rank(self.cfg, partition_id))

    def _reported_rank(self, metrics: Any, sent: int) -> int:
        """The rank a reply's update has: the one the client was ``sent``, or, where clients
        self-prune, the lower one it reports (a :class:`fedtune.wire.WireError` if above ``sent``)."""
        if not self.prunes:
            return sent
        rank = wire.read_int(metrics, wire.RANK)
        if not 1 <= rank <= sent:
            raise wire.WireError(f"{wire.RANK!r} must be in [1, {sent}] (the rank the client was sent), got {rank}")
        return rank

    def base_for(self, rank: int) -> dict[str, torch.Tensor]:
        """The global uplink tensors, cut to ``rank`` where the algorithm gives ranks per client
        (hetlora): what a client of that rank is sent and its update is relative to."""
        base = {n: self.state[n] for n in self.uplink}
        return base if rank >= self.cfg.lora.rank else truncate(base, rank)

    def _accept_all(self, replies: Iterable[Message], stats: LoraRoundStats) -> list[Accepted]:
        accepted = []
        for reply in replies:
            stats.bytes_up += wire.message_bytes(reply, downlink=False)
            if (item := self.accept(reply, stats)) is not None:
                accepted.append(item)
        return sorted(accepted, key=lambda item: (item.partition, item.node))  # a fixed summation order

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message], stats: LoraRoundStats | None = None
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the round's adapters with the rule in clear text and apply the result.

        Under ``privacy.dp`` (FedIT, FFA-LoRA) the rule's mean is taken over the updates as
        vectors, clipped and noised (:func:`fedtune.privacy.dp.private_mean`); under
        ``[robust]`` a robust statistic of those vectors replaces it (:func:`fedtune.robust.robust_mean`,
        every client counted once). ``stats``: the
        round's numbers, filled in here (None: Flower's interface, where only the returned
        record tells them)."""
        stats = LoraRoundStats() if stats is None else stats
        replies = list(replies)
        accepted = self._accept_all(replies, stats)
        usable = self._enough(server_round, accepted, stats)
        self.account(server_round, stats, self.clear_sums(replies, [item.node for item in accepted], usable))
        if usable and self.cfg.privacy.client_level:
            uplink = {n: self.state[n] for n in self.uplink}
            mean = private_mean([update_vector(item.state, uplink) for item in accepted], self.cfg)
            self.apply(Aggregate(self.plus_mean(mean), math.nan, math.nan), stats)
        elif usable and self.cfg.robust.method != "none":  # [robust]: over the updates as vectors, unweighted
            uplink = {n: self.state[n] for n in self.uplink}
            robust = robust_mean([update_vector(item.state, uplink) for item in accepted], self.cfg.robust)
            self.apply(Aggregate(self.plus_mean(robust), math.nan, math.nan), stats)
        elif usable:
            self.apply(self.rule.aggregate([(item.weight, item.state) for item in accepted], self.state), stats)
        return None, MetricRecord({"replies": stats.replies})

    def plus_mean(self, mean: np.ndarray) -> dict[str, torch.Tensor]:
        """The global adapter plus a mean update vector (float64 ``(L,)``, name order) of the
        uplink tensors; the others (FFA-LoRA's A) stay as they are. float32."""
        return plus_vector(self.state, mean, self.uplink_shapes)

    def _enough(self, server_round: int, accepted: list[Accepted], stats: LoraRoundStats) -> bool:
        stats.replies = len(accepted)
        return self.enough(server_round, len(accepted), "adapter")

    def apply(self, aggregate: Aggregate, stats: LoraRoundStats) -> None:
        """Make ``aggregate.state`` the global adapter (and the server model's); with a server
        optimizer (FedOpt) its step from the current adapter towards the aggregate instead. The
        aggregate's bias numbers go into the round's ``stats``."""
        state = aggregate.state
        if self.server_optimizer is not None:
            state = self.server_optimizer.step(self.state, {n: state[n].detach().float().cpu() for n in self.state})
        self.state = {n: state[n].detach().float().cpu() for n in self.state}
        write_state(self.params, self.state)
        stats.bias_before, stats.bias_after = aggregate.bias_before, aggregate.bias_after

    # --- LoRA-FAIR from weighted sums only ----------------------------------------------

    def _two_phase(
        self, grid: Grid, server_round: int, accepted: list[Accepted], stats: LoraRoundStats
    ) -> Aggregate:
        """Phase 1's sums give Ā, B̄; phase 2 asks the same clients for B_k A_k Āᵀ and sums it."""
        means = weighted_mean([(item.weight, item.state) for item in accepted], self.uplink)  # secure sum 1
        a_mean = cast(bytes, pack({n: t for n, t in means.items() if is_factor_a(n)})[wire.BUNDLE])  # encoded once
        messages = [
            Message(self.phase2_content(server_round, a_mean), dst_node_id=item.node, message_type=MessageType.TRAIN)
            for item in accepted
        ]
        replies = self.exchange(grid, server_round, messages, stats)
        weight_of = {item.node: item.weight for item in accepted}
        order = {item.node: i for i, item in enumerate(accepted)}
        projections = []
        for reply in sorted(replies, key=lambda m: order.get(m.metadata.src_node_id, len(order))):
            stats.bytes_up += wire.message_bytes(reply, downlink=False)
            node = reply.metadata.src_node_id
            if reply.has_error():
                stats.failed += 1
                log.warning("client %s failed in phase 2: %s", node, reply.error.reason)
                continue
            try:
                what = f"the phase-2 projections of client {node}"
                payload = unpack(reply.content[wire.PROJECTIONS], self.projection_shapes, what, max_bytes=self.max_bytes)
                projections.append((weight_of[node], payload))
            except (KeyError, TypeError, wire.WireError) as exc:
                stats.rejected += 1
                log.warning("rejected the phase-2 reply of client %s: %s", node, exc)
        if not projections:
            log.warning("round %d: no usable phase-2 reply; B stays uncorrected (FedIT) this round",
                        server_round)
            return Aggregate(means, math.nan, math.nan)
        # Secure sum 2, renormalised over the clients that answered phase 2.
        summed = weighted_mean(projections, self.projection_shapes)
        state = correct(means, summed, self.cfg.lora.fair_lambda, self.cfg.lora.fair_steps)
        return Aggregate(state, math.nan, math.nan)

    # --- the round loop ----------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """The global model on the held-out set; where clients run an emulator (Offsite-Tuning)
        the global adapter scored on it too, as ``emulator_eval_*`` (``eval_*`` is the adapter
        plugged into the full model)."""
        scores = self.workload.evaluate(self.model)
        if self.emulator is not None:
            scores.update(emu.scores_on(*self.emulator, self.state, self.workload.evaluate))
        return scores

    def prepare(self, grid: Grid) -> dict[str, Any]:
        """``model.head_init = "centroids"``: the head from every client's class means. With an
        emulator (Offsite-Tuning) ``emulator_bytes_down``: what the owner ships each client once
        (its frozen tensors; in this version every client builds it from the same checkpoint)."""
        setup = centroid_head(self, grid) if self.cfg.model.head_init == "centroids" else {}
        if self.emulator is not None:
            setup["emulator_bytes_down"] = emu.emulator_bytes(*self.emulator)
        return setup

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Make ``state`` (float32 CPU tensors, every global name) the global adapter and the server model's."""
        self.state = {n: state[n].detach().float().cpu() for n in self.state}
        write_state(self.params, self.state)

    def run_round(self, grid: Grid, server_round: int) -> dict[str, Any]:
        """One full round: sample, send the global adapter, collect, aggregate, apply."""
        stats = LoraRoundStats()
        messages = list(self.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid))
        if self.cfg.privacy.secagg:  # the same rules from sums only, through Flower's SecAgg+
            return self._run_secure_round(grid, server_round, messages, stats)
        stats.sampled = len(messages)
        replies = self.exchange(grid, server_round, messages, stats)
        if not self.cfg.lora.two_phase:
            self.aggregate_train(server_round, replies, stats)
            return stats.as_metrics()
        accepted = self._accept_all(replies, stats)
        if self._enough(server_round, accepted, stats):
            self.apply(self._two_phase(grid, server_round, accepted, stats), stats)
        return stats.as_metrics()

    def _run_secure_round(
        self, grid: Grid, server_round: int, messages: list[Message], stats: LoraRoundStats
    ) -> dict[str, Any]:
        """The round through SecAgg+, its replies accepted as in clear."""

        def accept(reply: Message) -> float | None:
            accepted = self.accept(reply, stats, masked=True)
            return None if accepted is None else accepted.weight

        contents = {m.metadata.dst_node_id: m.content for m in messages}
        state, secagg_metrics = run_secure_lora_round(self, grid, server_round, contents, accept, stats)
        if state is not None:
            self.apply(Aggregate(state, math.nan, math.nan), stats)
        return {**stats.as_metrics(), **secagg_metrics}
