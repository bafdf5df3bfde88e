"""Byzantine-robust aggregation of clients' clear update vectors (``[robust]``).

Each rule maps the round's client update vectors (one float64 ``(L,)`` vector per client,
in the caller's fixed order: partition order) to one aggregate vector, counting every client
once. The rules are Flower's (:mod:`flwr.server.strategy.aggregate`): coordinate-wise median,
coordinate-wise trimmed mean (``floor(trim_fraction * n)`` values cut at each end), and Krum /
Multi-Krum (Blanchard et al., NeurIPS 2017). They are deterministic functions of their inputs
in a fixed order, so a FedKSeed server that rounds the result to float32 once and logs it keeps
replay and resume canonical (docs/architecture.md, "Robust aggregation").

Torch-free: the server of either family calls it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

from fedtune.config import RobustConfig

__all__ = ["robust_mean"]


def robust_mean(vectors: Sequence[np.ndarray], robust: RobustConfig) -> np.ndarray:
    """The robust aggregate of ``vectors`` under ``robust.method`` (float64, same length).

    Args:
        vectors: one update vector per client, all of one length, in a fixed client order.
        robust: the run's ``[robust]`` section (``method`` not ``"none"``).

    Raises:
        ValueError: on no vectors, vectors of different lengths, or ``method = "none"``.
    """
    if not vectors:
        raise ValueError("`vectors` is empty: no client update to aggregate")
    lengths = {len(v) for v in vectors}
    if len(lengths) != 1:
        raise ValueError(f"client update vectors differ in length: {sorted(lengths)}")
    results = [([np.asarray(v, dtype=np.float64)], 1) for v in vectors]  # Flower's (arrays, examples)
    if robust.method == "median":
        out = aggregate_median(results)
    elif robust.method == "trimmed-mean":
        out = aggregate_trimmed_avg(results, robust.trim_fraction)
    elif robust.method == "krum":
        keep = min(robust.krum_keep, len(vectors))
        out = aggregate_krum(results, robust.krum_byzantine, keep)
    else:
        raise ValueError(f"robust_mean needs a robust method, got {robust.method!r}")
    return np.asarray(out[0], dtype=np.float64)
