"""FedKSeed-Pro: FedKSeed with seeds sampled by their importance (the spread of their scalars).

Qin et al., ICML 2024, Section 4.3. The probabilities are :mod:`fedtune.zo.pro`'s; they
travel down with each round (``wire.SEED_IMPORTANCE``) and are kept in the seed log.
"""

from __future__ import annotations

from .registry import Algorithm, register

FEDKSEED_PRO = register(Algorithm(
    name="fedkseed-pro",
    family="zo",
    summary="FedKSeed with importance-sampled seeds",
    features=frozenset({"secagg", "dp", "dp-sample", "device", "resume", "lora-params", "trainable", "momentum",
                        "robust"}),
))
