"""Zeroth-order gradient estimators, written once for every backend. Torch-free.

A backend supplies two callables and nothing else:

- ``perturb(seed, coef)``: in place, on every trainable tensor, ``w += coef * z(seed)``
  (:func:`fedtune.rng.torch_backend.add_scaled_` on torch tensors,
  :func:`fedtune.rng.add_scaled_` on numpy arrays);
- ``loss()``: one forward on the step's batch with the current weights, as a float.

:func:`estimate_step` then takes one step of the chosen estimator (Zhang et al.,
"Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark",
ICML 2024, https://arxiv.org/abs/2402.11592) over ``q = len(seeds)`` directions:

- ``central``: MeZO's two-point difference (Malladi et al., NeurIPS 2023, Algorithm 1),
  ``g_i = (L(w + eps z_i) - L(w - eps z_i)) / (2 eps)``;
- ``forward``: the one-point forward difference ``g_i = (L(w + eps z_i) - L(w)) / eps``,
  ``L(w)`` evaluated once per step and shared by the q directions (q + 1 forwards, not 2q);
- ``sign``: ZO-SGD-Sign, the central ``g_i`` reduced to its sign. z is Rademacher (±1), so
  ``sign(g) z`` is exactly the coordinate-wise sign of the estimate ``g z``, and ``lr`` is
  the step size of every coordinate.

Each direction's *scalar* is its estimate divided by q (``g_i / q``, or ``sign(g_i) / q``),
so the step moves along the average of the q estimates. (With q > 1, ``sign`` averages
the directions' signs; the sign of the averaged vector is not a sum of seeded directions,
so no (seed, scalar) upload could carry it.) The step is ``w <- w - lr sum_i scalar_i z_i``,
and a client uploads one ``(key, scalar)`` entry per direction: the seed-and-scalar
protocol, the aggregation and the replay (:func:`fedtune.zo.seeds.aggregate`,
``replay_``) are the same whatever the estimator.

With one direction the restore and the update are one pass (``w += r - lr scalar`` with
``r`` the restoring coefficient), as MeZO does; with several, each direction is restored
right after its estimate (the next is taken at ``w``), and the q updates ``-lr scalar_i``
are applied afterwards, in order. A non-finite loss (or estimate) restores the weights and
skips the whole step, every direction of it.

A backend may also supply ``perturb_many(seeds, coefs)``, the same additions for several
directions in one pass over the weights (:func:`fedtune.rng.add_scaled_many_`). Then the
perturbations are held until the weights are next read (the next forward, or the end of
the steps) and applied together: the restore-and-update of one step and the next step's
``+eps`` become one pass instead of two. Every element still gets the same additions in
the same order, so the weights are bit-identical with or without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal, get_args

import numpy as np

from .steps import LocalResult, StepResult, run_steps

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "Loss",
    "Perturb",
    "PerturbMany",
    "as_seeds",
    "check_hyperparameters",
    "estimate_step",
    "local_steps",
]

Estimator = Literal["central", "forward", "sign"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)

Perturb = Callable[[int, float], None]
"""``perturb(seed, coef)``: in place, ``w += coef * z(seed)`` on every trainable tensor."""

PerturbMany = Callable[[Sequence[int], Sequence[float]], None]
"""``perturb_many(seeds, coefs)``: for each ``(seed, coef)`` in order, ``perturb(seed, coef)``,
in one pass over the weights."""

Loss = Callable[[], float]
"""One forward on the step's batch with the current weights."""


class _Deferred:
    """Perturbations held until the weights are next read, then applied in one pass, in order."""

    def __init__(self, perturb_many: PerturbMany) -> None:
        self._perturb_many = perturb_many
        self._seeds: list[int] = []
        self._coefs: list[float] = []

    def perturb(self, seed: int, coef: float) -> None:
        self._seeds.append(seed)
        self._coefs.append(coef)

    def flush(self) -> None:
        if self._seeds:
            seeds, coefs = self._seeds, self._coefs
            self._seeds, self._coefs = [], []
            self._perturb_many(seeds, coefs)

    def loss(self, loss: Loss) -> Loss:
        """``loss`` run on the weights with every held perturbation applied."""
        def run() -> float:
            self.flush()
            return loss()
        return run


def check_hyperparameters(*, eps: float, lr: float, estimator: str) -> None:
    """Raise ValueError on ``eps <= 0``, a negative or non-finite ``lr`` or an unknown estimator."""
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"`eps` must be a positive finite float, got {eps!r}")
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"`lr` must be a non-negative finite float, got {lr!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")


def as_seeds(seed: int | np.integer | Sequence[int] | np.ndarray) -> list[int]:
    """One seed, or a sequence of them (one per direction), as a list of ints."""
    if np.ndim(seed) == 0:
        return [int(seed)]  # type: ignore[arg-type]
    return [int(s) for s in seed]  # type: ignore[union-attr]


def _skipped() -> StepResult:
    return StepResult(math.nan, math.nan, skipped=True)


def estimate_step(
    perturb: Perturb,
    loss: Loss,
    *,
    seeds: Sequence[int],
    eps: float,
    lr: float,
    estimator: Estimator = "central",
    perturb_many: PerturbMany | None = None,
) -> StepResult:
    """One ZO step over the directions of ``seeds``, on the weights ``perturb`` moves.

    Args:
        perturb: ``perturb(seed, coef)`` adds ``coef * z(seed)`` to every trainable tensor.
        loss: the step's loss with the current weights.
        seeds: one stream seed per direction (q = ``len(seeds)`` >= 1).
        eps: perturbation scale, > 0.
        lr: learning rate, >= 0 (0 estimates without moving the weights).
        estimator: ``central``, ``forward`` or ``sign`` (see the module).
        perturb_many: optional; consecutive perturbations then share a pass (the module).

    Returns:
        The step's :class:`StepResult`: ``scalars`` holds each direction's scalar (what is
        uploaded with its key), ``projected_grad`` the mean of the directions' ``g_i``, and
        ``loss`` the loss near ``w`` (``L(w)`` for ``forward``, the mean of
        ``(L+ + L-) / 2`` otherwise).

    Raises:
        ValueError: on bad hyper-parameters or no seeds, before any forward.
    """
    check_hyperparameters(eps=eps, lr=lr, estimator=estimator)
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("`seeds` is empty: a step needs at least one direction")
    if perturb_many is not None:
        deferred = _Deferred(perturb_many)
        try:
            return _step(deferred.perturb, deferred.loss(loss), seeds, eps, lr, estimator)
        finally:
            deferred.flush()
    return _step(perturb, loss, seeds, eps, lr, estimator)


def _step(perturb: Perturb, loss: Loss, seeds: list[int], eps: float, lr: float, estimator: Estimator) -> StepResult:
    q = len(seeds)

    base_loss = math.nan
    if estimator == "forward":
        base_loss = float(loss())
        if not math.isfinite(base_loss):
            return _skipped()
    restore = -eps if estimator == "forward" else eps
    grads: list[float] = []
    losses: list[float] = []
    for seed in seeds:
        perturb(seed, eps)
        loss_plus = float(loss())
        if estimator == "forward":
            loss_near, finite = base_loss, math.isfinite(loss_plus)
            g = (loss_plus - base_loss) / eps if finite else math.nan
        else:
            perturb(seed, -2.0 * eps)
            loss_minus = float(loss())
            finite = math.isfinite(loss_plus) and math.isfinite(loss_minus)
            g = (loss_plus - loss_minus) / (2.0 * eps) if finite else math.nan
            loss_near = 0.5 * (loss_plus + loss_minus)
        if not math.isfinite(g):
            perturb(seed, restore)  # the directions before this one are restored already
            return _skipped()
        if q > 1:
            perturb(seed, restore)
        grads.append(g)
        losses.append(loss_near)

    if estimator == "sign":
        scalars = [(math.copysign(1.0, g) if g != 0 else 0.0) / q for g in grads]
    else:
        scalars = [g / q for g in grads]
    if q == 1:
        perturb(seeds[0], restore - lr * scalars[0])  # restore and update in one pass
    else:
        for seed, scalar in zip(seeds, scalars):
            if scalar != 0 and lr != 0:
                perturb(seed, -lr * scalar)
    return StepResult(
        projected_grad=sum(grads) / q,
        loss=sum(losses) / q,
        skipped=False,
        scalars=tuple(scalars),
    )


def local_steps(
    perturb: Perturb,
    loss_for_step: Callable[[int], float],
    *,
    keys: Sequence[int],
    seed_of_key: Callable[[int], int],
    eps: float,
    lr: float,
    estimator: Estimator = "central",
    directions: int = 1,
    perturb_many: PerturbMany | None = None,
) -> LocalResult:
    """A client's local steps: step ``s`` uses ``keys[s*q : (s+1)*q]`` (q = ``directions``).

    Args:
        perturb, perturb_many: as for :func:`estimate_step`; with ``perturb_many`` the
            perturbations are held across steps too (a step's update and the next step's
            ``+eps`` share a pass) and all applied before this returns.
        loss_for_step: ``loss_for_step(step)`` runs the forward on step ``step``'s batch
            (the same batch for the step's q directions).
        keys: the drawn key of every direction, step by step (candidate indices or raw seeds).
        seed_of_key: maps a key to its stream seed.
        eps, lr, estimator: as for :func:`estimate_step`.
        directions: q, directions per step.

    Returns:
        The kept ``(key, scalar)`` entries, one per direction (skipped steps removed).

    Raises:
        ValueError: on bad hyper-parameters, or keys not a whole number of steps.
    """
    check_hyperparameters(eps=eps, lr=lr, estimator=estimator)
    deferred = _Deferred(perturb_many) if perturb_many is not None else None

    def step(index: int, step_keys: tuple[int, ...]) -> StepResult:
        seeds = [seed_of_key(key) for key in step_keys]
        if deferred is None:
            return estimate_step(perturb, partial(loss_for_step, index), seeds=seeds,
                                 eps=eps, lr=lr, estimator=estimator)
        return estimate_step(deferred.perturb, deferred.loss(partial(loss_for_step, index)),
                             seeds=seeds, eps=eps, lr=lr, estimator=estimator)

    try:
        return run_steps(keys, step, directions=directions)
    finally:
        if deferred is not None:
            deferred.flush()
