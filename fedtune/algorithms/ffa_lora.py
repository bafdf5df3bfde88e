"""FFA-LoRA: A frozen at its shared initialisation, only B trained and averaged (:mod:`fedtune.lora.ffa`).

Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024.
"""

from __future__ import annotations

from .registry import Algorithm, register

FFA_LORA = register(Algorithm(
    name="ffa-lora",
    family="lora",
    summary="federated LoRA with A frozen: the average of B is exact",
    features=frozenset({"secagg", "dp", "compress", "robust"}),
    rule="ffa-lora",
))
