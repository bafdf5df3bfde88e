"""A head that starts from the clients' class means (``model.head_init = "centroids"``).

FedNCM (Legate et al., "Guiding the last layer in federated learning with pre-trained
models", NeurIPS 2023): before any training round, every client sums the frozen encoder's
normalised sentence features of its examples per class and sends the sums and counts; the
server adds them up and sets row ``c`` of the label-names cosine head to
``model.head_scale * normalize(sum_c)``, bias 0. The global model then starts as the
nearest-class-mean classifier of the whole federation's data (a better start than the label
names' embeddings wherever the names describe the classes loosely), and fine-tuning goes on
from it. A class no client holds keeps its label-name row.

The exchange is one Flower query message per client (all ``federation.num_clients``
partitions, not a sample: in a ``fedtune run`` simulation the server lends its node pool to
the partitions in turns), counted in bytes like a round's, and reported in round 0's record.
The sums are clear: the config refuses SecAgg+ and DP with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedtune import wire
from fedtune.config import RunConfig
from fedtune.server.rounds import error_reason

__all__ = ["HEAD_WEIGHT", "HeadServer", "centroid_head", "head_names"]

log = logging.getLogger(__name__)

HEAD_WEIGHT = "classifier.weight"
"""The suffix of the label-names head's weight among a LoRA run's global tensors."""


class HeadServer(Protocol):
    """What the exchange needs of its strategy (:class:`fedtune.server.lora_strategy.FederatedLora`)."""

    cfg: RunConfig
    run_key: str
    assign_partitions: bool
    partitions: dict[int, int]

    @property
    def uplink(self) -> Sequence[str]: ...

    @property
    def state(self) -> Mapping[str, torch.Tensor]: ...

    def discover(self, grid: Grid, timeout: float) -> None: ...

    def set_state(self, state: dict[str, torch.Tensor]) -> None: ...


def head_names(names: Sequence[str]) -> tuple[str, str]:
    """The global state's ``(weight, bias)`` names of the label-names head.

    Raises:
        ValueError: if the clients do not send the head (it is not among ``names``).
    """
    found = [n for n in names if n.endswith(HEAD_WEIGHT)]
    bias = found[0].removesuffix("weight") + "bias" if len(found) == 1 else ""
    if bias not in names:
        raise ValueError("`model.head_init` = 'centroids' needs the label-names head among the tensors the "
                         f"clients train and send; found {found or 'none'}")
    return found[0], bias


def _messages(strategy: HeadServer, grid: Grid) -> Iterator[list[Message]]:
    """The query messages, one per partition, in batches the node pool can take at once."""
    cfg = strategy.cfg
    n = cfg.federation.num_clients

    def message(node: int, extra: dict[str, Any]) -> Message:
        config = ConfigRecord({wire.RUN_KEY: strategy.run_key, wire.QUERY: wire.CLASS_SUMS, **extra})
        return Message(RecordDict({wire.CONFIG: config}), dst_node_id=node, message_type=MessageType.QUERY)

    if strategy.assign_partitions:  # simulation: lend the pool to the partitions in turns
        pool = sorted(grid.get_node_ids())[: cfg.federation.simulated_nodes]
        for first in range(0, n, len(pool)):
            parts = range(first, min(first + len(pool), n))
            yield [message(node, {wire.PARTITION: p, wire.NUM_PARTITIONS: n}) for node, p in zip(pool, parts)]
        return
    strategy.discover(grid, cfg.federation.round_timeout_s)  # deployment: each node holds its own partition
    yield [message(node, {}) for node in sorted(strategy.partitions)]


def centroid_head(strategy: HeadServer, grid: Grid) -> dict[str, Any]:
    """Collect every client's class sums, set the global head to their normalised means, and
    return round 0's numbers about the exchange (``head_init_*``)."""
    cfg = strategy.cfg
    weight_name, bias_name = head_names(list(strategy.uplink))
    weight = strategy.state[weight_name]
    classes, hidden = (int(d) for d in weight.shape)
    expected = {"sums": (classes, hidden), "counts": (classes,)}
    sums, counts = np.zeros((classes, hidden), np.float64), np.zeros(classes, np.float64)
    answered = failed = bytes_up = bytes_down = 0
    start = time.monotonic()
    for messages in _messages(strategy, grid):
        bytes_down += sum(wire.message_bytes(m, downlink=True) for m in messages)
        replies = sorted(grid.send_and_receive(messages, timeout=cfg.federation.round_timeout_s),
                         key=lambda r: r.metadata.src_node_id)  # a fixed order: the float64 sum's bits
        missing = len(messages) - len(replies)  # no reply within federation.round_timeout_s
        if missing:
            failed += missing
            log.warning("%d clients sent no class sums within %g s", missing, cfg.federation.round_timeout_s)
        for reply in replies:
            bytes_up += wire.message_bytes(reply, downlink=False)
            if reply.has_error():
                failed += 1
                log.warning("client %s sent no class sums: %s", reply.metadata.src_node_id, error_reason(reply))
                continue
            try:
                record = wire.record(reply.content, wire.STATE)
                got = wire.decode_bundle(wire.read_bytes(record, wire.BUNDLE), expected, "class sums")
                s, c = got["sums"].decompress(), got["counts"].decompress()
                if np.any(c < 0) or np.any(c != np.round(c)):
                    raise wire.WireError(f"class sums: counts must be whole and >= 0, got {c.tolist()}")
            except (wire.WireError, KeyError, TypeError) as exc:
                failed += 1
                log.warning("client %s sent unusable class sums: %s", reply.metadata.src_node_id, exc)
                continue
            sums += s
            counts += c
            answered += 1
    held = counts > 0
    if answered:
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        rows = cfg.model.head_scale * sums / np.where(norms > 0, norms, 1.0)
        new_weight = weight.clone()
        new_weight[held] = weight.new_tensor(rows[held].astype(np.float32))
        state = dict(strategy.state)
        state[weight_name] = new_weight
        state[bias_name] = strategy.state[bias_name].clone().zero_()
        strategy.set_state(state)
    log.info("head from class means: %d clients answered (%d failed), %d of %d classes held, %.1f s",
             answered, failed, int(held.sum()), classes, time.monotonic() - start)
    if not answered:
        log.warning("no client sent class sums: the head keeps its label-name rows")
    per = max(answered + failed, 1)
    return {
        "head_init_clients": answered,
        "head_init_failed": failed,
        "head_init_classes": int(held.sum()),
        "head_init_bytes_up_per_client": bytes_up / per,
        "head_init_bytes_down_per_client": bytes_down / per,
    }
