"""Federated-LoRA fixtures: tiny seq-cls configs and an in-process Grid.

The in-process grid hands the strategy's real ``Message`` objects to the real ClientApp
handlers (``fedtune.app.client_app.query``, ``fedtune.client.lora.train_lora``), one ``Context`` per node, so
a round runs through the same code as under Flower's simulation engine, minus Ray and
the serialisation (which ``test_simulation.py`` covers).
"""

import math
import os
import traceback

from flwr.app import Context, Error, Message, MessageType, RecordDict

from fedtune.config import parse_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download

MICRO = {
    "seed": 3,
    "model": {"config": "micro-bert", "task": "seq-cls"},
    "data": {"source": "topics", "num_examples": 240, "eval_examples": 32, "max_length": 24, "alpha": 0.5},
    "federation": {"num_clients": 4, "clients_per_round": 3, "min_replies": 2},
    "algorithm": {"name": "lorafair", "local_steps": 3, "batch_size": 8, "lr": 5e-3},
    "lora": {"rank": 4, "alpha": 8.0},
}


def micro_config(*overrides):
    """The micro seq-cls config with ``key=value`` overrides."""
    return parse_config(MICRO, list(overrides))


class InProcessGrid:
    """What a strategy needs of a ``flwr.serverapp.Grid``: node ids and send_and_receive.

    Args:
        cfg: the config every node runs.
        handlers: optional ``{node id: fn(msg, context) -> Message}`` replacing a node's
            train and evaluate handlers (a misbehaving client).
        num_nodes: nodes in the grid (default ``num_clients``; a ``fedtune run`` simulation
            has ``federation.simulated_nodes``).
        run_dir: the run directory the LoRA handler keeps per-partition state in.
    """

    def __init__(self, cfg, handlers=None, num_nodes=None, run_dir=None):
        self.cfg = cfg
        self.handlers = handlers or {}
        self.run_dir = run_dir
        num = cfg.federation.num_clients if num_nodes is None else num_nodes
        self.node_ids = [101 + 7 * i for i in range(num)]  # not 0..n-1: ids are not partitions
        self.contexts = {
            node: Context(1, node, {"partition-id": i, "num-partitions": num}, RecordDict(), {})
            for i, node in enumerate(self.node_ids)
        }
        self.sent = []

    def get_node_ids(self):
        return list(self.node_ids)

    def _handle(self, msg):
        from fedtune.app.client_app import query
        from fedtune.client.centroids import answer_class_sums
        from fedtune.client.lora import evaluate_lora, train_lora
        from fedtune.client.zo_protocol import is_class_sums_query

        context = self.contexts[msg.metadata.dst_node_id]
        try:
            if msg.metadata.message_type == MessageType.QUERY:
                # the app reads the run's config from Flower's run config; this grid has it at hand
                return answer_class_sums(self.cfg, msg, context) if is_class_sums_query(msg) else query(msg, context)
            handler = self.handlers.get(msg.metadata.dst_node_id)
            if handler is not None:
                return handler(msg, context)
            if msg.metadata.message_type == MessageType.EVALUATE:
                return evaluate_lora(self.cfg, msg, context)
            return train_lora(self.cfg, msg, context, self.run_dir)
        except Exception as exc:  # noqa: BLE001 (any handler error becomes an error reply, as in Flower)
            return Message(Error(code=1, reason=f"{exc!r}\n{traceback.format_exc()}"), reply_to=msg)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent.extend(messages)
        return [self._handle(m) for m in messages]


def run_rounds(cfg, rounds):
    """``rounds`` rounds of a LoRA algorithm in process, every sampled client answering.

    Returns the global adapter before the first round, the strategy, and the records."""
    from fedtune.server.lora_strategy import FederatedLora

    strategy = FederatedLora(cfg)
    start = {n: t.clone() for n, t in strategy.state.items()}
    records = []
    strategy.start_rounds(InProcessGrid(cfg), rounds, records.append, connect_timeout=1)
    assert all(r["replies"] == cfg.federation.clients_per_round and r["rejected"] == 0 for r in records[1:])
    return start, strategy, records


def distance(a, b):
    """The Frobenius distance between two adapters (same names)."""
    return math.sqrt(sum(float(((a[n] - b[n]) ** 2).sum()) for n in a))


def fedavg_by_hand(cfg, start, *, lr, steps, client=False):
    """One round of ``cfg`` computed by hand: every partition's client takes ``steps`` SGD steps
    at ``lr`` from the global tensors ``start`` (the client's dropout masks and batches, as
    :class:`fedtune.lora.client.LoraClient` seeds them); ``client``: on the model a client runs
    (Offsite-Tuning: the emulator). Returns the clients' trained tensors and their example counts."""
    import torch

    from fedtune.data.batches import sample_batch
    from fedtune.lora.weights import trained_model
    from fedtune.rng import derive_seed
    from fedtune.rng.torch_backend import seeded_init
    from fedtune.workload import Workload, batch_loss

    workload = Workload(cfg)
    num = cfg.federation.num_clients
    trained, weights = [], []
    for partition in range(num):
        model, params = trained_model(workload, cfg, client=client)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(start[name])
        encoded = workload.encode([workload.examples[0][i] for i in workload.partition(partition, num)])
        rows = int(encoded["input_ids"].shape[0])
        seed = derive_seed(cfg.seed, "batch", 1, partition)
        model.train()
        with seeded_init(cfg.seed, "lora-dropout", 1, partition):  # the client's dropout masks
            for step in range(steps):
                batch = sample_batch(encoded, min(cfg.algorithm.batch_size, rows), seed=seed, step=step)
                grads = torch.autograd.grad(batch_loss(model, batch, torch.device("cpu")), list(params.values()))
                with torch.no_grad():
                    for p, g in zip(params.values(), grads):
                        p -= lr * g
        trained.append({n: p.detach().clone() for n, p in params.items()})
        weights.append(rows)
    return trained, weights

