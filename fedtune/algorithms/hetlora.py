"""Heterogeneous-rank federated LoRA: each client trains an adapter of its own rank.

HetLoRA-style zero-padding (Cho et al., EMNLP 2024) with per-slice means; the rule, its
rank self-pruning and the reasons for choosing it over FlexLoRA and FLoRA are in
:mod:`fedtune.lora.hetlora`. A client's starting rank comes from the config: the client of
partition ``p`` trains rank ``ranks[p % len(ranks)]`` (e.g. ``[2, 4, 8]``: a third of the
clients each), never above ``lora.rank``, the global adapter's. With ``prune`` a client may
shrink its rank after its local steps; the server keeps the rank it reports for its next
rounds. Under SecAgg+ the clients' zero-padded updates are summed (the ranks, as the
example counts, travel in clear).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .registry import Algorithm, RankPruner, register

__all__ = ["HETLORA", "HetLoraConfig", "client_rank", "pruned_rank"]


@dataclass(frozen=True)
class HetLoraConfig:
    """``[hetlora]``."""

    ranks: tuple[int, ...] = ()  # client of partition p trains ranks[p % len(ranks)]; empty = lora.rank for all
    prune: bool = False  # rank self-pruning after each client's local steps (pruned_rank below)
    prune_gamma: float = 0.75  # decay factor in (0, 1): a pruning rank-r client keeps floor(gamma r) slices
    prune_threshold: float = 0.1  # prune when the dropped slices' norm is <= this x the kept slices'
    min_rank: int = 1  # no client prunes below this rank


def client_rank(cfg: Any, partition_id: int) -> int:
    """The rank the client of ``partition_id`` trains before any pruning."""
    ranks = cfg.section("hetlora").ranks
    return int(ranks[partition_id % len(ranks)]) if ranks else int(cfg.lora.rank)


_A, _B = ".lora_A.weight", ".lora_B.weight"  # PEFT's factor names (fedtune.lora.factors)


def _product_norm2(a: Any, b: Any) -> float:
    """``‖B A‖_F²`` as ``Σ (BᵀB) ⊙ (A Aᵀ)``: r×r products, never the d×k one (float64)."""
    a, b = a.double(), b.double()
    return float(((b.T @ b) * (a @ a.T)).sum())


def pruned_rank(state: Mapping[str, Any], rank: int, gamma: float, threshold: float, min_rank: int) -> int:
    """The rank a client keeps after its local steps (HetLoRA's rank self-pruning, as
    :mod:`fedtune.lora.hetlora` describes it). Tensor methods only: this module imports no torch.

    Args:
        state: its trained uplink tensors, factors cut to ``rank`` (``A`` ``(rank, k)``,
            ``B`` ``(d, rank)``), by PEFT name.
        rank: the rank it trained.
        gamma: the decay factor in (0, 1): a pruning client keeps ``floor(gamma * rank)``
            slices (at least one fewer than ``rank``, at least ``min_rank``).
        threshold: prune when the dropped slices' product norm ``‖B[:, r':] A[r':]‖_F`` (all
            modules) is at most ``threshold`` times the kept slices' (0: only slices that carry nothing).
        min_rank: the smallest rank a client prunes to.

    Returns:
        ``rank``, or the smaller rank to keep.
    """
    keep = max(min_rank, min(rank - 1, math.floor(gamma * rank)))
    if keep >= rank:
        return rank
    dropped = kept = 0.0
    for name in sorted(n for n in state if n.endswith(_A)):
        a, b = state[name], state[name[: -len(_A)] + _B]
        dropped += _product_norm2(a[keep:rank], b[:, keep:rank])
        kept += _product_norm2(a[:keep], b[:, :keep])
    return keep if math.sqrt(dropped) <= threshold * math.sqrt(kept) else rank


def _pruner(cfg: Any) -> RankPruner | None:
    c = cfg.section("hetlora")
    if not c.prune:
        return None

    def prune(state: Mapping[str, Any], rank: int) -> int:
        return pruned_rank(state, rank, c.prune_gamma, c.prune_threshold, c.min_rank)

    return prune


def _check(cfg: Any) -> list[str]:
    c = cfg.section("hetlora")
    errors = []
    bad = [r for r in c.ranks if not 1 <= r <= cfg.lora.rank]
    if bad:
        errors.append(f"`hetlora.ranks` must each be in [1, lora.rank={cfg.lora.rank}] (the global adapter's "
                      f"rank), got {list(c.ranks)}")
    if not 0 < c.prune_gamma < 1:
        errors.append(f"`hetlora.prune_gamma` must be in (0, 1) (a pruning rank-r client keeps floor(gamma r) "
                      f"slices), got {c.prune_gamma}")
    if not (math.isfinite(c.prune_threshold) and c.prune_threshold >= 0):
        errors.append(f"`hetlora.prune_threshold` must be a finite number >= 0, got {c.prune_threshold}")
    if not 1 <= c.min_rank <= cfg.lora.rank:
        errors.append(f"`hetlora.min_rank` must be in [1, lora.rank={cfg.lora.rank}], got {c.min_rank}")
    return errors


HETLORA = register(Algorithm(
    name="hetlora",
    family="lora",
    summary="federated LoRA with a rank per client (HetLoRA zero-padding, per-slice means, rank self-pruning)",
    # SecAgg+: the clients' updates zero-padded to lora.rank, summed (tests/privacy/test_secagg_lora.py)
    features=frozenset({"secagg", "compress"}),
    rule="hetlora",
    section=HetLoraConfig,
    section_name="hetlora",
    check=_check,
    client_rank=client_rank,
    rank_pruner=_pruner,
))
