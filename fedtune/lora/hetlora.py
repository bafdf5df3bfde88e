"""Heterogeneous-rank LoRA: clients train adapters of their own rank (after HetLoRA).

Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models",
EMNLP 2024 (https://arxiv.org/abs/2401.06432). The global adapter has the largest rank R
(``lora.rank``). A client of rank ``r <= R`` trains the first ``r`` rank slices (rows of
``A``, columns of ``B``): the global adapter is truncated to them when it starts, and it
uploads only them (``r / R`` of the factors' bytes). The server pads each update back to
``R`` and takes FedIT's weighted mean. HetLoRA pads with zeros; fedtune pads with the
**global adapter's own slices** (a client leaves the slices it did not train as they were),
so a slice trained by a share ``s`` of the weight moves by ``s`` times its trainers' mean
update, as in FedAvg over updates, and a slice nobody trained keeps its value. Measured
(bench/lora_rules.py, topics, Dirichlet(0.1), 10 rounds, one seed, ranks 2/4/8 under R = 8):
zero-padding with each slice renormalised over its trainers gave an aggregation bias of
1.42 (products ~3x too large on the slices only rank-8 clients train); this rule gives
0.059 (FedIT: 0.062), at 0.59 of FedIT's upload. Both ended below FedIT's accuracy there
(last-3-round mean 49.3 % and 45.4 % against 66.5 %; one seed of a noisy setting, not a
ranking). With every client at rank R it is FedIT exactly.

Chosen over FlexLoRA's SVD redistribution (Bai et al., NeurIPS 2024) because it keeps the
factor payloads and is a weighted sum (what secure aggregation delivers; the padding is the
public global adapter), and over FLoRA's stacking (Wang et al., NeurIPS 2024), whose global
rank grows every round. Not included: HetLoRA's sparsity-weighted aggregation (its weights
need each client's product norm, which a secure sum does not give).

**Rank self-pruning** (HetLoRA Sec. 3, optional: ``[hetlora] prune``). After its local steps
a client of rank ``r`` may shrink to ``r' = max(min_rank, min(r - 1, floor(gamma r)))`` when
the slices it would drop carry little of its adapter: per module ``ΔW = B A``, pruning when

    ‖B[:, r':r] A[r':r]‖_F <= threshold · ‖B[:, :r'] A[:r']‖_F     (summed over modules)

(:func:`fedtune.algorithms.hetlora.pruned_rank`). It then sends only its first ``r'``
slices, so the rule above counts the slices it dropped as left at the global adapter's
value, and it trains ``r'`` from then on. HetLoRA too decides on the norm of the slices it
would drop; fedtune compares it with the kept slices' of the same round, so that a client
needs no state between rounds (a simulation's node plays another client next round): the
server keeps every partition's rank and names it in the partition's train message.

**Under SecAgg+** a client sends its update zero-padded to rank R (:func:`pad`): the
weighted mean of those vectors, added to the global adapter, is this rule's result, since a
slice a client did not train adds its weight times the global slice to the mean, which is
the global slice plus zero change.

The zeroed slices stay zero while a client trains: with both factors of a slice zero, both
of their gradients are zero (a product's gradient needs the other factor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .factors import Update, aggregation_bias, factor_pairs, is_factor_a, weighted_mean
from .rules import Aggregate, LoraRule, register_rule

__all__ = ["HetLora", "pad", "rank_of_update", "truncate", "zero_beyond"]

_B_SUFFIX = ".lora_B.weight"


def _is_factor_b(name: str) -> bool:
    return name.endswith(_B_SUFFIX)


def truncate(state: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The first ``rank`` slices of every factor (``A[:rank]``, ``B[:, :rank]``); other tensors as they are."""
    out = {}
    for name, t in state.items():
        if is_factor_a(name):
            out[name] = t[:rank]
        elif _is_factor_b(name):
            out[name] = t[:, :rank]
        else:
            out[name] = t
    return out


def zero_beyond(params: Mapping[str, torch.Tensor], rank: int) -> None:
    """In place: every factor's slices from ``rank`` on set to zero (a rank-``rank`` client's adapter)."""
    with torch.no_grad():
        for name, t in params.items():
            if is_factor_a(name):
                t[rank:] = 0
            elif _is_factor_b(name):
                t[:, rank:] = 0


def rank_of_update(state: Mapping[str, torch.Tensor]) -> int:
    """The rank a (truncated) update was trained at: the rows of its ``A`` factors (all equal)."""
    ranks = {int(t.shape[0]) for n, t in state.items() if is_factor_a(n)}
    if len(ranks) != 1:
        raise ValueError(f"an update's lora_A factors must share one rank, got {sorted(ranks)}")
    return ranks.pop()


def pad(state: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A truncated ``state`` at ``current``'s rank: the slices it lacks are ``current``'s (float32).

    ``current`` the global adapter: an update as the rule counts it; zeros: the update
    zero-padded, as a client sends it under SecAgg+. Other tensors are ``state``'s.
    """
    out = {}
    for name, now in current.items():
        t = state[name]
        padded = now.detach().float().clone()
        if is_factor_a(name):
            padded[: t.shape[0]] = t
        elif _is_factor_b(name):
            padded[:, : t.shape[1]] = t
        else:
            padded = t
        out[name] = padded
    return out


@register_rule("hetlora")
class HetLora(LoraRule):
    """FedIT's weighted mean of updates padded with the global adapter's slices (see the module)."""

    def aggregate(self, updates: Sequence[Update], current: Mapping[str, torch.Tensor]) -> Aggregate:
        full_rank = rank_of_update(current)
        ranks = [rank_of_update(state) for _, state in updates]
        if max(ranks) > full_rank:
            raise ValueError(f"an update of rank {max(ranks)} is above the global adapter's {full_rank}")
        padded: list[Update] = [(w, pad(state, current)) for w, state in updates]
        state = weighted_mean(padded, current.keys())
        bias = aggregation_bias(padded, state, factor_pairs(current))
        return Aggregate(state, bias_before=bias, bias_after=bias)
