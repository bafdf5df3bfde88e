"""A fedtune round through Flower's SecAgg+ workflow: the server sees only the sum.

fedtune's :class:`fedtune.server.rounds.RoundLoop` drives ``grid.send_and_receive`` itself; Flower's
``SecAggPlusWorkflow`` is a legacy workflow that runs one fit round against a legacy
strategy in a ``LegacyContext``. This module runs the workflow's four stages for the train
phase of one round and adapts both ends:

- the legacy strategy (:class:`_HandBack`) names fedtune's sampled nodes in
  ``configure_fit`` and, in ``aggregate_fit``, hands the unmasked mean back to fedtune
  instead of updating a model;
- the workflow's setup stage is followed by swapping in fedtune's own train messages
  (:class:`_FedtuneSecAggPlus`), which stage 2 sends with the protocol's key shares;
- the grid the workflow talks to (:class:`_CheckedGrid`) counts every message's bytes and
  checks each masked reply before the workflow adds it to the sum: a wrong vector length,
  a client that trained from another state or whose weights differ from the server's is
  dropped there, and SecAgg+ treats it as a client that dropped out (its masks are
  reconstructed from its neighbours' shares), so the round goes on.

Nothing here touches a client's clear update: the replies carry masked integers only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.server import LegacyContext
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from fedtune import wire
from fedtune.config import SECAGG_MODULUS
from fedtune.privacy import SecAggSettings, error_bound, seed_sums_from_mean, unflatten
from fedtune.privacy.dp import add_central_noise
from fedtune.zo import SeedUpdate

__all__ = ["run_secure_lora_round", "run_secure_seed_round", "secure_mean"]

log = logging.getLogger(__name__)


class _HandBack(LegacyStrategy):
    """The legacy strategy the workflow needs: fedtune's clients in, the unmasked mean out."""

    def __init__(self, node_ids: list[int], grid: Grid) -> None:
        self.node_ids, self.grid = node_ids, grid
        self.mean: np.ndarray | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        # the FitIns are replaced by fedtune's train content after the setup stage
        return [(GridClientProxy(n, self.grid, 0), FitIns(parameters, {})) for n in self.node_ids]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: Any
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if results:  # every result carries the same parameters: the unmasked weighted mean
            self.mean = parameters_to_ndarrays(results[0][1].parameters)[0]
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class _FedtuneSecAggPlus(SecAggPlusWorkflow):
    """Flower's workflow, sending fedtune's train content in its collect stage."""

    def __init__(self, contents: dict[int, RecordDict], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._contents = contents

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        ok = super().setup_stage(grid, context, state)
        state.nid_to_fitins = {nid: self._contents[nid] for nid in state.nid_to_fitins}
        return ok


class _CheckedGrid:
    """The grid as the workflow sees it: bytes counted, masked replies checked before the sum."""

    def __init__(self, grid: Grid, stats: Any, check: Callable[[Message], bool]) -> None:
        self._grid, self._stats, self._check = grid, stats, check

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self._stats.bytes_down += sum(wire.message_bytes(m, downlink=True) for m in messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._stats.bytes_up += sum(wire.message_bytes(r, downlink=False) for r in replies)
        return [r for r in replies if r.has_error() or not _is_masked(r) or self._check(r)]


def _is_masked(reply: Message) -> bool:
    configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    return configs is not None and Key.MASKED_PARAMETERS in configs


def _masked_length_error(reply: Message, length: int) -> str | None:
    """Why a masked vector is not the ``[weight factor (1,), values (length,)]`` pair, or None."""
    from flwr.common import bytes_to_ndarray

    try:
        arrays = [bytes_to_ndarray(b) for b in cast(list, reply.content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS])]
    except Exception as exc:  # noqa: BLE001 - any undecodable payload is a bad reply
        return f"masked vector does not decode: {exc}"
    shapes = [a.shape for a in arrays]
    if shapes != [(1,), (length,)]:
        return f"masked vector has shapes {shapes}, expected [(1,), ({length},)]"
    return None


class _Refused(ValueError):
    """A masked reply the server drops before the sum (SecAgg+ then recovers it as a drop-out)."""


def secure_mean(
    cfg: Any,
    grid: Grid,
    server_round: int,
    contents: dict[int, RecordDict],
    length: int,
    check: Callable[[Message], float],
    stats: Any,
) -> tuple[np.ndarray | None, dict[int, float]]:
    """One run of Flower's SecAgg+ over ``contents`` (node id -> train content).

    Args:
        length: the values each client's vector must hold.
        check: validates a masked reply's clear records and returns its weight, or raises
            :class:`_Refused` / ``KeyError`` / ``TypeError`` / ``WireError`` to drop it.
        stats: the round's counters (``bytes_up``, ``bytes_down``, ``rejected``).

    Returns:
        ``(weighted mean float64 (length,), {node id: weight} of the summed clients)``; the
        mean is None if the protocol halted (too few clients left to unmask).
    """
    settings = SecAggSettings.from_config(cfg, len(contents))
    summed: dict[int, float] = {}

    def checked(reply: Message) -> bool:
        node = reply.metadata.src_node_id
        try:
            reason = _masked_length_error(reply, length)
            if reason is not None:
                raise _Refused(reason)
            weight = check(reply)
        except (_Refused, KeyError, TypeError, wire.WireError) as exc:
            stats.rejected += 1
            log.warning("SecAgg+ round %d: dropped client %s before the sum: %s", server_round, node, exc)
            return False
        summed[node] = weight
        return True

    legacy = _HandBack(list(contents), grid)
    state = RecordDict({
        MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
        MAIN_PARAMS_RECORD: ArrayRecord(),
    })
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
                            strategy=legacy)
    workflow = _FedtuneSecAggPlus(
        contents,
        num_shares=settings.num_shares or 1.0,  # Flower: 1.0 = every sampled client
        reconstruction_threshold=settings.threshold,
        max_weight=settings.max_weight,
        clipping_range=float(settings.clipping_range),
        quantization_range=settings.quantization_range,
        modulus_range=SECAGG_MODULUS,
        timeout=cfg.federation.round_timeout_s,
    )
    workflow(cast(Grid, _CheckedGrid(grid, stats, checked)), context)
    return legacy.mean, summed


def _too_few(cfg: Any, server_round: int, sampled: int) -> bool:
    need = max(SecAggSettings.from_config(cfg, sampled).threshold, 3)
    if sampled >= need:
        return False
    log.error("round %d: %d clients sampled, SecAgg+ needs at least %d (reconstruction_threshold, and 3 "
              "for its shares): the global model stays as it is", server_round, sampled, need)
    return True


def run_secure_seed_round(strategy: Any, grid: Grid, server_round: int) -> dict[str, Any]:
    """One FedKSeed round whose update the server learns only as SecAgg+'s sum.

    ``strategy`` is a :class:`fedtune.server.strategy.FedKSeed`; its sampling, train content, digest
    checks and ``apply`` are used unchanged. Every sampled client gets the whole seed log
    (there is no second message in a SecAgg+ round to catch a client up).
    """
    from fedtune.server.strategy import SeedRoundStats

    cfg = strategy.cfg
    stats = SeedRoundStats()
    node_ids = strategy.sample(grid, server_round)
    stats.sampled = len(node_ids)
    empty = np.zeros(0, np.uint64)
    update = SeedUpdate(server_round, empty, empty, np.zeros(0, np.float32), float(cfg.algorithm.lr))
    if _too_few(cfg, server_round, len(node_ids)):
        stats.failed = len(node_ids)
        strategy.account(server_round, stats, [])
        strategy.apply(update)
        return stats.as_metrics()
    contents = {
        n: strategy.tag(Message(strategy._train_content(server_round, 0), dst_node_id=n,
                                message_type=MessageType.TRAIN)).content
        for n in node_ids
    }
    clipped = 0

    def check(reply: Message) -> float:
        nonlocal clipped
        state, metrics = wire.record(reply.content, wire.STATE), reply.content[wire.METRICS]
        weight = float(strategy.weight_of(metrics))
        trained_from = wire.read_int(state, wire.ROUND)
        if trained_from != strategy.state_round:
            raise _Refused(f"trained from state {trained_from}, not {strategy.state_round}")
        if cfg.eval.check_sync and state[wire.DIGEST] != strategy._state_digest():
            stats.sync_mismatches += 1
            raise _Refused(f"holds weights that differ from the server's at state {strategy.state_round}")
        strategy.node_rounds[reply.metadata.src_node_id] = strategy.state_round
        strategy.note_metrics(metrics, weight, stats)
        clipped += wire.read_int(metrics, wire.CLIPPED) if wire.CLIPPED in metrics else 0
        return weight

    mean, summed = secure_mean(cfg, grid, server_round, contents, cfg.algorithm.num_candidates, check, stats)
    weights = list(summed.values())
    stats.replies = len(weights)
    stats.failed = stats.sampled - stats.replies - stats.rejected
    settings = SecAggSettings.from_config(cfg, len(node_ids))
    strategy.account(server_round, stats, _released(mean, summed))  # before the log has the round
    mean = _usable_mean(cfg, server_round, mean, weights, "model")
    if mean is not None:
        update = strategy.update_from_mean(server_round, seed_sums_from_mean(mean, weights, settings))
    strategy.apply(update)
    stats.distinct_seeds = len(update.keys)
    return {**stats.as_metrics(), **_secagg_metrics(weights, settings, clipped)}


def _released(mean: np.ndarray | None, summed: dict[int, float]) -> list[list[int]]:
    """A SecAgg+ run's sums for :meth:`fedtune.server.rounds.RoundLoop.account`: the server saw one
    (the summed clients') unless the protocol halted. Under central DP that counts a sum
    too small to apply (below ``min_replies``, never noised nor used) as well: conservative."""
    return [list(summed)] if mean is not None else []


def _noised(cfg: Any, mean: np.ndarray, num_summed: int) -> np.ndarray:
    """The server's central-DP noise on a secure mean; other modes' noise came from the clients."""
    return add_central_noise(mean, cfg, num_summed) if cfg.privacy.dp == "central" else mean


def _usable_mean(
    cfg: Any, server_round: int, mean: np.ndarray | None, weights: list[float], what: str
) -> np.ndarray | None:
    """The round's mean to apply (with the server's noise under central DP), or None (logged)
    if SecAgg+ produced none or fewer than ``min_replies`` clients are in it."""
    if mean is None or len(weights) < cfg.federation.min_replies:
        log.warning("round %d: SecAgg+ produced no sum (%d usable replies, min_replies=%d): the global "
                    "%s stays as it is", server_round, len(weights), cfg.federation.min_replies, what)
        return None
    return _noised(cfg, mean, len(weights))


def _secagg_metrics(weights: list[float], settings: SecAggSettings, clipped: int) -> dict[str, Any]:
    bound = error_bound(weights, settings)
    return {"secagg_error_bound": bound if math.isfinite(bound) else None, "clipped_scalars": clipped}


def run_secure_lora_round(strategy: Any, grid: Grid, server_round: int) -> dict[str, Any]:
    """One FedIT / FFA-LoRA round (or two-phase LoRA-FAIR: two SecAgg+ runs) from sums only.

    ``strategy`` is a :class:`fedtune.server.lora_strategy.FederatedLora`. Clients send their update
    (trained - global) of the rule's uplink tensors; the new global adapter is the global
    plus the securely averaged update, which is FedIT's (and FFA-LoRA's, A staying shared)
    weighted mean. The aggregation-bias metrics need single clients' factors: null here.
    """
    from fedtune.lora import Aggregate
    from fedtune.server.lora_strategy import LoraRoundStats

    cfg = strategy.cfg
    strategy._stats = stats = LoraRoundStats()
    messages = list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid))
    stats.sampled = len(messages)
    if _too_few(cfg, server_round, len(messages)):
        stats.failed = len(messages)
        strategy.account(server_round, stats, [])
        return stats.as_metrics()
    contents = {m.metadata.dst_node_id: m.content for m in messages}
    clipped = 0

    def check(reply: Message) -> float:
        nonlocal clipped
        metrics = reply.content[wire.METRICS]
        weight = float(strategy.weight_of(metrics))
        strategy.note_metrics(metrics, weight, stats)
        clipped += wire.read_int(metrics, wire.CLIPPED) if wire.CLIPPED in metrics else 0
        return weight

    length = sum(int(np.prod(s)) for s in strategy.uplink_shapes.values())
    mean, summed = secure_mean(cfg, grid, server_round, contents, length, check, stats)
    weights = list(summed.values())
    stats.replies = len(weights)
    stats.failed = stats.sampled - stats.replies - stats.rejected
    settings = SecAggSettings.from_config(cfg, len(messages))
    released = _released(mean, summed)
    mean = _usable_mean(cfg, server_round, mean, weights, "adapter")
    if mean is not None:
        state = strategy.plus_mean(mean)
        if cfg.lora.two_phase:
            state, second = _secure_correction(strategy, grid, server_round, state, summed)
            released += second
        strategy.apply(Aggregate(state, math.nan, math.nan))
    strategy.account(server_round, stats, released)
    return {**stats.as_metrics(), **_secagg_metrics(weights, settings, clipped)}


def _secure_correction(
    strategy: Any, grid: Grid, server_round: int, state: dict[str, Any], summed: dict[int, float]
) -> tuple[dict[str, Any], list[list[int]]]:
    """LoRA-FAIR's phase 2 under SecAgg+: ``state`` (the factors' means) with B corrected,
    and the sums it released (for :meth:`fedtune.server.rounds.RoundLoop.account`).

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

    cfg, nodes = strategy.cfg, sorted(summed)
    if _too_few(cfg, server_round, len(nodes)):
        log.warning("round %d: phase 2 needs SecAgg+ again; B stays uncorrected (FedIT)", server_round)
        return state, []
    a_mean = {n: t for n, t in state.items() if is_factor_a(n)}
    bundle = pack(a_mean)[wire.BUNDLE]
    phase2 = {n: RecordDict({wire.CONFIG: strategy._config(server_round, 2),
                             wire.A_MEAN: ConfigRecord({wire.BUNDLE: bundle})}) for n in nodes}
    shapes = strategy.projection_shapes
    length = sum(int(np.prod(s)) for s in shapes.values())
    p_mean, p_summed = secure_mean(cfg, grid, server_round, phase2, length,
                                   lambda reply: summed[reply.metadata.src_node_id], strategy._stats)
    if p_mean is None:
        log.warning("round %d: no phase-2 sum; B stays uncorrected (FedIT) this round", server_round)
        return state, []
    change = unflatten(_noised(cfg, p_mean, len(p_summed)), shapes)
    old = strategy.state  # the global the clients trained from, still in place
    projections = {m: (torch.from_numpy(change[m]) + project(old[a], old[b], a_mean[a])).float()
                   for m, (a, b) in factor_pairs(old).items()}
    return correct(state, projections, cfg.lora.fair_lambda, cfg.lora.fair_steps), [list(p_summed)]
