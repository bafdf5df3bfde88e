"""Federated MeZO: a fresh 64-bit seed every step (no candidate pool); uploads (seed, scalar).

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023
(https://arxiv.org/abs/2305.17333). Without a pool the seeds are raw 64-bit values, so there
is no dense per-seed vector for SecAgg+ or client-level DP to work on; example-level DP
(``privacy.dp = "sample"``) noises each step's scalar and needs none.
"""

from __future__ import annotations

from .registry import Algorithm, register

MEZO = register(Algorithm(
    name="mezo",
    family="zo",
    summary="zeroth-order steps on fresh seeds (MeZO); (seed, scalar) uploads",
    features=frozenset({"dp-sample", "device", "resume", "lora-params", "trainable"}),
    pooled=False,
))
