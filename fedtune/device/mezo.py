"""MeZO on numpy weights: the device's twin of :mod:`fedtune.zo.mezo` and ``fedkseed.local_train``.

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023
(https://arxiv.org/abs/2305.17333), Algorithm 1, with fedtune's Rademacher z
(:mod:`fedtune.rng`). One step, for the direction of ``seed``:

    w <- w + eps z;  L+ = L(w)
    w <- w - 2 eps z; L- = L(w)
    g = (L+ - L-) / (2 eps)
    w <- w + eps z - lr g z                 # restore and update in one pass

The arrays are updated in place (:func:`fedtune.rng.add_scaled_many_`), so an ONNX Runtime
session that reads them through bound OrtValues sees every perturbation without a copy.
The step and its variants are :mod:`fedtune.zo.estimators`, shared with the torch client;
this module supplies only the numpy perturbation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from fedtune.rng import add_scaled_many_
from fedtune.zo.estimators import (
    Estimator,
    Release,
    as_seeds,
    check_hyperparameters,
    estimate_step,
    local_steps,
)
from fedtune.zo.steps import LocalResult, StepResult

__all__ = ["LocalResult", "NamedArrays", "StepResult", "local_train", "zo_step"]

NamedArrays = Sequence[tuple[str, np.ndarray]]
"""The trainable arrays with the names their perturbations are keyed by."""


def _apply(arrays: NamedArrays, seed: int, coef: float) -> None:
    add_scaled_many_(arrays, [seed], [coef])


def _apply_many(arrays: NamedArrays, seeds: Sequence[int], coefs: Sequence[float]) -> None:
    add_scaled_many_(arrays, seeds, coefs)


def zo_step(
    arrays: NamedArrays,
    loss_fn: Callable[[], float],
    *,
    seed: int | Sequence[int],
    eps: float,
    lr: float,
    estimator: Estimator = "central",
) -> StepResult:
    """One ZO step on ``arrays`` in place; a non-finite loss restores them and skips.

    Args:
        arrays: ``(name, float32 array)`` pairs, C-contiguous, updated in place.
        loss_fn: one forward on the step's batch with the current arrays.
        seed: the direction's stream seed, or one per direction for q > 1 directions.
        eps: perturbation scale, > 0.
        lr: learning rate, >= 0.
        estimator: ``central`` (MeZO), ``forward`` or ``sign`` (:mod:`fedtune.zo.estimators`).

    Raises:
        ValueError: on ``eps <= 0``, a negative or non-finite ``lr``, or no arrays.
    """
    check_hyperparameters(eps=eps, lr=lr, estimator=estimator)
    if not arrays:
        raise ValueError("`arrays` is empty: there is nothing to train")
    return estimate_step(partial(_apply, arrays), loss_fn, seeds=as_seeds(seed), eps=eps, lr=lr,
                         estimator=estimator, perturb_many=partial(_apply_many, arrays))


def local_train(
    arrays: NamedArrays,
    loss_for_step: Callable[[int], float],
    *,
    keys: Sequence[int],
    seed_of_key: Callable[[int], int],
    eps: float,
    lr: float,
    estimator: Estimator = "central",
    directions: int = 1,
    release: Release | None = None,
) -> LocalResult:
    """The local ZO steps, ``directions`` keys per step, in order (as
    :func:`fedtune.zo.fedkseed.local_train`)."""
    if not arrays:
        raise ValueError("`arrays` is empty: there is nothing to train")
    return local_steps(
        partial(_apply, arrays), loss_for_step,
        keys=keys, seed_of_key=seed_of_key, eps=eps, lr=lr, estimator=estimator, directions=directions,
        perturb_many=partial(_apply_many, arrays), release=release,
    )
