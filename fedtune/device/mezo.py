"""MeZO on numpy weights: the device's twin of :mod:`fedtune.zo.mezo` and ``fedkseed.local_train``.

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023
(https://arxiv.org/abs/2305.17333), Algorithm 1, with fedtune's Rademacher z
(:mod:`fedtune.rng`). One step, for the direction of ``seed``:

    w <- w + eps z;  L+ = L(w)
    w <- w - 2 eps z; L- = L(w)
    g = (L+ - L-) / (2 eps)
    w <- w + eps z - lr g z                 # restore and update in one pass

The arrays are updated in place (:func:`fedtune.rng.add_scaled_`), so an ONNX Runtime
session that reads them through bound OrtValues sees every perturbation without a copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from fedtune.rng import add_scaled_
from fedtune.zo.steps import LocalResult, StepResult, run_steps

__all__ = ["LocalResult", "NamedArrays", "StepResult", "local_train", "zo_step"]

NamedArrays = Sequence[tuple[str, np.ndarray]]
"""The trainable arrays with the names their perturbations are keyed by."""


def _apply(arrays: NamedArrays, seed: int, coef: float) -> None:
    for name, array in arrays:
        add_scaled_(array, seed, name, coef)


def zo_step(arrays: NamedArrays, loss_fn: Callable[[], float], *, seed: int, eps: float, lr: float) -> StepResult:
    """One MeZO step on ``arrays`` in place; a non-finite loss restores them and skips.

    Args:
        arrays: ``(name, float32 array)`` pairs, C-contiguous, updated in place.
        loss_fn: one forward on the step's batch with the current arrays.
        seed: the direction's stream seed.
        eps: perturbation scale, > 0.
        lr: learning rate, >= 0.

    Raises:
        ValueError: on ``eps <= 0``, a negative or non-finite ``lr``, or no arrays.
    """
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"`eps` must be a positive finite float, got {eps!r}")
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"`lr` must be a non-negative finite float, got {lr!r}")
    if not arrays:
        raise ValueError("`arrays` is empty: there is nothing to train")
    _apply(arrays, seed, eps)
    loss_plus = float(loss_fn())
    _apply(arrays, seed, -2.0 * eps)
    loss_minus = float(loss_fn())
    if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
        _apply(arrays, seed, eps)
        return StepResult(math.nan, math.nan, skipped=True)
    g = (loss_plus - loss_minus) / (2.0 * eps)
    _apply(arrays, seed, eps - lr * g)
    return StepResult(g, 0.5 * (loss_plus + loss_minus), skipped=False)


def local_train(
    arrays: NamedArrays,
    loss_for_step: Callable[[int], float],
    *,
    keys: Sequence[int],
    seed_of_key: Callable[[int], int],
    eps: float,
    lr: float,
) -> LocalResult:
    """One MeZO step per key, in order (as :func:`fedtune.zo.fedkseed.local_train`)."""
    return run_steps(
        keys,
        lambda step, key: zo_step(arrays, partial(loss_for_step, step), seed=seed_of_key(key), eps=eps, lr=lr),
    )
