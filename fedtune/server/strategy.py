"""FedKSeed, FedKSeed-Pro and unpooled federated MeZO as a Flower strategy (Message API).

The strategy holds the global model and the seed log. Each round it sends every sampled
client the log entries it needs to reach the global state, collects the clients' step
lists, sums them per seed (:func:`fedtune.zo.aggregate`), appends the result to the log
(fsync'ed, before any client hears of it) and replays it on its own weights: the same
canonical replay every client runs, so all parties hold bit-identical weights (clients
prove it with a digest of their synced weights).

Everything that decides a round is seeded and keyed by *partition id*, never by Flower's
random node ids: which clients are sampled, in which order their scalars are summed. So a
run resumed after a crash (``fedtune run --resume``) ends bit-identical to one that never
stopped. Under ``privacy.dp`` the noise (and central DP's sample) come from OS entropy on
purpose: such a run resumes to the same epsilon (:mod:`fedtune.privacy.accounting`), not to
the same bits.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedtune import algorithms, wire
from fedtune import emulator as emu
from fedtune.config import RunConfig
from fedtune.dtypes import copy_bits_, itemsize, lost_fraction, to_numpy, wire_tensor
from fedtune.privacy import dense_seed_vector
from fedtune.privacy.accounting import ledger_for
from fedtune.privacy.dp import private_mean
from fedtune.robust import robust_mean
from fedtune.server.rounds import RoundLoop, RoundStats
from fedtune.server.secagg import run_secure_seed_round
from fedtune.workload import Workload
from fedtune.zo import SeedUpdate, aggregate, replay_
from fedtune.zo.checkpoint import latest_checkpoint, save_checkpoint
from fedtune.zo.client import state_digest
from fedtune.zo.pro import SeedImportance
from fedtune.zo.seedlog import SeedLog
from fedtune.zo.sync import SeedKeys, run_key

__all__ = ["Accepted", "FedKSeed", "SeedRoundStats"]

log = logging.getLogger(__name__)

SEEDLOG_FILE = "seedlog.bin"
CHECKPOINT_DIR = "checkpoints"
# Replay speed assumed before anything is measured: the pure-numpy path's, well below the C
# kernel's (~2e10 per s on 2 cores). The server's own replays replace it until clients report
# theirs (under DP they never do: the rate is data-independent but withheld with the rest).
DEFAULT_REPLAY_ELEMENTS_PER_S = 1e9
OWN_RATE_WINDOW = 9  # the server's own rate: the median of its last this many replays
# Above this fraction of trainable weights left unmoved by eps (a 16-bit model.dtype), the
# server warns at start: a few outliers are normal, the norm gains of a whole model are not.
LOST_PERTURBATION_WARN = 1e-3


@dataclass
class SeedRoundStats(RoundStats):
    """A seed-federation round's numbers: the common ones and how the sync went
    (``sync_mismatches``, ``resynced``: counted by the loop, reported here)."""

    distinct_seeds: int = 0

    def as_metrics(self) -> dict[str, Any]:
        return {
            **super().as_metrics(),
            "sync_mismatches": self.sync_mismatches,
            "resynced": self.resynced,
            "distinct_seeds": self.distinct_seeds,
        }


class Accepted(NamedTuple):
    """An accepted reply: its aggregation weight and its step list (empty if masked)."""

    weight: float
    keys: np.ndarray  # uint64 (S,): seed keys, one per local step
    scalars: np.ndarray  # float32 (S,): the projected gradients


def _needs_state(reply: Message) -> bool:
    """Whether a reply says the client could not reach the round's global state."""
    if reply.has_error() or wire.STATE not in reply.content:
        return False
    return wire.NEED_STATE in reply.content[wire.STATE]


class FedKSeed(RoundLoop):
    """Server side of FedKSeed / FedKSeed-Pro / federated MeZO.

    Args:
        cfg: the run's configuration.
        run_dir: where the seed log and checkpoints live (None: in memory only).
        resume: continue the run found in ``run_dir`` (seed log + newest intact checkpoint).
    """

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.workload = Workload(cfg)
        self.model = self.workload.build_model()
        self.params = self.workload.trainable(self.model)
        self.num_params = sum(p.numel() for _, p in self.params)
        a = cfg.algorithm
        self._keys = SeedKeys(cfg)
        self.pool, self.max_key, self.universe = self._keys.pool, self._keys.max_key, self._keys.universe
        self.seed_of_key = self._keys.seed_of_key
        self.importance = (
            SeedImportance(a.num_candidates, clip=a.pro_clip, initial=a.pro_initial)
            if a.name == "fedkseed-pro" else None
        )
        self.run_key = run_key(cfg)
        self.log: list[SeedUpdate] = []  # entry r-1 produced global state r
        self.encoded_log: list[bytes] = []
        self.node_rounds: dict[int, int] = {}  # node id -> global state it last confirmed
        self.partitions: dict[int, int] = {}  # node id -> partition id it reported
        self.replay_rate = DEFAULT_REPLAY_ELEMENTS_PER_S
        self._client_rates = False  # whether replay_rate comes from clients' reports yet
        self._own_rates: deque[float] = deque(maxlen=OWN_RATE_WINDOW)  # the server's recent replays
        self.state_round = 0
        self._digest: str | None = None
        self.run_dir = run_dir
        self.seedlog = SeedLog.open(run_dir / SEEDLOG_FILE, repair=resume) if run_dir else None
        if self.seedlog is not None and self.seedlog.rounds and not resume:
            raise ValueError(f"{self.seedlog.path} already holds {self.seedlog.rounds} rounds: resume it instead")
        if resume and self.seedlog is not None:
            self._restore()
        self.ledger = ledger_for(cfg, run_dir)  # on resume, read back with the releases so far

    # --- the global state -----------------------------------------------------------

    def _decode(self, payload: bytes) -> SeedUpdate:
        round_, keys, scalars, lr = wire.decode_update(payload, max_key=self.max_key)
        return SeedUpdate(round_, keys, self.seed_of_key(keys), scalars, lr)

    def _restore(self) -> None:
        """Rebuild the global state from the seed log and the newest intact checkpoint."""
        assert self.seedlog is not None and self.run_dir is not None
        updates = [self._decode(p) for p in self.seedlog.payloads]
        found = latest_checkpoint(self.run_dir / CHECKPOINT_DIR, self.seedlog.rounds)
        start = 0
        if found is not None:
            start, arrays = found
            for name, p in self.params:
                copy_bits_(p.data, arrays[name])
        with torch.inference_mode():
            for update in updates[start:]:
                replay_(self.params, update)
        for update, payload in zip(updates, self.seedlog.payloads):
            self._record(update, payload)
        log.info(
            "resumed at round %d: checkpoint of round %d + %d replayed log entries",
            self.state_round, start, len(updates) - start,
        )

    def _record(self, update: SeedUpdate, payload: bytes) -> None:
        self.log.append(update)
        self.encoded_log.append(payload)
        if self.importance is not None:
            self.importance.update(update)
        self.state_round = update.round
        self._digest = None

    def with_momentum(self, update: SeedUpdate) -> SeedUpdate:
        """``algorithm.server_momentum`` = beta > 0: the round's update becomes
        ``m_t = float32(beta m_(t-1) + G_t)`` over the K seeds, its non-zero entries in key order.

        ``m_(t-1)`` is the previous log entry's scalars, so the momentum state is the seed log
        itself: clients replay what is logged, and a resumed server reads it back bit for bit.
        """
        beta = self.cfg.algorithm.server_momentum
        if beta == 0:
            return update
        k = self.cfg.algorithm.num_candidates
        m = np.zeros(k, np.float64)
        if self.log:
            last = self.log[-1]
            m[last.keys.astype(np.int64)] = beta * last.scalars.astype(np.float64)
        np.add.at(m, update.keys.astype(np.int64), update.scalars.astype(np.float64))
        keys = np.flatnonzero(m.astype(np.float32)).astype(np.uint64)
        scalars = m[keys.astype(np.int64)].astype(np.float32)
        return SeedUpdate(update.round, keys, self.seed_of_key(keys), scalars, update.lr)

    def compact(self, update: SeedUpdate) -> tuple[SeedUpdate, tuple[np.ndarray, np.float32] | None]:
        """A DP run's entry on the 8-bit grid (``privacy.update_bits = 8``), else as it is.

        Under DP the round's release is the noised vector over all K candidates (K float32 a
        round, what a lagging client downloads per missed round). Rounding it is
        post-processing, so the guarantee holds; the rounding error, at most max|G| / 254
        per key, is small beside the noise it rounds (max|G| is a few noise standard
        deviations). Keys whose code rounds to 0 leave the entry: the log keeps non-zero
        scalars only. Returns the update every party replays and its codes (None: float32).
        """
        p = self.cfg.privacy
        if p.dp == "none" or p.update_bits == 32 or not len(update.keys):
            return update, None
        q, scale = wire.quantize_scalars_q8(update.scalars)
        keep = np.flatnonzero(q)
        keys, q = update.keys[keep], q[keep]
        scalars = wire.dequantize_scalars_q8(q, scale)
        update = SeedUpdate(update.round, keys, update.seeds[keep], scalars, update.lr)
        return update, ((q, scale) if len(keys) else None)

    def apply(self, update: SeedUpdate) -> None:
        """Log ``update`` (with server momentum, if any) durably, then move the global weights to its state."""
        if update.round != self.state_round + 1:
            raise ValueError(f"update of round {update.round} does not follow state {self.state_round}")
        update, q8 = self.compact(self.with_momentum(update))
        payload = wire.encode_update(update.round, update.keys, update.scalars, update.lr, self.universe, q8=q8)
        if self.seedlog is not None:
            self.seedlog.append(payload)  # durable before any client hears of the round
        start = time.perf_counter()
        replay_(self.params, update)
        elapsed = time.perf_counter() - start
        if len(update.keys) and elapsed > 0:
            self._note_own_replay_rate(len(update.keys) * self.num_params / elapsed)
        self._record(update, payload)
        every = self.cfg.federation.checkpoint_every
        if self.run_dir is not None and every and update.round % every == 0:
            arrays = [(name, to_numpy(p)) for name, p in self.params]
            save_checkpoint(self.run_dir / CHECKPOINT_DIR, update.round, arrays)

    def update_from_mean(self, server_round: int, mean: np.ndarray) -> SeedUpdate:
        """The round's update from a dense per-seed mean G ``(K,)``: its entries that are
        non-zero in float32, keys ascending (what every party replays)."""
        keys = np.flatnonzero(mean.astype(np.float32)).astype(np.uint64)
        scalars = mean[keys.astype(np.int64)].astype(np.float32)
        return SeedUpdate(server_round, keys, self.seed_of_key(keys), scalars, float(self.cfg.algorithm.lr))

    def state_digest(self) -> str:
        """The global weights' digest (what a synced client's weights hash to), cached per state."""
        if self._digest is None:
            self._digest = state_digest(self.params)
        return self._digest

    # --- Flower's Strategy interface -------------------------------------------------

    def summary(self) -> None:
        a, f = self.cfg.algorithm, self.cfg.federation
        log.info(
            "%s: K=%s candidates, %d local steps x batch %d, lr %g, eps %g; "
            "%d of %d clients per round, %d trainable tensors (%d parameters)",
            a.name, a.num_candidates if self.pool is not None else "-", a.local_steps,
            a.batch_size, a.lr, a.eps, f.clients_per_round, f.num_clients, len(self.params),
            self.num_params,
        )
        if self._emulator is not None:
            log.info("%s: clients run an emulator: %s", a.name,
                     emu.summary(self._emulator[0], self.model, self._emulator[1]))
        dtype = self.cfg.model.dtype
        lost = lost_fraction([p for _, p in self.params], a.eps) if dtype != "float32" else 0.0
        if lost > LOST_PERTURBATION_WARN:  # legal, but those weights never train (docs/architecture.md)
            log.warning(
                "algorithm.eps = %g is below half an ulp of %.2f %% of the trainable weights in %s (the "
                "largest, norm gains at 1.0 among them): their perturbation rounds away and they never "
                "train; raise algorithm.eps (1e-2 moves every bfloat16 weight below 4 in magnitude)",
                a.eps, 100 * lost, dtype,
            )

    def train_content(self, server_round: int, since: int | None) -> RecordDict:
        """A train message: the log entries after state ``since``, or the full weights
        when ``since`` is None (a client whose state the log does not bridge cheaply)."""
        first = self.state_round if since is None else since
        config: dict[str, Any] = {
            wire.ROUND: server_round, wire.STATE_ROUND: self.state_round, wire.RUN_KEY: self.run_key
        }
        if self.importance is not None:
            config[wire.SEED_IMPORTANCE] = wire.encode_importance(self.importance.to_bytes())
        config[wire.UPDATES] = self.encoded_log[first : self.state_round]
        content = RecordDict({wire.CONFIG: ConfigRecord(config)})
        if since is None:
            state = {name: wire_tensor(p) for name, p in self.params}
            content[wire.WEIGHTS] = ArrayRecord(torch_state_dict=state)
        return content

    def _since(self, node_id: int) -> int:
        """The state a node most likely holds: what it last confirmed, else a window back."""
        default = self.state_round - self.cfg.federation.sync_window
        return max(0, self.node_rounds.get(node_id, default))

    def catch_up_plan(self, have: int) -> tuple[int | None, float, float]:
        """How a client holding state ``have`` should reach the current state.

        Replaying costs the missing entries' bytes plus one pass over the weights per
        distinct seed; the full weights cost their bytes. Returns ``(since, replay_s,
        weights_s)`` where ``since`` is ``have`` (replay) or None (send the weights).
        """
        if not 0 <= have < self.state_round:
            return None, math.inf, 0.0
        bytes_per_s = self.cfg.federation.bandwidth_mbps * 1e6 / 8
        entries = self.encoded_log[have : self.state_round]
        seeds = sum(len(u.keys) for u in self.log[have : self.state_round])
        replay_s = sum(map(len, entries)) / bytes_per_s + seeds * self.num_params / self.replay_rate
        weights_s = itemsize(self.cfg.model.dtype) * self.num_params / bytes_per_s
        return (have if replay_s <= weights_s else None), replay_s, weights_s

    def _bridge(self, reply: Message) -> int | None:
        have = reply.content[wire.STATE][wire.NEED_STATE]
        since, replay_s, weights_s = self.catch_up_plan(int(have) if isinstance(have, int) else -1)
        log.info(
            "client %s holds state %s, the server %d: %s (replay ~%.2f s vs weights ~%.2f s)",
            reply.metadata.src_node_id, have, self.state_round,
            "replaying the log" if since is not None else "sending the full weights", replay_s, weights_s,
        )
        return since

    def messages_to(self, server_round: int, node_ids: Sequence[int], message_type: str) -> list[Message]:
        """Per node, the log entries after the state it most likely holds (:meth:`train_content`)."""
        return [
            self.tag(Message(self.train_content(server_round, self._since(n)), dst_node_id=n,
                             message_type=message_type))
            for n in node_ids
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.messages_to(server_round, self.sample(grid, server_round), MessageType.TRAIN)

    def exchange(self, grid: Grid, server_round: int, messages: list[Message], stats: RoundStats) -> list[Message]:
        """Send ``messages``, then catch up whoever replied need-state in a second message of the
        same type (the log entries it misses, or the full weights: :meth:`catch_up_plan`)."""
        replies = super().exchange(grid, server_round, messages, stats)
        behind = [r for r in replies if _needs_state(r)]
        if not behind:
            return replies
        stats.bytes_up += sum(wire.message_bytes(r, downlink=False) for r in behind)
        resync = [
            self.tag(Message(self.train_content(server_round, self._bridge(r)),
                             dst_node_id=r.metadata.src_node_id, message_type=r.metadata.message_type))
            for r in behind
        ]
        stats.resynced = len(resync)
        second = super().exchange(grid, server_round, resync, stats)
        behind_ids = {id(r) for r in behind}
        return [r for r in replies if id(r) not in behind_ids] + second

    def at_global_state(self, node: int, state_round: Any, digest: Any, stats: RoundStats) -> bool:
        """Whether a client that says it holds state ``state_round`` with weights of ``digest``
        holds the server's (the digest checked with ``eval.check_sync``); if not, counted in
        ``rejected`` (and ``sync_mismatches``) and logged. A node that does is remembered at
        that state."""
        if state_round != self.state_round:
            stats.rejected += 1
            log.warning("client %s holds state %s, not %d: rejected", node, state_round, self.state_round)
            return False
        if self.cfg.eval.check_sync and digest != self.state_digest():
            stats.sync_mismatches += 1
            stats.rejected += 1
            log.error("client %s holds weights that differ from the server's at state %d", node, self.state_round)
            return False
        self.node_rounds[node] = self.state_round
        return True

    def evaluated_state_ok(self, reply: Message, stats: RoundStats) -> bool:
        state = wire.record(reply.content, wire.STATE)
        return self.at_global_state(reply.metadata.src_node_id, wire.read_int(state, wire.ROUND),
                                    state[wire.DIGEST] if self.cfg.eval.check_sync else None, stats)

    def accept(self, reply: Message, stats: SeedRoundStats, *, masked: bool = False) -> Accepted | None:
        """Validate one reply; return what it contributes, or None if rejected (counted, logged).

        The one acceptance of a reply, in clear and under SecAgg+ (``masked``: the update
        is SecAgg+'s masked vector, only the state and metrics are in clear to check).
        """
        node, a = reply.metadata.src_node_id, self.cfg.algorithm
        if self.failed(reply, stats):
            return None
        try:
            content = reply.content
            metrics = content[wire.METRICS]
            state = wire.record(content, wire.STATE)
            if masked:
                keys, scalars = np.zeros(0, np.uint64), np.zeros(0, np.float32)
            else:
                keys, scalars = wire.decode_steps(
                    state[wire.STEP_LIST],
                    max_key=self.max_key,
                    # under local DP a client sends its noised dense vector: one step per candidate
                    max_steps=a.num_candidates if self.cfg.privacy.dp == "local" else a.local_steps * a.directions,
                    max_bytes=self.max_bytes,
                )
            weight = self.weight_of(metrics)
            trained_from = wire.read_int(state, wire.ROUND)
            digest = state[wire.DIGEST] if self.cfg.eval.check_sync else None
        except (KeyError, TypeError, wire.WireError) as exc:
            stats.rejected += 1
            log.warning("rejected the update of client %s: %s", node, exc)
            return None
        if not self.at_global_state(node, trained_from, digest, stats):
            return None
        self._note_replay_rate(metrics)
        self.note_metrics(metrics, weight, stats)
        return Accepted(weight, keys, scalars)

    def _note_own_replay_rate(self, rate: float) -> None:
        """The server's own replay speed, used until a client reports one: the median of its
        last few replays, so one preempted replay (a small model's take ~0.1 ms) does not
        make replay look 100x slower and send a lagging client the whole weights."""
        self._own_rates.append(rate)
        if not self._client_rates:
            self.replay_rate = statistics.median(self._own_rates)

    def _note_replay_rate(self, metrics: Any) -> None:
        """A client's reported replay speed: the first replaces the server's own, later ones average in."""
        rate = wire.read_float(metrics, wire.REPLAY_RATE) if wire.REPLAY_RATE in metrics else 0.0
        if rate > 0 and math.isfinite(rate):
            self.replay_rate = rate if not self._client_rates else 0.8 * self.replay_rate + 0.2 * rate
            self._client_rates = True

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message], stats: SeedRoundStats | None = None
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the step lists into this round's seed update and apply it.

        Replies are summed in partition order, so the round's float sums do not depend on
        which node ids Flower handed out. Under ``[robust]`` each seed's scalar is a robust
        statistic (:func:`fedtune.robust.robust_mean`) of the clients' dense per-seed sums, a
        client that did not step on a seed counting as 0 there, rounded to float32 once and
        logged like any round. ``stats``: the round's numbers, filled in here
        (None: Flower's interface, where only the returned record tells them).
        """
        stats = SeedRoundStats() if stats is None else stats
        replies = sorted(replies, key=self.partition_order)
        accepted, nodes = [], []
        for reply in replies:
            stats.bytes_up += wire.message_bytes(reply, downlink=False)
            contribution = self.accept(reply, stats)
            if contribution is not None:
                accepted.append(contribution)
                nodes.append(reply.metadata.src_node_id)
        stats.replies = len(accepted)
        lr = self.cfg.algorithm.lr
        usable = len(accepted) >= self.cfg.federation.min_replies and any(len(k) for _, k, _ in accepted)
        if not usable:
            log.warning(
                "round %d: %d usable replies (min_replies=%d): the global model stays as it is",
                server_round, len(accepted), self.cfg.federation.min_replies,
            )
            empty = np.zeros(0, np.uint64)
            update = SeedUpdate(server_round, empty, empty, np.zeros(0, np.float32), lr)
        elif self.cfg.privacy.client_level:  # the dense per-seed vectors, clipped and noised
            k = self.cfg.algorithm.num_candidates
            mean = private_mean([dense_seed_vector(keys, g, k, math.inf)[0] for _, keys, g in accepted], self.cfg)
            update = self.update_from_mean(server_round, mean)
        elif self.cfg.robust.method != "none":  # a robust statistic per seed of the dense per-seed sums
            k = self.cfg.algorithm.num_candidates
            dense = [dense_seed_vector(keys, g, k, math.inf)[0] for _, keys, g in accepted]
            update = self.update_from_mean(server_round, robust_mean(dense, self.cfg.robust))
        else:
            update = aggregate(accepted, round=server_round, lr=lr, seed_of_key=self.seed_of_key)
        self.account(server_round, stats, self.clear_sums(replies, nodes, usable))  # before the log has it
        self.apply(update)
        stats.distinct_seeds = len(update.keys)
        return None, MetricRecord({"replies": stats.replies})

    # --- the round loop ----------------------------------------------------------------

    def prepare(self, grid: Grid) -> dict[str, Any]:
        """With an emulator (Offsite-Tuning) ``emulator_bytes_down``: what the owner ships each
        client once (its frozen tensors; in this version every client builds it from the same
        checkpoint)."""
        if self._emulator is None:
            return {}
        return {"emulator_bytes_down": emu.emulator_bytes(*self._emulator)}

    def evaluate(self) -> dict[str, float]:
        """The global model on the held-out set; where clients run an emulator (Offsite-Tuning)
        the global tensors scored on it too, as ``emulator_eval_*`` (``eval_*``: plugged into
        the full model)."""
        scores = self.workload.evaluate(self.model)
        if self._emulator is not None:
            scores.update(emu.scores_on(*self._emulator, dict(self.params), self.workload.evaluate))
        return scores

    @cached_property
    def _emulator(self) -> tuple[torch.nn.Module, dict[str, torch.Tensor]] | None:
        """The model clients run when it is not the full one (Offsite-Tuning), with its tuned tensors."""
        if algorithms.get(self.cfg.algorithm.name).client_model is None:
            return None
        model = self.workload.build_model(client=True)
        return model, dict(self.workload.trainable(model))

    def run_round(self, grid: Grid, server_round: int) -> dict[str, Any]:
        """One full round: sample, send, catch up whoever fell behind, aggregate, apply."""
        stats = SeedRoundStats()
        if self.cfg.privacy.secagg:  # the same round, its update summed by Flower's SecAgg+
            return self._run_secure_round(grid, server_round, stats)
        messages = list(self.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid))
        stats.sampled = len(messages)
        replies = self.exchange(grid, server_round, messages, stats)
        self.aggregate_train(server_round, replies, stats)
        return stats.as_metrics()

    def _run_secure_round(self, grid: Grid, server_round: int, stats: SeedRoundStats) -> dict[str, Any]:
        """The round through SecAgg+; replies are accepted as in clear.

        There is no second message in such a round to catch a client up, so a node gets the
        log entries after the state it last confirmed (it holds that state or a later one),
        and a node the server knows nothing of gets the whole log. A node that does not
        answer usably is forgotten, so a node that lost its cache gets the whole log next time.
        """
        sampled = self.sample(grid, server_round)
        contents = {
            n: self.tag(Message(self.train_content(server_round, self.node_rounds.get(n, 0)), dst_node_id=n,
                                message_type=MessageType.TRAIN)).content
            for n in sampled
        }
        answered: set[int] = set()

        def accept(reply: Message) -> float | None:
            accepted = self.accept(reply, stats, masked=True)
            if accepted is not None:
                answered.add(reply.metadata.src_node_id)
            return None if accepted is None else accepted.weight

        update, secagg_metrics = run_secure_seed_round(self, grid, server_round, contents, accept, stats)
        for node in set(sampled) - answered:
            self.node_rounds.pop(node, None)
        self.apply(update)
        stats.distinct_seeds = len(update.keys)
        return {**stats.as_metrics(), **secagg_metrics}
