"""MeZO: in-place zeroth-order SGD with the memory of inference.

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023
(https://arxiv.org/abs/2305.17333), Algorithm 1. One step, for a direction z regenerated
from ``seed`` (never stored):

    w <- w + eps z;  L+ = L(w)
    w <- w - 2 eps z; L- = L(w)
    g = (L+ - L-) / (2 eps)                 # the projected gradient, a scalar
    w <- w + eps z - lr g z                 # restore and update in one pass

z comes from :mod:`fedtune.rng` (Rademacher, see there), so nothing but the weights and
one forward's activations is ever in memory, and everything runs under
``torch.inference_mode()``: no autograd graph exists.

The step, and its variants (forward difference, ZO-SGD-Sign, q directions), are written
once in :mod:`fedtune.zo.estimators`; this module supplies the torch perturbation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from fedtune.rng import torch_backend as rng

from .estimators import Estimator, as_seeds, check_hyperparameters, estimate_step
from .steps import StepResult

__all__ = ["NamedParams", "StepResult", "apply_direction_", "apply_directions_", "zo_step"]

NamedParams = Sequence[tuple[str, torch.Tensor]]
"""The trainable tensors with the names their perturbations are keyed by."""


def apply_direction_(params: NamedParams, seed: int, coef: float) -> None:
    """In place, for every tensor: ``w += coef * z(seed, name)`` (one kernel call for all of them)."""
    rng.add_scaled_multi_([(name, tensor.data) for name, tensor in params], [seed], [coef])


def apply_directions_(params: NamedParams, seeds: Sequence[int], coefs: Sequence[float]) -> None:
    """In place, for each ``(seed, coef)`` in order and every tensor: ``w += coef * z(seed, name)``,
    in one pass over the weights (bit-identical to :func:`apply_direction_` per seed)."""
    rng.add_scaled_multi_([(name, tensor.data) for name, tensor in params], seeds, coefs)


@torch.inference_mode()
def zo_step(
    params: NamedParams,
    loss_fn: Callable[[], float | torch.Tensor],
    *,
    seed: int | Sequence[int],
    eps: float,
    lr: float,
    estimator: Estimator = "central",
) -> StepResult:
    """One ZO step on ``params`` in place (MeZO Algorithm 1, with Rademacher z, by default).

    The step is :func:`fedtune.zo.estimators.estimate_step`, shared with the numpy device
    client; this only says how a direction is added to torch tensors.

    Args:
        params: ``(name, tensor)`` pairs to perturb and update (e.g. from
            :func:`fedtune.models.trainable_parameters`); names key the perturbation.
        loss_fn: runs one forward on the step's batch with the current weights and
            returns the scalar loss.
        seed: the direction's seed (a FedKSeed candidate, or a fresh one for MeZO), or
            one seed per direction for q > 1 directions.
        eps: perturbation scale, > 0.
        lr: learning rate, >= 0 (0 estimates g without moving the weights).
        estimator: ``central`` (MeZO), ``forward`` or ``sign``
            (:mod:`fedtune.zo.estimators`).

    Returns:
        The step's :class:`StepResult`.

    Raises:
        ValueError: on ``eps <= 0``, a negative or non-finite ``lr``, or no params.
    """
    check_hyperparameters(eps=eps, lr=lr, estimator=estimator)
    if not params:
        raise ValueError("`params` is empty: there is nothing to train")
    return estimate_step(
        partial(apply_direction_, params), lambda: float(loss_fn()),
        seeds=as_seeds(seed), eps=eps, lr=lr, estimator=estimator,
        perturb_many=partial(apply_directions_, params),
    )
