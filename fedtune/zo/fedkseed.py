"""FedKSeed's torch side: local MeZO steps on pool seeds, and replay onto torch weights.

Qin et al., "Federated Full-Parameter Tuning of Billion-Sized Language Models with
Communication Cost under 18 Kilobytes", ICML 2024 (https://arxiv.org/abs/2312.06353).

- All parties share a pool of K candidate seeds derived from the run's seed.
- A client's local step draws one candidate, runs a MeZO step with it and records
  ``(candidate index, g)``; the upload is that list. (Other estimators, and q directions
  per step, record one ``(candidate index, scalar)`` per direction:
  :mod:`fedtune.zo.estimators`.)
- The server forms, per candidate k, ``G_k = sum_i p_i sum_{steps of i on k} g`` with
  ``p_i`` the clients' weights (normalised), and broadcasts the ``(k, G_k)`` pairs.
- Every party moves from the round's base weights to the next global weights by
  *replaying*: ``w <- w - lr G_k z_k`` for each k in ascending order.

The pool, the update records and the aggregation are torch-free, in :mod:`fedtune.zo.seeds`.
The unpooled variant ("mezo": a fresh seed per step, keys are the seeds themselves)
shares all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from fedtune.rng import torch_backend as rng

from .estimators import Estimator, Release, local_steps
from .mezo import NamedParams, apply_direction_, apply_directions_
from .seeds import SeedUpdate, replay_coefficient
from .steps import LocalResult

__all__ = ["LocalResult", "local_train", "replay_"]


@torch.inference_mode()
def replay_(params: NamedParams, update: SeedUpdate) -> None:
    """Apply one round's aggregated update to ``params`` in place, canonically.

    Per element, the directions are added in the update's order, one float32 addition
    each: the same bits as applying them one by one (:func:`apply_direction_`), computed in
    one pass over all the tensors (the compiled kernel on CPU: :mod:`fedtune.rng`).
    """
    seeds = [int(s) for s in update.seeds.tolist()]
    coefs = [replay_coefficient(update.lr, g) for g in update.scalars.tolist()]
    if not seeds:
        return
    rng.add_scaled_multi_([(name, tensor.data) for name, tensor in params], seeds, coefs)


@torch.inference_mode()
def local_train(
    params: NamedParams,
    loss_for_step: Callable[[int], float | torch.Tensor],
    *,
    keys: Sequence[int],
    seed_of_key: Callable[[int], int],
    eps: float,
    lr: float,
    estimator: Estimator = "central",
    directions: int = 1,
    release: Release | None = None,
) -> LocalResult:
    """Run the local ZO steps, ``directions`` keys per step, in order, updating ``params`` in place.

    Args:
        params: trainable ``(name, tensor)`` pairs.
        loss_for_step: ``loss_for_step(step)`` runs the forward on step ``step``'s batch.
        keys: the drawn key of each direction, step by step (candidate indices or raw seeds).
        seed_of_key: maps a key to its stream seed.
        eps, lr: MeZO's perturbation scale and learning rate.
        estimator, directions: the ZO estimator and q (:mod:`fedtune.zo.estimators`).
        release: example-level DP (:func:`fedtune.zo.estimators.estimate_step`): then
            ``loss_for_step`` gives each example's loss (a tensor or array ``(B,)``).

    Returns:
        The steps' :class:`LocalResult`: one ``(key, scalar)`` entry per direction.
    """
    if not params:
        raise ValueError("`params` is empty: there is nothing to train")
    def loss(step: int) -> Any:
        value = loss_for_step(step)
        if release is None:
            return float(value)
        return value.double().cpu().numpy() if isinstance(value, torch.Tensor) else value

    return local_steps(
        partial(apply_direction_, params), loss,
        keys=keys, seed_of_key=seed_of_key, eps=eps, lr=lr, estimator=estimator, directions=directions,
        perturb_many=partial(apply_directions_, params), release=release,
    )
