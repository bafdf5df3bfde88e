"""The ClientApp's federated-LoRA train handler: decode, call :mod:`fedtune.lora.client`, encode.

Phase 1 (every rule): the message carries the global adapter (hetlora: cut to the rank
the server names, which the client may lower by self-pruning and then reports); the client
trains and replies with its update (trained minus global, the rule's uplink tensors), compressed as
``[compress]`` says, with the error-feedback residual kept from one of this client's rounds
to its next: in ``context.state`` where a node is one client (deployment), on disk under the
run directory (:mod:`fedtune.partition_state`) where the server lends nodes to partitions
round by round (a ``fedtune run`` simulation). Phase 2 (LoRA-FAIR with
``lora.two_phase``): the message carries ``Ā``; the client replies with ``B_k A_k Āᵀ`` per
module, from the factors it kept in ``context.state`` since phase 1 (node state that
Flower keeps between messages, in simulation and deployment alike).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedtune import wire
from fedtune.attack import attack_rng, corrupt_state, is_malicious
from fedtune.client.secagg import is_secure, secure_reply
from fedtune.client.zo_protocol import partition_of, train_config
from fedtune.config import RunConfig
from fedtune.lora.client import LoraClient, LoraReport, client_for
from fedtune.lora.factors import is_factor_a
from fedtune.lora.payload import apply_update, compress_update, pack, pack_compressed, plus_vector, unpack
from fedtune.partition_state import PartitionState
from fedtune.privacy import update_vector
from fedtune.privacy.dp import clip_and_noise
from fedtune.privacy.release import client_metrics
from fedtune.rng import generator

__all__ = ["evaluate_lora", "train_lora"]

RESIDUAL_FILE = "residual"  # <run dir>/client-state/<partition>.residual.safetensors


def train_lora(cfg: RunConfig, msg: Message, context: Context, run_dir: Path | None = None) -> Message:
    """Answer one LoRA train message (either phase). ``run_dir`` holds per-partition state
    when the server assigns partitions (a ``fedtune run`` simulation).

    Raises:
        ValueError: if the server runs another configuration, or a phase-2 message finds
            no phase-1 factors of its round (Flower turns it into an error reply).
        fedtune.wire.WireError: if the server's adapter does not match this client's.
    """
    client = client_for(cfg)
    config = train_config(msg, client.key, "model, data, algorithm or [lora]")
    server_round = wire.read_int(config, wire.ROUND)
    if wire.PHASE in config and wire.read_int(config, wire.PHASE) == 2:
        return _phase_two(client, msg, context, server_round)

    partition_id, num_partitions = partition_of(msg, context)
    rank = _rank(client, config, partition_id)
    global_state = unpack(msg.content[wire.ADAPTER], client.shapes_at(rank), "the server's adapter")
    report = client.train(server_round, partition_id, num_partitions, global_state, rank)
    global_state = client.view(global_state, report.rank)  # at the rank it kept (hetlora), like report.state
    if is_malicious(cfg.attack, partition_id):  # [attack], an experiment tool: corrupt the update it sends
        bad = corrupt_state({n: t.numpy() for n, t in report.state.items()},
                            {n: global_state[n].numpy() for n in report.state}, cfg.attack,
                            attack_rng(cfg.seed, server_round, partition_id))
        report = dataclasses.replace(report, state={n: torch.from_numpy(v) for n, v in bad.items()})
    values = {wire.NUM_EXAMPLES: report.num_examples, wire.TRAIN_LOSS: report.train_loss,
              wire.SKIPPED_STEPS: report.skipped_steps}
    if client.pruner is not None:  # hetlora's self-pruning: the server keeps the rank for the next rounds
        values[wire.RANK] = report.rank
    metrics = client_metrics(cfg, values)  # nothing under DP (fedtune.privacy.release)
    if is_secure(msg):  # SecAgg+ (privacy.secagg): the update as one vector for secaggplus_mod to mask
        return _secure_update(client, msg, context, server_round, report, global_state, metrics)
    # a simulation's node plays another client next round: the residual stays with the partition
    lent = PartitionState(run_dir) if wire.PARTITION in config and run_dir is not None else None
    if lent is not None:
        residual = lent.load(partition_id, RESIDUAL_FILE)
    else:
        record = context.state.get(wire.RESIDUAL)
        residual = _arrays(record) if isinstance(record, ArrayRecord) else None
    if residual is not None:  # after hetlora's self-pruning: the residual of the slices it kept
        residual = {n: v[tuple(slice(size) for size in global_state[n].shape)] for n, v in residual.items()}
    rng = generator(cfg.seed, "compress", server_round, partition_id)
    trained = _noised(cfg, report.state, global_state) if cfg.privacy.dp == "local" else report.state
    sent, kept = compress_update(trained, global_state, cfg.compress, residual, rng)
    if kept is not None and lent is not None:
        lent.save(partition_id, RESIDUAL_FILE, kept)
    elif kept is not None:
        context.state[wire.RESIDUAL] = ArrayRecord({n: Array(v) for n, v in kept.items()})
    if cfg.lora.two_phase:  # keep the factors as the server will rebuild them
        context.state[wire.PENDING] = pack(apply_update(global_state, sent))
        context.state[wire.PENDING_ROUND] = ConfigRecord({wire.ROUND: server_round})
    return Message(RecordDict({wire.ADAPTER: pack_compressed(sent), wire.METRICS: metrics}), reply_to=msg)


def evaluate_lora(cfg: RunConfig, msg: Message, context: Context) -> Message:
    """Answer one federated-evaluation message (``eval.federated``): the global adapter it
    carries, scored on this client's own held-out share; the reply's metrics are
    ``num-examples`` and the ``eval_*`` scores.

    Raises:
        ValueError: if the server runs another configuration.
        fedtune.wire.WireError: if the server's adapter does not match this client's.
    """
    client = client_for(cfg)
    train_config(msg, client.key, "model, data, algorithm or [lora]")
    global_state = unpack(msg.content[wire.ADAPTER], client.uplink_shapes, "the server's adapter")
    num_examples, scores = client.evaluate(*partition_of(msg, context), global_state)
    return Message(RecordDict({wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: num_examples, **scores})}),
                   reply_to=msg)


def _rank(client: LoraClient, config: ConfigRecord, partition_id: int) -> int:
    """The rank the server named in the train message (hetlora), else the partition's from the config.

    Raises:
        fedtune.wire.WireError: on a rank that is not an int in [1, lora.rank].
    """
    if wire.RANK not in config:
        return client.rank(partition_id)
    rank = wire.read_int(config, wire.RANK)
    if not 1 <= rank <= client.cfg.lora.rank:
        raise wire.WireError(f"the server's {wire.RANK!r} must be in [1, lora.rank={client.cfg.lora.rank}], got {rank}")
    return rank


def _phase_two(client: LoraClient, msg: Message, context: Context, server_round: int) -> Message:
    pending = context.state.get(wire.PENDING_ROUND)
    pending_round = wire.read_int(pending, wire.ROUND) if isinstance(pending, ConfigRecord) else None
    if pending_round != server_round or not isinstance(pending, ConfigRecord):
        raise ValueError(
            f"phase 2 of round {server_round}, but this node holds the factors of round {pending_round}"
        )
    trained = unpack(context.state[wire.PENDING], client.uplink_shapes, "this node's pending factors")
    a_names = {n: s for n, s in client.uplink_shapes.items() if is_factor_a(n)}
    a_mean = unpack(msg.content[wire.A_MEAN], a_names, "the server's Ā")
    projections = client.project(trained, a_mean)
    del context.state[wire.PENDING]
    del context.state[wire.PENDING_ROUND]
    if is_secure(msg):  # (B_k A_k - B A) Āᵀ: the server adds the old global's B A Āᵀ back (fedtune/server/secagg.py)
        base = unpack(context.state[wire.PENDING_BASE], client.uplink_shapes, "this node's pending global")
        del context.state[wire.PENDING_BASE]
        vector = update_vector(projections, client.project(base, a_mean))  # secure_reply clips and noises
        weight = wire.read_int(pending, wire.NUM_EXAMPLES)  # phase 1's weight: P is weighted as the factors were
        return secure_reply(msg, client.cfg, vector, weight, {})
    return Message(RecordDict({wire.PROJECTIONS: pack(projections)}), reply_to=msg)


def _secure_update(client: LoraClient, msg: Message, context: Context, server_round: int, report: LoraReport,
                   global_state: dict[str, Any], metrics: MetricRecord) -> Message:
    cfg = client.cfg
    # at lora.rank, zero beyond a hetlora client's rank: every client's vector has the same length,
    # and the slices it did not train add nothing to the sum (fedtune.lora.hetlora)
    vector = update_vector(client.full(report.state), client.full(global_state))  # secure_reply clips, noises
    if cfg.lora.two_phase:  # the factors phase 2 projects: its own, as trained, and the global's
        context.state[wire.PENDING] = pack(report.state)
        context.state[wire.PENDING_BASE] = pack(global_state)
        context.state[wire.PENDING_ROUND] = ConfigRecord({wire.ROUND: server_round,
                                                          wire.NUM_EXAMPLES: report.num_examples})
    return secure_reply(msg, cfg, vector, report.num_examples, {wire.METRICS: metrics})


def _noised(cfg: RunConfig, trained: dict[str, Any], global_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Local DP on the clear path: ``trained`` moved so that its update (trained - global),
    as one vector, is clipped to ``dp_clip`` and carries the full noise before it leaves."""
    vector, _ = clip_and_noise(update_vector(trained, global_state), cfg)
    return plus_vector(global_state, vector, {n: tuple(t.shape) for n, t in global_state.items()})


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {n: np.asarray(a.numpy(), np.float32) for n, a in record.items()}
