"""Heterogeneous-rank federated LoRA: each client trains an adapter of its own rank.

HetLoRA-style zero-padding (Cho et al., EMNLP 2024) with per-slice means; the rule and the
reasons for choosing it over FlexLoRA and FLoRA are in :mod:`fedtune.lora.hetlora`. A
client's rank comes from the config: the client of partition ``p`` trains rank
``ranks[p % len(ranks)]`` (e.g. ``[2, 4, 8]``: a third of the clients each), never above
``lora.rank``, the global adapter's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .registry import Algorithm, register

__all__ = ["HETLORA", "HetLoraConfig", "client_rank"]


@dataclass(frozen=True)
class HetLoraConfig:
    """``[hetlora]``."""

    ranks: tuple[int, ...] = ()  # client of partition p trains ranks[p % len(ranks)]; empty = lora.rank for all


def client_rank(cfg: Any, partition_id: int) -> int:
    """The rank the client of ``partition_id`` trains."""
    ranks = cfg.section("hetlora").ranks
    return int(ranks[partition_id % len(ranks)]) if ranks else int(cfg.lora.rank)


def _check(cfg: Any) -> list[str]:
    ranks = cfg.section("hetlora").ranks
    bad = [r for r in ranks if not 1 <= r <= cfg.lora.rank]
    if bad:
        return [(f"`hetlora.ranks` must each be in [1, lora.rank={cfg.lora.rank}] (the global adapter's rank), "
                 f"got {list(ranks)}")]
    return []


HETLORA = register(Algorithm(
    name="hetlora",
    family="lora",
    summary="federated LoRA with a rank per client (HetLoRA zero-padding, per-slice means)",
    features=frozenset({"compress"}),
    rule="hetlora",
    section=HetLoraConfig,
    section_name="hetlora",
    check=_check,
    client_rank=client_rank,
))
