"""FedIT: FedAvg of the LoRA factors (:mod:`fedtune.lora.fedit`).

Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning", ICASSP 2024.
"""

from __future__ import annotations

from .registry import Algorithm, register

FEDIT = register(Algorithm(
    name="fedit",
    family="lora",
    summary="federated LoRA, A and B averaged separately",
    features=frozenset({"secagg", "dp", "compress", "robust", "trainable"}),
    rule="fedit",
))
