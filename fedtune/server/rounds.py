"""What fedtune's strategies share: per-round numbers, seeded sampling by
partition id, and the round loop with its per-round record.

Both strategies (``fedtune/server/strategy.py`` for the seed federation, ``fedtune/server/lora_strategy.py``
for federated LoRA) subclass :class:`RoundLoop` and provide ``run_round``, ``evaluate`` and
``messages_to`` (what brings a client the global model, for training and for federated
evaluation alike).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from abc import abstractmethod
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtune import wire
from fedtune.config import RunConfig
from fedtune.privacy.accounting import PrivacyLedger, Release
from fedtune.privacy.dp import noise_multiplier
from fedtune.privacy.release import withheld_under_dp
from fedtune.rng import generator, secret_generator

__all__ = ["RoundLoop", "RoundStats", "error_reason"]

log = logging.getLogger(__name__)


def error_reason(message: Message) -> str:
    """The last line of an error reply's reason (Ray puts whole tracebacks there)."""
    lines = (message.error.reason or "").strip().splitlines()
    return lines[-1][:300] if lines else "no reason given"


@dataclass
class RoundStats:
    """What one round did, for metrics.jsonl and the progress line."""

    sampled: int = 0
    replies: int = 0  # updates aggregated
    failed: int = 0  # no reply (died, timed out), or an error reply
    rejected: int = 0  # an update that does not decode or fit, dropped for the round
    resynced: int = 0  # clients sent what they missed in a second message (the seed federation)
    sync_mismatches: int = 0  # digest differed from the server's weights (the seed federation)
    skipped_steps: int = 0  # local steps clients skipped for a non-finite loss
    bytes_up: int = 0
    bytes_down: int = 0
    train_losses: list[tuple[float, float]] = field(default_factory=list)  # (weight, loss)
    privacy: dict[str, Any] = field(default_factory=dict)  # dp_epsilon and friends (RoundLoop.account)

    def as_metrics(self) -> dict[str, Any]:
        weights = sum(w for w, _ in self.train_losses)
        loss = sum(w * v for w, v in self.train_losses) / weights if weights > 0 else math.nan
        per_client = max(self.sampled, 1)
        return {
            "train_loss": loss,
            "sampled": self.sampled,
            "replies": self.replies,
            "failed": self.failed,
            "rejected": self.rejected,
            "skipped_steps": self.skipped_steps,
            "bytes_up_per_client": self.bytes_up / per_client,
            "bytes_down_per_client": self.bytes_down / per_client,
            **self.privacy,
        }


class RoundLoop(Strategy):
    """A fedtune strategy's round loop, with sampling that never depends on node ids.

    Flower gives nodes random ids that change every launch; the loop samples partitions with
    a generator seeded by ``(seed, "sample", round)``, so the same config samples the same
    clients. In deployment, where a SuperNode holds its own data, it learns which node holds
    which partition by asking each new node once (a tiny ``query``). In a ``fedtune run``
    simulation (``assign_partitions``), Flower runs only a pool of
    ``federation.simulated_nodes`` nodes (one per client of a round): each round the server
    hands the j-th sampled partition to the j-th node of the pool and names it in the train
    messages. A round then costs Flower the same at 10 or 10,000 clients (its simulation
    engine sweeps every node's inbox on a timer), and no message per node is needed at
    start-up. Per-partition client state lives on disk (:mod:`fedtune.partition_state`).
    """

    cfg: RunConfig
    run_key: str
    state_round: int  # the last finished round (0 on a fresh run)
    partitions: dict[int, int]  # node id -> the partition id it reported (or was assigned)
    assign_partitions: bool = False  # a `fedtune run` simulation: the server assigns partitions
    ledger: PrivacyLedger | None = None  # the DP releases so far (privacy.dp), else None
    population: int = 0  # the clients the last round's sample was drawn from
    workload: Any  # the run's fedtune.workload.Workload: its data, split as the clients split it

    @abstractmethod
    def run_round(self, grid: Grid, server_round: int) -> dict[str, Any]:
        """Run one round; return its numbers for the round's record."""

    def prepare(self, grid: Grid) -> dict[str, Any]:
        """A fresh run's set-up exchange before round 0 is evaluated; its numbers go into round
        0's record. Nothing by default (``FederatedLora``: the head from the clients' class means)."""
        return {}

    @abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Evaluate the global model on the held-out set."""

    @abstractmethod
    def messages_to(self, server_round: int, node_ids: Sequence[int], message_type: str) -> list[Message]:
        """One message per node that brings it the global model of ``server_round``'s state
        (what a train message carries), of ``message_type`` (train or evaluate)."""

    def enough(self, server_round: int, replies: int, kept: str) -> bool:
        """Whether ``replies`` usable replies reach ``federation.min_replies``; if not, says that
        the global ``kept`` (model, adapter, prompt) stays as it is this round."""
        if replies >= self.cfg.federation.min_replies:
            return True
        log.warning("round %d: %d usable replies (min_replies=%d): the global %s stays as it is",
                    server_round, replies, self.cfg.federation.min_replies, kept)
        return False

    def exchange(self, grid: Grid, server_round: int, messages: list[Message], stats: RoundStats) -> list[Message]:
        """Send ``messages`` and collect the replies (``federation.round_timeout_s``); the bytes
        sent and the replies that never came are counted in ``stats``."""
        replies = list(grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout_s))
        stats.bytes_down += sum(wire.message_bytes(m, downlink=True) for m in messages)
        stats.failed += len(messages) - len(replies)
        return replies

    # Flower's Strategy interface for federated evaluation (eval.federated; off: the server's
    # central evaluation is the only one). A client scores the global model on its own
    # held-out share (fedtune.workload.Workload.local_split) and replies with its scores.
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluate messages to ``ceil(eval.federated_fraction x clients_per_round)`` clients,
        sampled by partition id with a generator seeded by ``(seed, "fed-eval", round)``."""
        e = self.cfg.eval
        if not e.federated:
            return []
        size = math.ceil(e.federated_fraction * self.cfg.federation.clients_per_round)
        nodes = self.sample(grid, server_round, purpose="fed-eval", size=size)
        return self.messages_to(server_round, nodes, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message], stats: RoundStats | None = None
    ) -> MetricRecord | None:
        """The example-weighted mean of the clients' scores, as ``fed_eval_<name>`` (null when no
        client replied usably), the spread of the clients' own accuracies
        (``fed_eval_accuracy_min`` / ``_median`` / ``_max``: federated learning's fairness
        figure), with ``fed_eval_examples`` and ``fed_eval_clients`` (the replies
        in the mean), ``fed_eval_failed`` (asked but no usable reply) and the bytes per client
        asked. A failed or malformed reply is left out, never fails the round. ``stats``: the
        evaluation's counts so far (what :meth:`exchange` counted); None under Flower's interface.
        """
        stats = RoundStats() if stats is None else stats
        names = [wire.EVAL_LOSS, wire.EVAL_ACCURACY] + ([wire.EVAL_MACRO_F1] if "macro_f1" in self.cfg.eval.metrics
                                                        else [])
        sums, examples = dict.fromkeys(names, 0.0), 0
        accuracies: list[float] = []  # each client's own: the spread across clients (fairness)
        for reply in sorted(replies, key=self.partition_order):
            stats.bytes_up += wire.message_bytes(reply, downlink=False)
            scored = self.accept_evaluation(reply, names, stats)
            if scored is None or scored[0] == 0:  # rejected, or a client with no held-out example
                continue
            num_examples, scores = scored
            stats.replies += 1
            examples += num_examples
            for name in names:
                sums[name] += num_examples * scores[name]
            accuracies.append(scores[wire.EVAL_ACCURACY])
        per_client = max(stats.sampled, 1)
        spread = (min(accuracies), statistics.median(accuracies), max(accuracies)) if accuracies else (math.nan,) * 3
        return MetricRecord({
            **{f"fed_{name}": total / examples if examples else math.nan for name, total in sums.items()},
            **{f"fed_eval_accuracy_{which}": value for which, value in zip(("min", "median", "max"), spread)},
            "fed_eval_examples": examples,
            "fed_eval_clients": stats.replies,
            "fed_eval_failed": stats.failed + stats.rejected,
            "fed_eval_bytes_up_per_client": stats.bytes_up / per_client,
            "fed_eval_bytes_down_per_client": stats.bytes_down / per_client,
        })

    def accept_evaluation(
        self, reply: Message, names: Sequence[str], stats: RoundStats
    ) -> tuple[int, dict[str, float]] | None:
        """One evaluate reply's example count and scores ``names``; None (counted, logged) if it
        failed, lacks one or does not hold the server's global state (:meth:`evaluated_state_ok`)."""
        node = reply.metadata.src_node_id
        if self.failed(reply, stats):
            return None
        try:
            metrics: Any = reply.content[wire.METRICS]
            num_examples = wire.read_int(metrics, wire.NUM_EXAMPLES)
            if num_examples < 0:
                raise wire.WireError(f"num-examples must be >= 0, got {num_examples}")
            scores = {name: wire.read_float(metrics, name) for name in names} if num_examples else {}
            usable = self.evaluated_state_ok(reply, stats)
        except (KeyError, TypeError, ValueError) as exc:  # wire.WireError is a ValueError
            stats.rejected += 1
            log.warning("rejected the evaluation of client %s: %s", node, exc)
            return None
        return (num_examples, scores) if usable else None

    def evaluated_state_ok(self, reply: Message, stats: RoundStats) -> bool:
        """Whether an evaluate reply scored the server's global model (counted, logged if not).
        The LoRA rules send the adapter itself: always."""
        return True

    def evaluate_federated(self, grid: Grid, server_round: int) -> dict[str, Any]:
        """Federated evaluation of the global model (``eval.federated``): ask, collect, take the
        weighted mean (:meth:`configure_evaluate`, :meth:`aggregate_evaluate`); {} when off."""
        if not self.cfg.eval.federated:
            return {}
        stats = RoundStats()
        messages = list(self.configure_evaluate(server_round, ArrayRecord(), ConfigRecord(), grid))
        stats.sampled = len(messages)
        replies = self.exchange(grid, server_round, messages, stats)
        return dict(self.aggregate_evaluate(server_round, replies, stats) or {})

    def discover(self, grid: Grid, timeout: float) -> None:
        """Learn which partition each node holds: assigned (simulation) or asked (deployment)."""
        if self.assign_partitions:  # nothing to learn: `sample` assigns them every round
            return
        unknown = sorted(set(grid.get_node_ids()) - set(self.partitions))
        if not unknown:
            return
        start, chunk = time.monotonic(), 1000  # a progress line every 1000 nodes of a large federation
        if len(unknown) > chunk:
            log.info("asking %d nodes for their partition id (once per node)", len(unknown))
        for first in range(0, len(unknown), chunk):
            content = RecordDict({wire.CONFIG: ConfigRecord({wire.RUN_KEY: self.run_key})})
            messages = [Message(content, dst_node_id=n, message_type=MessageType.QUERY)
                        for n in unknown[first : first + chunk]]
            for reply in grid.send_and_receive(messages, timeout=timeout):
                if reply.has_error():
                    log.warning("node %s did not say its partition: %s", reply.metadata.src_node_id,
                                error_reason(reply))
                    continue
                self.partitions[reply.metadata.src_node_id] = wire.read_int(wire.record(reply.content, wire.STATE),
                                                                            wire.PARTITION)
            if len(unknown) > chunk:
                log.info("partition ids: %d/%d nodes answered (%.0f s)", len(self.partitions), len(unknown),
                         time.monotonic() - start)
        if len(set(self.partitions.values())) < len(self.partitions):
            log.warning("several nodes report the same partition id: their data overlaps")

    def sample(self, grid: Grid, server_round: int, *, purpose: str = "sample", size: int | None = None) -> list[int]:
        """Seeded sample of the round's clients, by partition id; returns their node ids.

        ``purpose`` names the seeded stream (``"fed-eval"``: federated evaluation's own
        sample), ``size`` its number of clients (default ``federation.clients_per_round``).
        Under central DP the sample is drawn from OS entropy instead: its epsilon counts on
        amplification by sampling, which holds only while nobody else (a client holds the
        config, and so the seed) can tell who was sampled.
        """
        num_clients = self.cfg.federation.num_clients
        wanted = self.cfg.federation.clients_per_round if size is None else size
        central = self.cfg.privacy.dp == "central"
        rng = secret_generator() if central else generator(self.cfg.seed, purpose, server_round)
        if self.assign_partitions:  # sample the population, then lend each pick a node of the pool
            pool = sorted(grid.get_node_ids())[: self.cfg.federation.simulated_nodes]
            size = min(wanted, len(pool))
            picks = rng.choice(num_clients, size, replace=False)
            self.partitions = {node: int(p) for node, p in zip(pool, sorted(picks), strict=False)}
            self.population = num_clients
            return pool[:size]
        self.discover(grid, self.cfg.federation.round_timeout_s)
        live = set(grid.get_node_ids())
        known = sorted((p, n) for n, p in self.partitions.items() if n in live)
        size = min(wanted, len(known))
        picks = rng.choice(len(known), size, replace=False)
        self.population = len(known)
        return [known[i][1] for i in sorted(picks)]

    def account(self, server_round: int, stats: RoundStats, sums: Sequence[Collection[int]]) -> None:
        """Record the round's DP releases in the ledger and put its DP numbers in ``stats``.

        Args:
            sums: per noised sum the round released (none if it released nothing), the node
                ids of the clients whose vectors are in it.
        """
        if self.ledger is None:
            return
        p = self.cfg.privacy
        multipliers = tuple(noise_multiplier(self.cfg, len(nodes)) for nodes in sums)
        if sums:
            clients = () if p.dp == "central" else tuple(tuple(sorted(self.partitions[n] for n in nodes))
                                                         for nodes in sums)
            examples: tuple[int, ...] = ()
            if p.dp == "sample":  # each client's N, for its batches' sampling rate: the split every client makes
                parts = self.workload.partitions(self.cfg.federation.num_clients)  # (no eval.federated under DP)
                examples = tuple(len(parts[c]) for c in clients[0])
            self.ledger.record(Release(server_round, self.population, stats.sampled, multipliers, clients,
                                       examples))
        eps = self.ledger.epsilon()
        stats.privacy = {"dp_epsilon": eps if math.isfinite(eps) else None, "dp_delta": p.dp_delta,
                         "dp_noise_multiplier": multipliers[0] if multipliers else None}
        if self.cfg.lora.two_phase:
            stats.privacy["dp_noise_multiplier_phase2"] = multipliers[1] if len(multipliers) > 1 else None

    def clear_sums(self, replies: Iterable[Message], summed: list[int], formed: bool) -> list[list[int]]:
        """The sums a clear-text round released, for :meth:`account`.

        Local and example-level DP: one, every client whose reply reached the server (its
        noised vector or scalars are a release on their own, even if the server then
        rejected them). Central DP: the clients in the noised mean (node ids ``summed``), if
        one was ``formed``.
        """
        if self.cfg.privacy.dp in ("local", "sample"):
            seen = [r.metadata.src_node_id for r in replies if not r.has_error()]
            return [seen] if seen else []
        return [summed] if formed else []

    def tag(self, message: Message) -> Message:
        """Name the partition a node plays this round in its train message (simulation only)."""
        if self.assign_partitions:
            config = wire.record(message.content, wire.CONFIG)
            config[wire.PARTITION] = self.partitions[message.metadata.dst_node_id]
            config[wire.NUM_PARTITIONS] = self.cfg.federation.num_clients
        return message

    def failed(self, reply: Message, stats: RoundStats) -> bool:
        """True (counted in ``failed``, logged) if ``reply`` is an error reply."""
        if reply.has_error():
            stats.failed += 1
            log.warning("client %s failed: %s", reply.metadata.src_node_id, error_reason(reply))
            return True
        return False

    def weight_of(self, metrics: Any) -> float:
        """A reply's aggregation weight from its metrics (``algorithm.weighting``).

        Raises:
            WireError: if num-examples is not a finite number > 0 (checked either way).
            KeyError, TypeError: if it is missing or not a number.
        """
        if wire.NUM_EXAMPLES not in metrics and self.cfg.algorithm.weighting == "uniform":
            return 1.0  # a DP client withholds its example count (fedtune.privacy.release)
        num_examples = float(metrics[wire.NUM_EXAMPLES])
        if not (math.isfinite(num_examples) and num_examples > 0):
            raise wire.WireError(f"num-examples must be > 0, got {num_examples}")
        return num_examples if self.cfg.algorithm.weighting == "examples" else 1.0

    @staticmethod
    def note_metrics(metrics: Any, weight: float, stats: RoundStats) -> None:
        """Fold an accepted reply's train loss and skipped steps into the round's numbers."""
        loss = float(metrics.get(wire.TRAIN_LOSS, math.nan))
        if math.isfinite(loss):
            stats.train_losses.append((weight, loss))
        stats.skipped_steps += int(metrics.get(wire.SKIPPED_STEPS, 0))

    @property
    def max_bytes(self) -> int:
        """The largest payload a reply may carry (``federation.max_payload_mb``)."""
        return int(self.cfg.federation.max_payload_mb * 2**20)

    def partition_order(self, reply: Message) -> tuple[int, int]:
        """Sort key that sums replies in partition order, whatever ids Flower handed out."""
        node = reply.metadata.src_node_id
        return self.partitions.get(node, -1), node

    def wait_for_nodes(self, grid: Grid, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        f = self.cfg.federation
        need = f.simulated_nodes if self.assign_partitions else f.num_clients
        while (have := len(list(grid.get_node_ids()))) < need:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{have} of {need} clients connected after {timeout:.0f} s")
            time.sleep(0.2)

    def start_rounds(
        self,
        grid: Grid,
        num_rounds: int,
        on_round: Callable[[dict[str, Any]], None],
        connect_timeout: float = 120.0,
    ) -> None:
        """Run rounds ``state_round + 1 .. num_rounds``, calling ``on_round(record)`` after
        each (and once for round 0 on a fresh run)."""
        self.summary()
        self.wait_for_nodes(grid, connect_timeout)
        self.discover(grid, self.cfg.federation.round_timeout_s)  # start-up, not round 1's time
        t_start = time.monotonic()
        if self.state_round == 0:
            setup = self.prepare(grid)
            on_round({"round": 0, **setup, **self.evaluate(), **self.evaluate_federated(grid, 0), "round_s": 0.0,
                      "elapsed_s": time.monotonic() - t_start})
        first, t_first = self.state_round + 1, time.monotonic()
        for server_round in range(first, num_rounds + 1):
            t_round = time.monotonic()
            record: dict[str, Any] = {"round": server_round, **self.run_round(grid, server_round)}
            if withheld_under_dp(self.cfg):  # no client reported them (fedtune.privacy.release)
                record.pop("train_loss", None)
                record.pop("skipped_steps", None)
            t_eval = time.monotonic()
            if server_round % self.cfg.eval.every == 0 or server_round == num_rounds:
                record.update(self.evaluate())
                record.update(self.evaluate_federated(grid, server_round))
            now = time.monotonic()
            record["eval_s"] = now - t_eval
            record["round_s"] = now - t_round
            record["elapsed_s"] = now - t_start
            # the mean round of this launch (evaluation included) times the rounds left
            record["eta_s"] = (now - t_first) / (server_round - first + 1) * (num_rounds - server_round)
            on_round(record)
