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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from fedtune.rng import torch_backend as rng

from .steps import StepResult

__all__ = ["NamedParams", "StepResult", "apply_direction_", "zo_step"]

NamedParams = Sequence[tuple[str, torch.Tensor]]
"""The trainable tensors with the names their perturbations are keyed by."""


def apply_direction_(params: NamedParams, seed: int, coef: float) -> None:
    """In place, for every tensor: ``w += coef * z(seed, name)``."""
    for name, tensor in params:
        rng.add_scaled_(tensor.data, seed, name, coef)


@torch.inference_mode()
def zo_step(
    params: NamedParams,
    loss_fn: Callable[[], float | torch.Tensor],
    *,
    seed: int,
    eps: float,
    lr: float,
) -> StepResult:
    """One MeZO step on ``params`` in place (MeZO Algorithm 1, with Rademacher z).

    Args:
        params: ``(name, tensor)`` pairs to perturb and update (e.g. from
            :func:`fedtune.models.trainable_parameters`); names key the perturbation.
        loss_fn: runs one forward on the step's batch with the current weights and
            returns the scalar loss.
        seed: the direction's seed (a FedKSeed candidate, or a fresh one for MeZO).
        eps: perturbation scale, > 0.
        lr: learning rate, >= 0 (0 estimates g without moving the weights).

    Returns:
        The step's :class:`StepResult`.

    Raises:
        ValueError: on ``eps <= 0``, a negative or non-finite ``lr``, or no params.
    """
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"`eps` must be a positive finite float, got {eps!r}")
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"`lr` must be a non-negative finite float, got {lr!r}")
    if not params:
        raise ValueError("`params` is empty: there is nothing to train")

    apply_direction_(params, seed, eps)
    loss_plus = float(loss_fn())
    apply_direction_(params, seed, -2.0 * eps)
    loss_minus = float(loss_fn())
    if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
        apply_direction_(params, seed, eps)
        return StepResult(math.nan, math.nan, skipped=True)
    g = (loss_plus - loss_minus) / (2.0 * eps)
    apply_direction_(params, seed, eps - lr * g)
    return StepResult(g, 0.5 * (loss_plus + loss_minus), skipped=False)
