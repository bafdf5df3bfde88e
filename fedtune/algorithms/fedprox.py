"""FedProx for LoRA clients: local training with a proximal term, FedIT's aggregation.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020
(https://arxiv.org/abs/1812.06127). Each client minimises its loss plus
``(mu / 2) * ||w - w_global||^2`` over the tensors it trains (the adapter's factors and a
seq-cls head), which keeps skewed clients near the round's global adapter; the server
averages as FedIT does. ``mu = 0`` is FedIT exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .registry import Algorithm, ClientLoss, register

__all__ = ["FEDPROX", "FedProxConfig", "proximal_term"]


@dataclass(frozen=True)
class FedProxConfig:
    """``[fedprox]``."""

    mu: float = 0.01  # weight of the proximal term (mu / 2) ||w - w_global||^2; 0 = FedIT


def proximal_term(mu: float, params: Mapping[str, Any], anchors: Mapping[str, Any]) -> Any:
    """``(mu / 2) * sum ||p - anchor||^2`` over ``params`` (tensors; anchors hold no gradient)."""
    total = sum(((p - anchors[name]) ** 2).sum() for name, p in params.items())
    return 0.5 * mu * total


def _client_loss(cfg: Any) -> ClientLoss | None:
    mu = cfg.section("fedprox").mu
    if mu == 0:
        return None  # FedIT exactly: not even a zero added to the loss

    def term(params: Mapping[str, Any], anchors: Mapping[str, Any]) -> Any:
        return proximal_term(mu, params, anchors)

    return term


def _check(cfg: Any) -> list[str]:
    mu = cfg.section("fedprox").mu
    return [] if math.isfinite(mu) and mu >= 0 else [f"`fedprox.mu` must be >= 0, got {mu}"]


FEDPROX = register(Algorithm(
    name="fedprox",
    family="lora",
    summary="federated LoRA with a proximal term in the clients' loss (FedProx), FedIT's mean",
    features=frozenset({"secagg", "dp", "compress", "robust", "trainable"}),
    rule="fedit",
    section=FedProxConfig,
    section_name="fedprox",
    check=_check,
    client_loss=_client_loss,
))
