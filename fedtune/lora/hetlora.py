"""Heterogeneous-rank LoRA (HetLoRA-style zero-padding): clients train adapters of their own rank.

Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models",
EMNLP 2024 (https://arxiv.org/abs/2401.06432). The global adapter has the largest rank R
(``lora.rank``). A client of rank ``r <= R`` trains the first ``r`` rank slices (rows of
``A``, columns of ``B``): the global adapter is truncated to them when it starts, and it
uploads only them (``r / R`` of the factors' bytes). The server zero-pads each update back
to ``R`` and averages **every rank slice over the clients that trained it** (their weights
renormalised), so a slice only large-rank clients hold is not diluted by the others'
zeros; a slice nobody trained this round keeps its global value. Tensors outside the LoRA
factors (a seq-cls head) are averaged over everyone.

Chosen over FlexLoRA's SVD redistribution (Bai et al., NeurIPS 2024) because it keeps the
factor payloads and is a sum of weighted vectors with public per-slice weights (what
secure aggregation delivers), and over FLoRA's stacking (Wang et al., NeurIPS 2024), whose
global rank grows every round. Not included: HetLoRA's rank self-pruning and
sparsity-weighted aggregation.

The zeroed slices stay zero while a client trains: with both factors of a slice zero, both
of their gradients are zero (a product's gradient needs the other factor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .factors import Update, aggregation_bias, factor_pairs, is_factor_a, normalised_weights
from .rules import Aggregate, LoraRule, register_rule

__all__ = ["HetLora", "rank_of_update", "truncate", "zero_beyond"]

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


def _pad(state: Mapping[str, torch.Tensor], full: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in state.items():
        padded = torch.zeros(full[name].shape, dtype=t.dtype)
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
    """Per-slice weighted means of zero-padded updates of different ranks (see the module)."""

    def aggregate(self, updates: Sequence[Update], current: Mapping[str, torch.Tensor]) -> Aggregate:
        full_rank = rank_of_update(current)
        ranks = [rank_of_update(state) for _, state in updates]
        if max(ranks) > full_rank:
            raise ValueError(f"an update of rank {max(ranks)} is above the global adapter's {full_rank}")
        padded = [(w, _pad(state, current)) for w, state in updates]
        weights = [w for w, _ in updates]
        state: dict[str, torch.Tensor] = {}
        for name, now in current.items():
            if name not in padded[0][1]:
                state[name] = now.float()
                continue
            total = torch.zeros(now.shape, dtype=torch.float64)
            if is_factor_a(name) or _is_factor_b(name):
                covered = torch.zeros(full_rank, dtype=torch.float64)  # Σ w_k over clients with rank > i
                for w, r, (_, s) in zip(weights, ranks, padded):
                    total += w * s[name].double()
                    covered[:r] += w
                shape = (-1, 1) if is_factor_a(name) else (1, -1)
                mean = total / covered.clamp(min=1e-300).reshape(shape)
                kept = (covered == 0).reshape(shape).expand_as(mean)
                mean[kept] = now.double()[kept]  # a slice nobody trained keeps its value
            else:
                for p, (_, s) in zip(normalised_weights(updates), padded):
                    total += p * s[name].double()
                mean = total
            state[name] = mean.float()
        bias = aggregation_bias(padded, state, factor_pairs(current))
        return Aggregate(state, bias_before=bias, bias_after=bias)
