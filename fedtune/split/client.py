"""A split-prompt client's work: its pruned data, local-loss steps, and the two halves of a
split step (forward to the cut; the server's gradient back into the prompt).

A client keeps nothing between messages that it could not rebuild: each step message
brings the prompt to step from, and the client recomputes the (deterministic, eval-mode)
forward of its previous step to apply the gradient the server sent for it. What it caches
(the model, a partition's pruned, encoded examples) is process memory keyed by what
determines it, rebuilt on a miss: in Flower's simulation engine the next message of a
round may run in another worker process.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import torch

from fedtune.config import RunConfig
from fedtune.data.batches import sample_batch
from fedtune.data.tokenizer import SPECIAL_TOKENS
from fedtune.lru import LRU, PARTITION_CACHE
from fedtune.rng import derive_seed, generator
from fedtune.workload import Workload

from .model import SplitModel, el2n_scores

__all__ = ["LocalReport", "SplitClient", "client_for", "initial_prompt", "split_run_key"]

log = logging.getLogger(__name__)

_INIT_EXAMPLES = 256  # training examples whose tokens the "vocab" prompt init draws from


def split_run_key(cfg: RunConfig) -> str:
    """What must match between a client and the server: model, data, seed, algorithm and its settings."""
    text = repr((cfg.seed, cfg.model, cfg.data, cfg.algorithm, cfg.section("split")))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def initial_prompt(cfg: RunConfig, workload: Workload, split: SplitModel) -> torch.Tensor:
    """The round-1 global prompt, ``(P, H)`` float32: every party computes the same one.

    ``split.prompt_init = "vocab"``: the input embeddings of ``P`` tokens drawn (seeded by
    ``(seed, "split-prompt-init")``) from the non-special tokens of the first training
    examples, as Lester et al. 2021 (https://arxiv.org/abs/2104.08691, sec. 3.2 and fig. 3)
    initialise from real vocabulary, which trained better than random vectors there: the
    frozen model starts from inputs of the scale and kind it was trained on. ``"zeros"``:
    zero vectors. Either way the prompt's positions are attended, so round 0 scores the
    frozen model *with* the initial prompt, not the model without one (MiniLM on the topic
    task, measured: accuracy 0.85 with either init, 0.93 without a prompt).
    """
    c = cfg.section("split")
    if c.prompt_init == "zeros":
        return torch.zeros(c.prompt_length, split.hidden_size)
    tokenizer = workload.tokenizer
    special = set(getattr(tokenizer, "all_special_ids", None) or range(len(SPECIAL_TOKENS)))
    encoded = workload.encode(workload.examples[0][:_INIT_EXAMPLES])
    seen = encoded["input_ids"][encoded["attention_mask"].bool()].unique().tolist()
    ids = [i for i in seen if i not in special]
    picks = generator(cfg.seed, "split-prompt-init").choice(len(ids), c.prompt_length,
                                                             replace=len(ids) < c.prompt_length)
    token_ids = torch.tensor([ids[int(k)] for k in picks], dtype=torch.long)
    with torch.no_grad():
        return split.embeddings(token_ids).detach().float().clone()


@dataclass(frozen=True)
class LocalReport:
    """What a client's local-loss phase did."""

    prompt: torch.Tensor  # (P, H) float32, after the steps
    mean_loss: float  # over the steps taken (nan if none)
    skipped: int  # steps skipped for a non-finite loss


class SplitClient:
    """The process-wide split-prompt client of one run.

    Args:
        cfg: the run's config (``algorithm.name = "split-prompt"``).
    """

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.key = split_run_key(cfg)
        self.section = cfg.section("split")
        self.workload = Workload(cfg)
        self.split = SplitModel(self.workload.build_model(), self.section.layer)
        self.device = self.workload.device
        self._initial: torch.Tensor | None = None
        self._partitions: LRU[tuple[int, int], dict[str, torch.Tensor]] = LRU(PARTITION_CACHE)

    @property
    def initial(self) -> torch.Tensor:
        if self._initial is None:
            self._initial = initial_prompt(self.cfg, self.workload, self.split)
        return self._initial

    @property
    def prompt_shape(self) -> tuple[int, int]:
        return self.section.prompt_length, self.split.hidden_size

    def data(self, partition_id: int, num_partitions: int) -> dict[str, torch.Tensor]:
        """The partition's examples EL2N pruning keeps, encoded; cached, rebuilt identically on a miss."""

        def build() -> dict[str, torch.Tensor]:
            indices = self.workload.partition(partition_id, num_partitions)
            train = self.workload.examples[0]
            encoded = self.workload.encode([train[i] for i in indices])
            return self._prune(encoded)

        return self._partitions.get_or_build((partition_id, num_partitions), build)

    @torch.no_grad()
    def _prune(self, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``split.keep_fraction`` of ``encoded``'s rows with the highest EL2N under the initial
        model's local path (ties: the earlier row), in their original order; at least one row."""
        n = int(encoded["input_ids"].shape[0])
        keep = max(1, math.ceil(self.section.keep_fraction * n))
        if keep >= n:
            return encoded
        prompt, scores = self.initial.to(self.device), []
        for start in range(0, n, self.cfg.eval.batch_size):
            batch = {k: v[start : start + self.cfg.eval.batch_size].to(self.device) for k, v in encoded.items()}
            hidden = self.split.bottom(prompt, batch["input_ids"], batch["attention_mask"])
            scores.append(el2n_scores(self.split.local_logits(hidden, batch["attention_mask"]), batch["labels"]).cpu())
        order = torch.sort(-torch.cat(scores), stable=True).indices[:keep]
        rows = torch.sort(order).values
        return {k: v[rows] for k, v in encoded.items()}

    def batch(self, round: int, partition_id: int, num_partitions: int, step: int) -> dict[str, torch.Tensor]:
        """Split step ``step``'s batch: seeded by ``(seed, "batch", round, partition)`` and the step."""
        return self._batch("batch", round, partition_id, num_partitions, step)

    def _batch(self, stream: str, round: int, partition_id: int, num_partitions: int, step: int) -> dict[str, torch.Tensor]:
        encoded = self.data(partition_id, num_partitions)
        size = min(self.cfg.algorithm.batch_size, int(encoded["input_ids"].shape[0]))
        batch = sample_batch(encoded, size, seed=derive_seed(self.cfg.seed, stream, round, partition_id), step=step)
        return {k: v.to(self.device) for k, v in batch.items()}

    def num_examples(self, partition_id: int, num_partitions: int) -> int:
        """The partition's size before pruning: its FedAvg weight."""
        return len(self.workload.partition(partition_id, num_partitions))

    def kept_examples(self, partition_id: int, num_partitions: int) -> int:
        return int(self.data(partition_id, num_partitions)["input_ids"].shape[0])

    def local_steps(self, prompt: torch.Tensor, round: int, partition_id: int, num_partitions: int) -> LocalReport:
        """``split.local_loss_steps`` SGD steps on the local loss (the head on the client's own
        activations), batches seeded by ``(seed, "split-local", round, partition)``."""
        prompt, losses, skipped = prompt.to(self.device), [], 0
        for step in range(self.section.local_loss_steps):
            batch = self._batch("split-local", round, partition_id, num_partitions, step)
            p = prompt.detach().requires_grad_(True)
            hidden = self.split.bottom(p, batch["input_ids"], batch["attention_mask"])
            logits = self.split.local_logits(hidden, batch["attention_mask"])
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
            if not torch.isfinite(loss):
                skipped += 1
                continue
            (grad,) = torch.autograd.grad(loss, p)
            prompt = (p - self.cfg.algorithm.lr * grad).detach()
            losses.append(float(loss.detach()))
        if skipped:
            log.warning("round %d, partition %d: %d local-loss step(s) skipped for a non-finite loss",
                        round, partition_id, skipped)
        mean = sum(losses) / len(losses) if losses else math.nan
        return LocalReport(prompt.detach().float().cpu(), mean, skipped)

    def forward(self, prompt: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The activations at the cut, ``(B, P+T, H)`` float32, for the server."""
        with torch.no_grad():
            hidden = self.split.bottom(prompt.to(self.device), batch["input_ids"], batch["attention_mask"])
        return hidden.float().cpu()

    def step(self, prompt: torch.Tensor, batch: dict[str, torch.Tensor], gradient: torch.Tensor) -> torch.Tensor:
        """One SGD step of the prompt from the server's ``gradient`` of the loss w.r.t. this
        batch's activations: the forward recomputed, the gradient backpropagated into the prompt."""
        p = prompt.to(self.device).detach().requires_grad_(True)
        hidden = self.split.bottom(p, batch["input_ids"], batch["attention_mask"])
        (grad,) = torch.autograd.grad(hidden, p, grad_outputs=gradient.to(self.device, hidden.dtype))
        return (p - self.cfg.algorithm.lr * grad).detach().float().cpu()


_clients: LRU[str, SplitClient] = LRU(1)  # one run per process at a time


def client_for(cfg: RunConfig) -> SplitClient:
    """This process's client for ``cfg``'s run, built on first use; another run's is dropped first."""
    return _clients.get_or_build(split_run_key(cfg), lambda: SplitClient(cfg))
