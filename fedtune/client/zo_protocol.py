"""One ZO train message, answered: the protocol torch and torch-free clients share.

Decode the sync payload, bring the client to the round's global state (or say which state
it holds), run the local steps, encode the report. The client object is a
:class:`fedtune.zo.client.ZOClient` (torch) or a :class:`fedtune.device.DeviceClient`
(numpy + ONNX Runtime): both expose ``key``, ``max_key``, ``kind``, ``seed_of_key``,
``sync`` and ``train``. Torch-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedtune import wire
from fedtune.attack import attack_rng, corrupt, is_malicious
from fedtune.client.node_cache import cache_path, keep_of, restore, store
from fedtune.client.secagg import is_secure, secure_seed_reply
from fedtune.config import RunConfig
from fedtune.privacy.dp import noised_seed_steps
from fedtune.privacy.release import client_metrics
from fedtune.zo.pro import probabilities_from_bytes
from fedtune.zo.seeds import SeedUpdate
from fedtune.zo.sync import OutOfSync

__all__ = ["answer_evaluate", "answer_query", "answer_train", "is_class_sums_query", "partition_of"]


def partition_of(msg: Message, context: Context) -> tuple[int, int]:
    """``(partition id, number of partitions)`` this node trains on for ``msg``.

    In a ``fedtune run`` simulation the server assigns each virtual node its partition in
    the message (no start-up query to each of thousands of nodes); a deployed SuperNode
    holds its own data and names it in its node config.
    """
    config = msg.content.get(wire.CONFIG) if msg.has_content() else None
    if isinstance(config, ConfigRecord) and wire.PARTITION in config:
        return wire.read_int(config, wire.PARTITION), wire.read_int(config, wire.NUM_PARTITIONS)
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


def is_class_sums_query(msg: Message) -> bool:
    """Whether a query asks for the class sums (``model.head_init = "centroids"``, answered by the
    torch client in :mod:`fedtune.client.centroids`), else for the node's partition."""
    config = msg.content.get(wire.CONFIG) if msg.has_content() else None
    return isinstance(config, ConfigRecord) and config.get(wire.QUERY) == wire.CLASS_SUMS


def answer_query(msg: Message, context: Context) -> Message:
    """Say which data partition this node holds (the server samples by partition id)."""
    partition_id = int(context.node_config.get("partition-id", -1))
    return Message(RecordDict({wire.STATE: ConfigRecord({wire.PARTITION: partition_id})}), reply_to=msg)


def train_config(msg: Message, key: str, settings: str) -> ConfigRecord:
    """A train message's CONFIG record, once its run key matches this client's ``key``.

    Raises:
        ValueError: naming both keys and the ``settings`` that make them, when they differ.
    """
    config = wire.record(msg.content, wire.CONFIG)
    run_key = wire.read_str(config, wire.RUN_KEY)
    if run_key != key:
        raise ValueError(
            f"this client's run key {key} differs from the server's {run_key}: "
            f"the parties were started with different {settings} settings"
        )
    return config


def _sync(msg: Message, context: Context, client: Any) -> tuple[ConfigRecord, Message | None]:
    """Bring ``client`` to the message's global state (and keep it in a deployed node's weight
    cache); returns the message's config and None, or a need-state reply if the client could
    not reach that state from what it was sent."""
    config = train_config(msg, client.key, "model, data or seed")
    state_round = wire.read_int(config, wire.STATE_ROUND)
    updates = []
    for payload in wire.read_bytes_list(config, wire.UPDATES):
        round_, keys, scalars, lr = wire.decode_update(payload, max_key=client.max_key)
        updates.append(SeedUpdate(round_, keys, client.seed_of_key(keys), scalars, lr))
    weights = None
    sent = msg.content.get(wire.WEIGHTS)
    if isinstance(sent, ArrayRecord):
        weights = {k: v.numpy() for k, v in sent.items()}
    cache = cache_path(context, client)  # a deployed node's own disk (fedtune/client/node_cache.py)
    if weights is None:
        restore(cache, client, state_round)
    try:
        client.sync(state_round, updates, weights)
    except OutOfSync as exc:
        return config, Message(RecordDict({wire.STATE: ConfigRecord({wire.NEED_STATE: exc.have})}), reply_to=msg)
    store(cache, client, keep_of(context))
    return config, None


def answer_train(msg: Message, context: Context, cfg: RunConfig, client: Any) -> Message:
    """Sync ``client`` to the message's global state, train, and reply (or reply need-state)."""
    config, behind = _sync(msg, context, client)
    if behind is not None:
        return behind
    server_round = wire.read_int(config, wire.ROUND)
    probabilities = None
    if wire.SEED_IMPORTANCE in config:  # FedKSeed-Pro
        a = cfg.algorithm
        levels = wire.decode_importance(config[wire.SEED_IMPORTANCE], a.num_candidates)
        probabilities = probabilities_from_bytes(levels, a.num_candidates, a.pro_temperature)
    partition_id, num_partitions = partition_of(msg, context)
    report = client.train(server_round, partition_id, num_partitions, probabilities)
    if is_malicious(cfg.attack, partition_id):  # [attack], an experiment tool: corrupt the scalars it sends
        rng = attack_rng(cfg.seed, server_round, partition_id)
        report = dataclasses.replace(report, scalars=corrupt(report.scalars, cfg.attack, rng))
    metrics = client_metrics(cfg, {  # nothing under DP (fedtune.privacy.release)
        wire.NUM_EXAMPLES: report.num_examples,
        wire.TRAIN_LOSS: report.train_loss,
        wire.SKIPPED_STEPS: report.skipped_steps,
        wire.REPLAY_RATE: report.replay_rate,
    })
    if is_secure(msg):  # the stage of a SecAgg+ round that trains: secaggplus_mod masks the reply
        return secure_seed_reply(msg, cfg, report, metrics)
    keys, scalars = report.keys, report.scalars
    if cfg.privacy.dp == "local":  # the steps leave this client as its clipped and noised dense vector
        keys, scalars = noised_seed_steps(keys, scalars, cfg)
    reply = RecordDict(
        {
            wire.STATE: ConfigRecord({
                wire.ROUND: report.state_round,
                wire.DIGEST: report.digest,
                wire.STEP_LIST: wire.encode_steps(keys, scalars, client.universe),
            }),
            wire.METRICS: metrics,
        }
    )
    return Message(reply, reply_to=msg)


def answer_evaluate(msg: Message, context: Context, client: Any) -> Message:
    """Federated evaluation (``eval.federated``): sync ``client`` to the message's global state
    as for training, score it on this client's own held-out share and reply with the state
    it scored (round, digest, checked by the server as a train reply's) and the scores
    (``num-examples`` + ``eval_*``). Or reply need-state, as :func:`answer_train` does."""
    _, behind = _sync(msg, context, client)
    if behind is not None:
        return behind
    partition_id, num_partitions = partition_of(msg, context)
    num_examples, scores = client.evaluate(partition_id, num_partitions)
    state = ConfigRecord({wire.ROUND: client.synced_round, wire.DIGEST: client.digest() if client.cfg.eval.check_sync
                          else ""})
    metrics = MetricRecord({wire.NUM_EXAMPLES: num_examples, **scores})
    return Message(RecordDict({wire.STATE: state, wire.METRICS: metrics}), reply_to=msg)
