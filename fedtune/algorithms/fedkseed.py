"""FedKSeed: zeroth-order steps on K shared candidate seeds; clients upload (key, scalar) pairs.

Qin et al., "Federated Full-Parameter Tuning of Billion-Sized Language Models with
Communication Cost under 18 Kilobytes", ICML 2024 (https://arxiv.org/abs/2312.06353).
The math is :mod:`fedtune.zo.fedkseed`; the server is :class:`fedtune.server.strategy.FedKSeed`.
"""

from __future__ import annotations

from .registry import Algorithm, register

FEDKSEED = register(Algorithm(
    name="fedkseed",
    family="zo",
    summary="zeroth-order steps on K candidate seeds; (key, scalar) uploads, bit-exact replay",
    features=frozenset({"secagg", "dp", "dp-sample", "device", "resume", "lora-params", "trainable", "momentum",
                        "robust"}),
))
