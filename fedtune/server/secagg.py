"""A fedtune round through Flower's SecAgg+ workflow: the server sees only the sum.

fedtune's :class:`fedtune.server.rounds.RoundLoop` drives ``grid.send_and_receive`` itself; Flower's
``SecAggPlusWorkflow`` is a legacy workflow that runs one fit round against a legacy
strategy (:func:`fedtune._flwr_compat.secagg_plus_mean` adapts it). This module runs the
train phase of one round through it:

- the strategy hands over what the round needs as arguments: each sampled node's train
  content, its one reply-acceptance function (the clear-text round calls the same one) and
  the round's stats; what it needs besides is the small :class:`SeedServer` /
  :class:`LoraServer` interface;
- the grid the workflow talks to (:class:`_CheckedGrid`) counts every message's bytes and
  checks each masked reply before the workflow adds it to the sum: a wrong vector length,
  or a reply the strategy does not accept (a client that trained from another state or
  whose weights differ from the server's) is dropped there, and SecAgg+ treats it as a
  client that dropped out (its masks are reconstructed from its neighbours' shares), so
  the round goes on;
- the same grid counts, per stage of the protocol, the clients that stopped answering
  (``secagg_dropped_<stage>`` in the round's metrics); SecAgg+ forms the sum as long as
  every client keeps ``reconstruction_threshold`` live neighbours through the stages
  (:func:`fedtune._flwr_compat.secagg_plus_mean` corrects Flower 1.41 for drops before the
  masked vectors), else it halts: the round then has no sum, no replies and no error bound
  (``secagg_sum`` false);
- the caller applies what comes back (the round's seed update, the new global adapter).

Nothing here touches a client's clear update: the replies carry masked integers only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedtune import wire
from fedtune._flwr_compat import RECORD_KEY_CONFIGS, SecAggKey, Stage, masked_arrays, secagg_plus_mean
from fedtune.config import SECAGG_MODULUS, RunConfig
from fedtune.privacy import SecAggSettings, error_bound, seed_sums_from_mean, unflatten
from fedtune.privacy.dp import add_central_noise
from fedtune.server.rounds import RoundStats
from fedtune.zo import SeedUpdate

if TYPE_CHECKING:
    import torch

__all__ = ["Accept", "LoraServer", "SecureSum", "SeedServer", "run_secure_lora_round", "run_secure_seed_round",
           "secure_mean"]

log = logging.getLogger(__name__)

Accept = Callable[[Message], "float | None"]
"""A strategy's acceptance of one masked reply's clear records: its aggregation weight, or
None if refused (the function counts and logs the refusal in the round's stats)."""


class _Server(Protocol):
    @property
    def cfg(self) -> RunConfig: ...

    def account(self, server_round: int, stats: RoundStats, sums: Sequence[Collection[int]]) -> None: ...


class SeedServer(_Server, Protocol):
    """What a SecAgg+ seed round needs of its strategy (:class:`fedtune.server.strategy.FedKSeed`)."""

    def update_from_mean(self, server_round: int, mean: np.ndarray) -> SeedUpdate: ...


class LoraServer(_Server, Protocol):
    """What a SecAgg+ LoRA round needs of its strategy (:class:`fedtune.server.lora_strategy.FederatedLora`)."""

    @property
    def state(self) -> Mapping[str, torch.Tensor]: ...

    @property
    def uplink_shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    @property
    def projection_shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    def plus_mean(self, mean: np.ndarray) -> dict[str, torch.Tensor]: ...

    def phase2_content(self, server_round: int, a_mean: bytes) -> RecordDict: ...


STAGES = {Stage.SETUP: "setup", Stage.SHARE_KEYS: "share_keys", Stage.COLLECT_MASKED_VECTORS: "collect",
          Stage.UNMASK: "unmask"}
"""Flower's SecAgg+ stages, in order -> their name in the ``secagg_dropped_<name>`` metrics."""


class _CheckedGrid:
    """The grid as the workflow sees it: bytes counted, masked replies checked before the sum,
    the clients that stopped answering counted per stage."""

    def __init__(self, grid: Grid, stats: RoundStats, check: Callable[[Message], bool]) -> None:
        self._grid, self._stats, self._check = grid, stats, check
        self.dropped = dict.fromkeys(STAGES.values(), 0)  # stage -> clients with no reply or an error reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self._stats.bytes_down += sum(wire.message_bytes(m, downlink=True) for m in messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._stats.bytes_up += sum(wire.message_bytes(r, downlink=False) for r in replies)
        if messages:  # the workflow sends each stage's messages in one call
            stage = messages[0].content.config_records[RECORD_KEY_CONFIGS][SecAggKey.STAGE]
            answered = {r.metadata.src_node_id for r in replies if not r.has_error()}
            self.dropped[STAGES[cast(str, stage)]] += len({m.metadata.dst_node_id for m in messages} - answered)
        return [r for r in replies if r.has_error() or not r.has_content() or self._check(r)]


@dataclass(frozen=True)
class SecureSum:
    """What one SecAgg+ run gave the server."""

    mean: np.ndarray | None  # the weighted mean float64 (length,); None if the protocol halted
    weights: dict[int, float]  # node id -> weight, of the clients whose vectors were summed ({} if halted)
    clipped: int  # scalars the summed clients clipped to SecAgg+'s range (their clear metrics)
    dropped: dict[str, int]  # stage (STAGES' names) -> clients that stopped answering there


def secure_mean(
    cfg: RunConfig,
    grid: Grid,
    server_round: int,
    contents: dict[int, RecordDict],
    length: int,
    accept: Accept,
    stats: RoundStats,
) -> SecureSum:
    """One run of Flower's SecAgg+ over ``contents`` (node id -> train content).

    Args:
        length: the values each client's vector must hold (a reply with another length is
            dropped and counted in ``stats.rejected``).
        accept: the strategy's acceptance of a masked reply's clear records.
        stats: the round's counters (``bytes_up``, ``bytes_down``, ``rejected``).

    Returns:
        The sum, or, if the protocol halted (logged), ``mean`` None and no weights.
    """
    settings = SecAggSettings.from_config(cfg, len(contents))
    summed: dict[int, float] = {}
    clipped = 0

    def refused(node: int, reason: str) -> bool:
        stats.rejected += 1
        log.warning("SecAgg+ round %d: dropped client %s before the sum: %s", server_round, node, reason)
        return False

    def checked(reply: Message) -> bool:
        nonlocal clipped
        node = reply.metadata.src_node_id
        try:
            arrays = masked_arrays(reply)
        except Exception as exc:  # noqa: BLE001 - any undecodable payload is a bad reply
            return refused(node, f"masked vector does not decode: {exc}")
        if arrays is None:
            return True  # another stage's reply
        shapes = [a.shape for a in arrays]
        if shapes != [(1,), (length,)]:
            return refused(node, f"masked vector has shapes {shapes}, expected [(1,), ({length},)]")
        try:
            metrics = reply.content.metric_records.get(wire.METRICS)
            scalars = wire.read_int(metrics, wire.CLIPPED) if metrics is not None and wire.CLIPPED in metrics else 0
        except wire.WireError as exc:
            return refused(node, str(exc))
        weight = accept(reply)
        if weight is None:
            return False
        summed[node] = weight
        clipped += scalars
        return True

    checked_grid = _CheckedGrid(grid, stats, checked)
    mean = secagg_plus_mean(
        cast(Grid, checked_grid),
        contents,
        server_round=server_round,
        num_shares=settings.num_shares or 1.0,  # Flower: 1.0 = every sampled client
        reconstruction_threshold=settings.threshold,
        max_weight=settings.max_weight,
        clipping_range=float(settings.clipping_range),
        quantization_range=settings.quantization_range,
        modulus_range=SECAGG_MODULUS,
        timeout=cfg.federation.round_timeout_s,
    )
    dropped = checked_grid.dropped
    if mean is None:
        log.error("SecAgg+ round %d halted, no sum: of %d clients, dropped %s; every client needs "
                  "reconstruction_threshold=%d live neighbours", server_round, len(contents),
                  ", ".join(f"{n} at {stage}" for stage, n in dropped.items()), settings.threshold)
        return SecureSum(None, {}, 0, dropped)
    return SecureSum(mean, summed, clipped, dropped)


def _too_few(cfg: Any, server_round: int, sampled: int) -> bool:
    need = max(SecAggSettings.from_config(cfg, sampled).threshold, 3)
    if sampled >= need:
        return False
    log.error("round %d: %d clients sampled, SecAgg+ needs at least %d (reconstruction_threshold, and 3 "
              "for its shares): the global model stays as it is", server_round, sampled, need)
    return True


def run_secure_seed_round(
    server: SeedServer, grid: Grid, server_round: int, contents: dict[int, RecordDict], accept: Accept,
    stats: RoundStats,
) -> tuple[SeedUpdate, dict[str, Any]]:
    """One FedKSeed round whose update the server learns only as SecAgg+'s sum.

    Args:
        contents: node id -> train content, for each sampled node: the whole seed log (there
            is no second message in a SecAgg+ round to catch a client up).
        accept: the strategy's reply acceptance (state round, digest, metrics).
        stats: the round's numbers, filled in here.

    Returns:
        ``(the round's update, its SecAgg+ metrics)``; the update is empty if no usable sum
        came out. The round's DP release is accounted already: the caller applies the update.
    """
    cfg = server.cfg
    stats.sampled = len(contents)
    empty = np.zeros(0, np.uint64)
    update = SeedUpdate(server_round, empty, empty, np.zeros(0, np.float32), float(cfg.algorithm.lr))
    settings = SecAggSettings.from_config(cfg, len(contents))
    if _too_few(cfg, server_round, len(contents)):
        stats.failed = len(contents)
        server.account(server_round, stats, [])
        return update, _secagg_metrics(None, settings)
    secure = secure_mean(cfg, grid, server_round, contents, cfg.algorithm.num_candidates, accept, stats)
    weights = list(secure.weights.values())
    stats.replies = len(weights)
    stats.failed = stats.sampled - stats.replies - stats.rejected
    # before the log has the round; example-level DP: every sampled client may have trained (conservative)
    server.account(server_round, stats, [list(contents)] if cfg.privacy.dp == "sample" else _released(secure))
    mean = _usable_mean(cfg, server_round, secure.mean, weights, "model")
    if mean is not None:
        update = server.update_from_mean(server_round, seed_sums_from_mean(mean, weights, settings))
    return update, _secagg_metrics(secure, settings)


def _released(secure: SecureSum) -> list[list[int]]:
    """A SecAgg+ run's sums for :meth:`fedtune.server.rounds.RoundLoop.account`: the server saw one
    (the summed clients') unless the protocol halted. Under central DP that counts a sum
    too small to apply (below ``min_replies``, never noised nor used) as well: conservative."""
    return [list(secure.weights)] if secure.mean is not None else []


def _noised(cfg: Any, mean: np.ndarray, num_summed: int) -> np.ndarray:
    """The server's central-DP noise on a secure mean; other modes' noise came from the clients."""
    return add_central_noise(mean, cfg, num_summed) if cfg.privacy.dp == "central" else mean


def _usable_mean(
    cfg: Any, server_round: int, mean: np.ndarray | None, weights: list[float], what: str
) -> np.ndarray | None:
    """The round's mean to apply (with the server's noise under central DP), or None (logged)
    if SecAgg+ produced none or fewer than ``min_replies`` clients are in it."""
    if mean is None:
        log.warning("round %d: SecAgg+ halted: the global %s stays as it is", server_round, what)
        return None
    if len(weights) < cfg.federation.min_replies:
        log.warning("round %d: SecAgg+ summed %d clients, fewer than min_replies=%d: the global %s stays as it is",
                    server_round, len(weights), cfg.federation.min_replies, what)
        return None
    return _noised(cfg, mean, len(weights))


def _secagg_metrics(
    secure: SecureSum | None, settings: SecAggSettings, later: Sequence[SecureSum] = ()
) -> dict[str, Any]:
    """The round's SecAgg+ numbers: whether its sum formed (``secure``: the sum the model
    moves by; None if the protocol never ran), its error bound (None without a sum), the
    clients that dropped at each stage (of every run of the round: ``later`` are LoRA-FAIR's
    phase 2) and the scalars the summed clients clipped."""
    formed = secure is not None and secure.mean is not None
    bound = error_bound(list(secure.weights.values()), settings) if formed and secure is not None else math.nan
    runs = ([] if secure is None else [secure]) + list(later)
    dropped = {f"secagg_dropped_{stage}": sum(run.dropped[stage] for run in runs) for stage in STAGES.values()}
    return {"secagg_sum": formed, **dropped, "secagg_error_bound": bound if math.isfinite(bound) else None,
            "clipped_scalars": secure.clipped if secure is not None else 0}


def run_secure_lora_round(
    server: LoraServer, grid: Grid, server_round: int, contents: dict[int, RecordDict], accept: Accept,
    stats: RoundStats,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """One FedIT / FFA-LoRA round (or two-phase LoRA-FAIR: two SecAgg+ runs) from sums only.

    Clients send their update (trained - global) of the rule's uplink tensors; the new global
    adapter is the global plus the securely averaged update, which is FedIT's (and FFA-LoRA's,
    A staying shared) weighted mean. The aggregation-bias metrics need single clients'
    factors: null here.

    Args:
        contents: node id -> phase-1 train content, for each sampled node.
        accept: the strategy's reply acceptance (metrics, weight).
        stats: the round's numbers, filled in here.

    Returns:
        ``(the new global adapter or None if it stays, the round's SecAgg+ metrics)``; the
        round's DP releases are accounted already: the caller applies the adapter.
    """
    cfg = server.cfg
    stats.sampled = len(contents)
    settings = SecAggSettings.from_config(cfg, len(contents))
    if _too_few(cfg, server_round, len(contents)):
        stats.failed = len(contents)
        server.account(server_round, stats, [])
        return None, _secagg_metrics(None, settings)
    length = sum(int(np.prod(s)) for s in server.uplink_shapes.values())
    secure = secure_mean(cfg, grid, server_round, contents, length, accept, stats)
    weights = list(secure.weights.values())
    stats.replies = len(weights)
    stats.failed = stats.sampled - stats.replies - stats.rejected
    released = _released(secure)
    mean = _usable_mean(cfg, server_round, secure.mean, weights, "adapter")
    state, later = None, []
    if mean is not None:
        state = server.plus_mean(mean)
        if cfg.lora.two_phase:
            state, second = _secure_correction(server, grid, server_round, state, secure.weights, stats)
            if second is not None:
                later.append(second)
                released += _released(second)
    server.account(server_round, stats, released)
    return state, _secagg_metrics(secure, settings, later)


def _secure_correction(
    server: LoraServer, grid: Grid, server_round: int, state: dict[str, torch.Tensor], summed: dict[int, float],
    stats: RoundStats,
) -> tuple[dict[str, torch.Tensor], SecureSum | None]:
    """LoRA-FAIR's phase 2 under SecAgg+: ``state`` (the factors' means) with B corrected,
    and its SecAgg+ run (None if it did not run; its sum, if one formed, is a release for
    :meth:`fedtune.server.rounds.RoundLoop.account`).

    The phase-1 clients (``summed``: node id -> weight, so P is weighted as the factors were)
    send ``(B_k A_k - B A) Āᵀ``, their projection minus the old global's, and the server adds
    ``B A Āᵀ`` back: the same sum, but what a client clips (SecAgg+'s value clip, DP's L2
    clip) is its own change, not the adapter's size. Without the sum (too few clients, the
    protocol halted) B stays uncorrected, as FedIT's.
    """
    import torch

    from fedtune.lora.factors import factor_pairs, is_factor_a
    from fedtune.lora.fair import correct, project
    from fedtune.lora.payload import pack

    cfg, nodes = server.cfg, sorted(summed)
    if _too_few(cfg, server_round, len(nodes)):
        log.warning("round %d: phase 2 needs SecAgg+ again; B stays uncorrected (FedIT)", server_round)
        return state, None
    a_mean = {n: t for n, t in state.items() if is_factor_a(n)}
    bundle = cast(bytes, pack(a_mean)[wire.BUNDLE])  # encoded once, sent to every phase-1 client
    phase2 = {n: server.phase2_content(server_round, bundle) for n in nodes}

    def phase1_weight(reply: Message) -> float | None:
        """A phase-2 reply weighs what its phase-1 factors weighed."""
        node = reply.metadata.src_node_id
        if node not in summed:
            stats.rejected += 1
            log.warning("SecAgg+ round %d: dropped client %s before the sum: not in phase 1's sum",
                        server_round, node)
            return None
        return summed[node]

    shapes = server.projection_shapes
    length = sum(int(np.prod(s)) for s in shapes.values())
    second = secure_mean(cfg, grid, server_round, phase2, length, phase1_weight, stats)
    if second.mean is None:
        log.warning("round %d: no phase-2 sum; B stays uncorrected (FedIT) this round", server_round)
        return state, second
    change = unflatten(_noised(cfg, second.mean, len(second.weights)), shapes)
    old = server.state  # the global the clients trained from, still in place
    projections = {m: (torch.from_numpy(change[m]) + project(old[a], old[b], a_mean[a])).float()
                   for m, (a, b) in factor_pairs(old).items()}
    return correct(state, projections, cfg.lora.fair_lambda, cfg.lora.fair_steps), second
