"""Example-level differential privacy inside a zeroth-order step (``privacy.dp = "sample"``).

DPZero (Zhang et al., "DPZero: Private Fine-Tuning of Language Models without
Backpropagation", ICML 2024, https://arxiv.org/abs/2310.09639, Algorithm 1) and DP-ZO (Tang
et al., "Private Fine-tuning of Large Language Models with Zeroth-order Optimization",
2024, https://arxiv.org/abs/2401.04343): in a ZO step the weights move along a direction z
drawn from a seed that does not depend on the data; the one data-dependent quantity is the
projected gradient ``g``. Each example ``j`` of the step's batch of ``B`` gives its own

    g_j = (L_j(w + eps z) - L_j(w - eps z)) / (2 eps)        (central; forward: / eps from L_j(w))

from its own losses of the step's two forwards. :func:`private_estimate` clips each ``g_j``
to ``[-C, C]`` (``privacy.dp_clip``), averages them and adds ``N(0, (sigma C / B)^2)``
(``sigma`` = ``privacy.noise_multiplier``) before the scalar is used or leaves the step:
replacing one example moves the sum of the clipped ``g_j`` by at most ``2 C``, so the noise
on the sum (std ``sigma C``) is a Gaussian mechanism of replace-one multiplier ``sigma / 2``
(:mod:`fedtune.privacy.accounting` accounts it so). The weights' update, the upload and
every party's replay use that scalar and nothing else of the data.

The batch's rows and the noise both come from :func:`fedtune.rng.secret_generator` (OS
entropy), not from the run's seed: amplification by sampling holds only against whoever
cannot tell which rows a step used, and noise that follows from the config is no noise.
Torch-free.
"""

from __future__ import annotations

import numpy as np

__all__ = ["private_estimate", "secret_rows"]


def private_estimate(estimates: np.ndarray, *, clip: float, noise_multiplier: float, rng: np.random.Generator) -> float:
    """One direction's scalar from its per-example estimates: clipped, averaged, noised.

    Args:
        estimates: ``(B,)`` each example's ``g_j``; a non-finite one (its loss overflowed)
            counts as 0, so a step is never skipped and how many steps a client took tells
            nothing about its data.
        clip: C, each ``g_j`` is clipped to ``[-C, C]``.
        noise_multiplier: sigma, the noise on the mean has std ``sigma C / B``.
        rng: the generator of the noise (:func:`fedtune.rng.secret_generator`).

    Returns:
        ``mean_j clip(g_j) + N(0, (sigma C / B)^2)``, a Python float.

    Raises:
        ValueError: on no estimate.
    """
    g = np.asarray(estimates, dtype=np.float64).ravel()
    if g.size == 0:
        raise ValueError("`estimates` is empty: a step needs at least one example")
    clipped = np.clip(np.where(np.isfinite(g), g, 0.0), -clip, clip)
    return float(clipped.mean() + rng.normal(0.0, noise_multiplier * clip / g.size))


def secret_rows(num_rows: int, batch_size: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each local step's batch: ``min(batch_size, num_rows)`` distinct rows drawn uniformly
    from ``num_rows``, independently per step (the fixed-size sampling without replacement
    that :mod:`fedtune.privacy.accounting` accounts), from ``rng``.

    Returns:
        ``steps`` int64 arrays of row indices.
    """
    size = min(batch_size, num_rows)
    return [np.sort(rng.choice(num_rows, size, replace=False)).astype(np.int64) for _ in range(steps)]
