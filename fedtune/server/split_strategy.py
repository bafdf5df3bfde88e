"""Split federated prompt tuning (SFPrompt) as a Flower strategy on the Message API.

The server holds the whole frozen model: it runs blocks ``split.layer ..`` and the head for
the clients' split steps, and scores the whole model with the global prompt each round.
A round (:meth:`SplitPrompt.run_round`) is ``algorithm.local_steps + 1`` exchanges with
the sampled clients, all of them at once per step (:mod:`fedtune.client.split` has the
protocol): the server sends each client the prompt it steps from (and the gradient of its
previous step), and gets back its prompt and next activations; from those it computes the
loss and the gradient w.r.t. the activations (:meth:`SplitPrompt.server_step`). A client
that fails or sends something that does not fit is dropped for the rest of the round. The
last exchange brings the clients' final prompts, averaged (FedAvg, ``algorithm.weighting``)
into the next global prompt.

Every message's bytes are counted from the real messages (:func:`fedtune.wire.message_bytes`),
per client: the record's ``bytes_up_by_client`` / ``bytes_down_by_client`` map partition ids
to the round's bytes, beside the mean per sampled client.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedtune import wire
from fedtune.config import RunConfig
from fedtune.lora.factors import weighted_mean
from fedtune.lora.payload import pack, unpack
from fedtune.server.rounds import RoundLoop, RoundStats
from fedtune.split import ACTIVATIONS_NAME, GRADIENT_NAME, PROMPT_NAME
from fedtune.split.client import initial_prompt, split_run_key
from fedtune.split.model import PromptedClassifier, SplitModel
from fedtune.workload import Workload

__all__ = ["SplitPrompt", "SplitRoundStats"]

log = logging.getLogger(__name__)


@dataclass
class SplitRoundStats(RoundStats):
    """A split round's numbers: the common ones, per-client bytes and the local-loss phase's."""

    bytes_up_by_client: dict[int, int] = field(default_factory=dict)  # partition id -> bytes
    bytes_down_by_client: dict[int, int] = field(default_factory=dict)
    local_losses: list[float] = field(default_factory=list)  # each client's mean local loss
    kept_examples: list[int] = field(default_factory=list)  # each client's examples after pruning
    exchanges: int = 0  # step messages sent (each answered or counted failed)

    def as_metrics(self) -> dict[str, Any]:
        finite = [v for v in self.local_losses if math.isfinite(v)]
        return {
            **super().as_metrics(),
            "local_loss": sum(finite) / len(finite) if finite else math.nan,
            "kept_examples_per_client": sum(self.kept_examples) / len(self.kept_examples) if self.kept_examples
            else math.nan,
            "exchanges": self.exchanges,
            "bytes_up_by_client": {str(k): v for k, v in sorted(self.bytes_up_by_client.items())},
            "bytes_down_by_client": {str(k): v for k, v in sorted(self.bytes_down_by_client.items())},
        }


@dataclass
class _Client:
    """A sampled client's progress through the round."""

    node: int
    partition: int
    prompt: torch.Tensor  # (P, H): what it steps from next
    gradient: torch.Tensor | None = None  # d loss / d activations of its last step
    weight: float = 0.0  # set by its final reply
    done: bool = False


class SplitPrompt(RoundLoop):
    """Server side of split-prompt.

    Args:
        cfg: the run's configuration (``algorithm.name = "split-prompt"``).
        run_dir: unused (no DP ledger: split-prompt declares no privacy feature).
    """

    def __init__(self, cfg: RunConfig, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.section = cfg.section("split")
        self.workload = Workload(cfg)
        self.split = SplitModel(self.workload.build_model(), self.section.layer)
        self.prompt = initial_prompt(cfg, self.workload, self.split)  # the global prompt, (P, H) float32 CPU
        self.run_key = split_run_key(cfg)
        self.partitions: dict[int, int] = {}
        self.state_round = 0  # no resume: every run starts fresh

    def summary(self) -> None:
        a, f, c = self.cfg.algorithm, self.cfg.federation, self.section
        blocks = len(self.split.blocks)
        log.info(
            "split-prompt: clients run blocks 0-%d of %d and a %d-vector prompt (%d parameters, %s init); "
            "the server runs blocks %d-%d and the frozen head; per round %d local-loss steps, then %d split "
            "steps x batch %d, lr %g, on the %g of each client's examples EL2N keeps; %d of %d clients per round",
            c.layer - 1, blocks, c.prompt_length, self.prompt.numel(), c.prompt_init, c.layer, blocks - 1,
            c.local_loss_steps, a.local_steps, a.batch_size, a.lr, c.keep_fraction, f.clients_per_round,
            f.num_clients,
        )

    def evaluate(self) -> dict[str, float]:
        """The whole model with the global prompt (the unsplit forward) on the held-out set."""
        return self.workload.evaluate(PromptedClassifier(self.split, self.prompt))

    def messages_to(self, server_round: int, node_ids: Sequence[int], message_type: str) -> list[Message]:
        """Step 0 of ``server_round`` to each node: the global prompt (federated evaluation is
        refused by the config, so ``message_type`` is train)."""
        return [self._step_message(server_round, 0, _Client(n, self.partitions.get(n, -1), self.prompt), message_type)
                for n in node_ids]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Step 0 of ``server_round`` to the round's sample (Flower's interface; :meth:`run_round` drives the steps)."""
        return self.messages_to(server_round, self.sample(grid, server_round), MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Not a one-exchange round: a split round's replies are steps, folded in by :meth:`run_round`."""
        raise NotImplementedError("split-prompt rounds are driven by SplitPrompt.run_round, one exchange per step")

    def _step_message(self, server_round: int, step: int, client: _Client,
                      message_type: str = MessageType.TRAIN) -> Message:
        content = RecordDict({
            wire.CONFIG: _config(server_round, step, self.run_key),
            wire.PROMPT: pack({PROMPT_NAME: client.prompt}),
        })
        if client.gradient is not None:
            content[wire.GRADIENT] = pack({GRADIENT_NAME: client.gradient})
        return self.tag(Message(content, dst_node_id=client.node, message_type=message_type))

    def server_step(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The server's half of a split step: blocks ``layer ..`` and the head on a client's
        activations ``hidden`` ``(B, P+T, H)`` (tokens' mask ``(B, T)``, labels ``(B,)``); returns
        the mean cross-entropy and its gradient w.r.t. ``hidden`` (float32, ``hidden``'s shape).
        A non-finite loss gives a zero gradient (the client's step changes nothing)."""
        device = self.workload.device
        hidden = hidden.to(device).requires_grad_(True)
        logits = self.split.top(hidden, attention_mask.to(device))
        loss = torch.nn.functional.cross_entropy(logits.float(), labels.to(device))
        if not torch.isfinite(loss):
            return float(loss.detach()), torch.zeros(hidden.shape)
        (grad,) = torch.autograd.grad(loss, hidden)
        return float(loss.detach()), grad.float().cpu()

    def _activations(self, reply: Message, prompt_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A reply's activations, tokens' mask and labels, checked against the run's sizes.

        Raises:
            WireError, KeyError, TypeError: on a record that is missing or does not fit.
        """
        record = wire.record(reply.content, wire.ACTIVATIONS)
        labels, mask = record.get(wire.LABELS), record.get(wire.MASK)
        if not isinstance(labels, list) or not isinstance(mask, list):
            raise wire.WireError(f"{wire.ACTIVATIONS!r} must hold int lists {wire.LABELS!r} and {wire.MASK!r}")
        rows = len(labels)
        if not 1 <= rows <= self.cfg.algorithm.batch_size or len(mask) % rows:
            raise wire.WireError(f"a batch of {rows} labels and {len(mask)} mask values: expected 1 to "
                                 f"algorithm.batch_size = {self.cfg.algorithm.batch_size} rows of equal length")
        tokens = len(mask) // rows
        if not 1 <= tokens <= self.cfg.data.max_length:
            raise wire.WireError(f"rows of {tokens} tokens; expected 1 to data.max_length = {self.cfg.data.max_length}")
        classes = int(self.split.model.config.num_labels)
        if not all(isinstance(y, int) and 0 <= y < classes for y in labels) or any(v not in (0, 1) for v in mask):
            raise wire.WireError(f"labels must be in [0, {classes}) and mask values 0 or 1")
        shape = (rows, prompt_length + tokens, self.split.hidden_size)
        hidden = unpack(record, {ACTIVATIONS_NAME: shape}, "the client's activations",
                        max_bytes=self.max_bytes)[ACTIVATIONS_NAME]
        return hidden, torch.tensor(mask, dtype=torch.long).view(rows, tokens), torch.tensor(labels, dtype=torch.long)

    def run_round(self, grid: Grid, server_round: int) -> dict[str, Any]:
        """One round: ``algorithm.local_steps + 1`` exchanges with the sampled clients, then FedAvg of their prompts."""
        stats = SplitRoundStats()
        nodes = self.sample(grid, server_round)
        stats.sampled = len(nodes)
        clients = {n: _Client(n, self.partitions.get(n, -1), self.prompt) for n in nodes}
        steps, shape = self.cfg.algorithm.local_steps, tuple(self.prompt.shape)
        for client in clients.values():
            stats.bytes_up_by_client[client.partition] = stats.bytes_down_by_client[client.partition] = 0
        losses: list[float] = []
        for step in range(steps + 1):
            active = [c for c in clients.values() if not c.done]
            if not active:
                break
            messages = [self._step_message(server_round, step, c) for c in active]
            for message, client in zip(messages, active, strict=True):
                sent = wire.message_bytes(message, downlink=True)
                stats.bytes_down += sent
                stats.bytes_down_by_client[client.partition] += sent
            stats.exchanges += len(messages)
            replies = {r.metadata.src_node_id: r for r in
                       grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout_s)}
            for client in active:
                reply = replies.get(client.node)
                if reply is None:  # no reply in time: out of the round
                    stats.failed += 1
                    client.done = True
                    continue
                received = wire.message_bytes(reply, downlink=False)
                stats.bytes_up += received
                stats.bytes_up_by_client[client.partition] += received
                if self.failed(reply, stats):
                    client.done = True
                    continue
                try:
                    client.prompt = unpack(reply.content[wire.PROMPT], {PROMPT_NAME: shape},
                                           f"the prompt of client {client.node}")[PROMPT_NAME]
                    if step == 0:
                        metrics: Any = reply.content[wire.METRICS]
                        stats.local_losses.append(wire.read_float(metrics, wire.LOCAL_LOSS))
                        stats.kept_examples.append(wire.read_int(metrics, wire.KEPT_EXAMPLES))
                        stats.skipped_steps += wire.read_int(metrics, wire.SKIPPED_STEPS)
                    if step < steps:
                        hidden, mask, labels = self._activations(reply, shape[0])
                        loss, client.gradient = self.server_step(hidden, mask, labels)
                        losses.append(loss)
                        stats.skipped_steps += not math.isfinite(loss)
                    else:
                        client.weight = self.weight_of(reply.content[wire.METRICS])
                        client.done = True
                except (KeyError, TypeError, ValueError) as exc:  # wire.WireError is a ValueError
                    stats.rejected += 1
                    client.done, client.weight = True, 0.0
                    log.warning("rejected step %d of client %s: %s", step, client.node, exc)
        finals = sorted((c for c in clients.values() if c.weight > 0), key=lambda c: (c.partition, c.node))
        stats.replies = len(finals)
        finite = [v for v in losses if math.isfinite(v)]
        if finite:  # the split steps' losses, as the server computed them (one weight per step)
            stats.train_losses.append((1.0, sum(finite) / len(finite)))
        if self.enough(server_round, len(finals), "prompt"):  # FedAvg, summed in float64 in partition order
            self.prompt = weighted_mean([(c.weight, {PROMPT_NAME: c.prompt}) for c in finals], [PROMPT_NAME])[PROMPT_NAME]
        return stats.as_metrics()


def _config(server_round: int, step: int, run_key: str) -> ConfigRecord:
    return ConfigRecord({wire.ROUND: server_round, wire.STEP: step, wire.RUN_KEY: run_key})
