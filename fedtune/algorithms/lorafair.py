"""LoRA-FAIR: FedIT plus a server-side correction of B towards the true mean product (:mod:`fedtune.lora.fair`).

Bian et al., "LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and Initialization
Refinement", ICCV 2025. Under SecAgg+ or DP it runs from weighted sums only
(``lora.two_phase``): the one-phase solve needs each client's factors.
"""

from __future__ import annotations

from typing import Any

from .registry import Algorithm, register


def _check(cfg: Any) -> list[str]:
    errors = []
    p = cfg.privacy
    if p.dp != "none" and not p.secagg:
        errors.append("`privacy.dp` with 'lorafair' needs `privacy.secagg = true` (its two-phase correction "
                      "from two noised secure sums); the clear-text LoRA-FAIR paths are not privatised")
    if p.secagg and not cfg.lora.two_phase:
        errors.append("`privacy.secagg` with algorithm.name = 'lorafair' needs `lora.two_phase = true` (its "
                      "correction from sums only); the one-phase solve needs each client's factors")
    return errors


LORAFAIR = register(Algorithm(
    name="lorafair",
    family="lora",
    summary="federated LoRA with LoRA-FAIR's server-side correction of the averaged factors",
    features=frozenset({"secagg", "dp", "compress"}),
    rule="lorafair",
    check=_check,
))
