"""FedOpt server optimizers on the aggregated LoRA update: FedAdam, FedYogi, FedAdagrad.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (https://arxiv.org/abs/2003.00295),
Algorithm 2. The round's FedIT mean minus the current global adapter is the pseudo-gradient
``d``; per tensor, with ``m = 0`` and ``v = tau^2`` at the start (the paper's ``v_{-1} >= tau^2``):

    m <- beta1 m + (1 - beta1) d
    v <- v + d^2                                        (FedAdagrad)
    v <- v - (1 - beta2) d^2 sign(v - d^2)              (FedYogi)
    v <- beta2 v + (1 - beta2) d^2                      (FedAdam)
    w <- w + server_lr m / (sqrt(v) + tau)

as in the paper, without Adam's bias correction. The optimizer's state lives on the server
for the run (LoRA runs do not resume). Written with tensor methods only, so this module
imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .registry import Algorithm, register

__all__ = ["FEDADAGRAD", "FEDADAM", "FEDYOGI", "FedOptConfig", "ServerAdaptive"]


@dataclass(frozen=True)
class FedOptConfig:
    """``[fedopt]``: the server optimizer of fedadam, fedyogi and fedadagrad."""

    server_lr: float = 1e-2  # eta, the server's step size
    beta1: float = 0.9  # momentum of the pseudo-gradient
    beta2: float = 0.99  # second-moment decay (FedAdam, FedYogi)
    tau: float = 1e-3  # adaptivity: larger is closer to server SGD with momentum


class ServerAdaptive:
    """One of Reddi et al.'s adaptive server optimizers, with its state across rounds.

    Args:
        kind: ``"adam"``, ``"yogi"`` or ``"adagrad"``.
        config: the ``[fedopt]`` section.
    """

    def __init__(self, kind: Literal["adam", "yogi", "adagrad"], config: FedOptConfig) -> None:
        self.kind = kind
        self.config = config
        self.m: dict[str, Any] = {}
        self.v: dict[str, Any] = {}

    def step(self, current: Mapping[str, Any], aggregate: Mapping[str, Any]) -> dict[str, Any]:
        """The next global state from the current one and the round's aggregate (same names)."""
        c = self.config
        out = {}
        for name, w in current.items():
            d = aggregate[name] - w
            if name not in self.m:
                self.m[name] = d * 0.0
                self.v[name] = d * 0.0 + c.tau**2
            m = self.m[name] = self.m[name] * c.beta1 + d * (1.0 - c.beta1)
            d2 = d * d
            v = self.v[name]
            if self.kind == "adagrad":
                v = v + d2
            elif self.kind == "yogi":
                v = v - (v - d2).sign() * d2 * (1.0 - c.beta2)
            else:
                v = v * c.beta2 + d2 * (1.0 - c.beta2)
            self.v[name] = v
            out[name] = w + m / (v.sqrt() + c.tau) * c.server_lr
        return out


def _check(cfg: Any) -> list[str]:
    c = cfg.section("fedopt")
    errors = []
    if not (math.isfinite(c.server_lr) and c.server_lr > 0):
        errors.append(f"`fedopt.server_lr` must be > 0, got {c.server_lr}")
    for key in ("beta1", "beta2"):
        value = getattr(c, key)
        if not 0 <= value < 1:
            errors.append(f"`fedopt.{key}` must be in [0, 1), got {value}")
    if not (math.isfinite(c.tau) and c.tau > 0):
        errors.append(f"`fedopt.tau` must be > 0, got {c.tau}")
    return errors


def _declare(kind: Literal["adam", "yogi", "adagrad"], title: str) -> Algorithm:
    return register(Algorithm(
        name=f"fed{kind}",
        family="lora",
        summary=f"federated LoRA with {title} on the server (FedOpt): FedIT's mean as the pseudo-gradient",
        # SecAgg+: the server optimizer steps from the securely summed mean, as it steps from
        # the clear one (tests/privacy/test_secagg_lora.py).
        features=frozenset({"secagg", "dp", "compress", "robust"}),
        rule="fedit",
        section=FedOptConfig,
        section_name="fedopt",
        check=_check,
        server_optimizer=lambda cfg: ServerAdaptive(kind, cfg.section("fedopt")),
    ))


FEDADAM = _declare("adam", "Adam")
FEDYOGI = _declare("yogi", "Yogi")
FEDADAGRAD = _declare("adagrad", "Adagrad")
