"""The ZO step, written once against ``perturb``/``loss`` callables, and the estimator registry.

Torch-free. An estimator (one module of :mod:`fedtune.zo.estimators` each) says only how it
probes one direction: which losses it takes around the weights ``w`` and what estimate
``g_i`` and loss near ``w`` it makes of them, and how ``g_i`` becomes the direction's
scalar. Everything else, the q directions, restoring the weights, skipping a step on a
non-finite loss, the update, deferring perturbations into shared passes, is here, the same
for every estimator and every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from ..steps import LocalResult, StepResult, run_steps

__all__ = [
    "Estimator",
    "Loss",
    "Perturb",
    "PerturbMany",
    "Probe",
    "Release",
    "ZOEstimator",
    "as_seeds",
    "check_hyperparameters",
    "estimate_step",
    "get",
    "local_steps",
    "names",
    "register",
]

Estimator = str
"""An estimator's registered name (``algorithm.estimator``)."""

Perturb = Callable[[int, float], None]
"""``perturb(seed, coef)``: in place, ``w += coef * z(seed)`` on every trainable tensor."""

PerturbMany = Callable[[Sequence[int], Sequence[float]], None]
"""``perturb_many(seeds, coefs)``: for each ``(seed, coef)`` in order, ``perturb(seed, coef)``,
in one pass over the weights."""

Loss = Callable[[], float]
"""One forward on the step's batch with the current weights: the batch's loss, or with a
:data:`Release` each example's, ``float64 (B,)``."""

Release = Callable[[np.ndarray], float]
"""``release(g)``: one direction's per-example estimates ``float64 (B,)`` -> the scalar the
step uses and uploads (example-level DP: :func:`fedtune.privacy.sample.private_estimate`)."""

Probe = Callable[[Perturb, Loss, int, float, float], tuple[float, float]]
"""``probe(perturb, loss, seed, eps, base_loss) -> (g, loss_near)``: one direction's estimate
from the weights ``w`` (not finite when a loss was not) and the loss near ``w``; ``base_loss``
is ``L(w)`` when the estimator asked for it, else nan. With a :data:`Release` the losses, and
so ``g`` and ``loss_near``, are per-example arrays (elementwise arithmetic, no float casts)."""


@dataclass(frozen=True)
class ZOEstimator:
    """One ``algorithm.estimator``.

    Attributes:
        name: the config name.
        summary: one line for the docs.
        probe: how one direction is estimated (:data:`Probe`).
        offset: where ``probe`` leaves the weights, in units of ``eps z``: ``w + offset eps z``
            (restored by adding ``-offset eps z``).
        base_loss: whether the step evaluates ``L(w)`` once first (shared by its directions).
        scalar: ``g_i`` -> the direction's scalar before the division by q (what is
            uploaded with the key and replayed as ``-lr * scalar``).
    """

    name: str
    summary: str
    probe: Probe
    offset: float
    base_loss: bool = False
    scalar: Callable[[float], float] = float


_REGISTRY: dict[str, ZOEstimator] = {}


def register(estimator: ZOEstimator) -> ZOEstimator:
    """Add ``estimator`` to the registry and return it.

    Raises:
        ValueError: on an empty name or one registered before.
    """
    if not estimator.name or estimator.name != estimator.name.strip():
        raise ValueError(f"an estimator needs a non-empty name without spaces, got {estimator.name!r}")
    if estimator.name in _REGISTRY:
        raise ValueError(f"an estimator named {estimator.name!r} is already registered")
    _REGISTRY[estimator.name] = estimator
    return estimator


def names() -> tuple[str, ...]:
    """The registered estimators' names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> ZOEstimator:
    """The estimator registered as ``name``.

    Raises:
        ValueError: on an unknown name, listing the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"`estimator` must be one of {', '.join(names())}, got {name!r}") from None


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
    get(estimator)


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
    release: Release | None = None,
) -> StepResult:
    """One ZO step over the directions of ``seeds``, on the weights ``perturb`` moves.

    Args:
        perturb: ``perturb(seed, coef)`` adds ``coef * z(seed)`` to every trainable tensor.
        loss: the step's loss with the current weights.
        seeds: one stream seed per direction (q = ``len(seeds)`` >= 1).
        eps: perturbation scale, > 0.
        lr: learning rate, >= 0 (0 estimates without moving the weights).
        estimator: a registered estimator's name (:func:`names`).
        perturb_many: optional; consecutive perturbations then share a pass
            (:mod:`fedtune.zo.estimators`).
        release: optional; ``loss`` then gives each example's loss, and each direction's
            estimate is ``release(g_j per example)`` (clipped and noised: example-level DP),
            always finite, so the step is never skipped.

    Returns:
        The step's :class:`StepResult`: ``scalars`` holds each direction's scalar (what is
        uploaded with its key), ``projected_grad`` the mean of the directions' ``g_i``, and
        ``loss`` the mean of the directions' losses near ``w``.

    Raises:
        ValueError: on bad hyper-parameters or no seeds, before any forward.
    """
    check_hyperparameters(eps=eps, lr=lr, estimator=estimator)
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("`seeds` is empty: a step needs at least one direction")
    spec = get(estimator)
    if perturb_many is not None:
        deferred = _Deferred(perturb_many)
        try:
            return _step(spec, deferred.perturb, deferred.loss(loss), seeds, eps, lr, release)
        finally:
            deferred.flush()
    return _step(spec, perturb, loss, seeds, eps, lr, release)


def _step(spec: ZOEstimator, perturb: Perturb, raw_loss: Loss, seeds: list[int], eps: float, lr: float,
          release: Release | None) -> StepResult:
    q = len(seeds)
    if release is None:
        def loss() -> float:
            return float(raw_loss())
    else:
        def loss() -> np.ndarray:  # type: ignore[misc]
            return np.asarray(raw_loss(), dtype=np.float64)
    base_loss = math.nan
    if spec.base_loss:
        base_loss = loss()
        if release is None and not math.isfinite(base_loss):
            return _skipped()
    restore = -spec.offset * eps
    grads: list[float] = []
    losses: list[float] = []
    for seed in seeds:
        with np.errstate(invalid="ignore", over="ignore"):  # a non-finite loss: skipped below, or counted as 0
            g, loss_near = spec.probe(perturb, loss, seed, eps, base_loss)
        if release is not None:
            g, loss_near = release(np.asarray(g)), float(np.mean(loss_near))
        if not math.isfinite(g):
            perturb(seed, restore)  # the directions before this one are restored already
            return _skipped()
        if q > 1:
            perturb(seed, restore)
        grads.append(g)
        losses.append(loss_near)

    scalars = [spec.scalar(g) / q for g in grads]
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
    release: Release | None = None,
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
        eps, lr, estimator, release: as for :func:`estimate_step` (with ``release``,
            ``loss_for_step`` gives each example's loss).
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
                                 eps=eps, lr=lr, estimator=estimator, release=release)
        return estimate_step(deferred.perturb, deferred.loss(partial(loss_for_step, index)),
                             seeds=seeds, eps=eps, lr=lr, estimator=estimator, release=release)

    try:
        return run_steps(keys, step, directions=directions)
    finally:
        if deferred is not None:
            deferred.flush()
