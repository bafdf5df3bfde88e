"""Zeroth-order gradient estimators, one module each, written once for every backend. Torch-free.

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

Each is a module here (:mod:`.central`, :mod:`.forward`, :mod:`.sign`) that registers a
:class:`~fedtune.zo.estimators.base.ZOEstimator`: how it probes one direction and how the
estimate becomes the direction's scalar. The step around it (q directions, restores, skips,
the update, deferred passes) is :mod:`.base`'s, shared by all. A new estimator is one module
that calls :func:`~fedtune.zo.estimators.base.register`, plus one import line below; its name
is then a valid ``algorithm.estimator``.

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

A ``release`` (example-level DP, :mod:`fedtune.privacy.sample`) makes each direction's
scalar from per-example estimates: the loss then gives each example's loss, the probe's
arithmetic runs per example, and ``release`` clips, averages and noises them into the one
scalar the step uses and uploads; such a step is never skipped.

A backend may also supply ``perturb_many(seeds, coefs)``, the same additions for several
directions in one pass over the weights (:func:`fedtune.rng.add_scaled_many_`). Then the
perturbations are held until the weights are next read (the next forward, or the end of
the steps) and applied together: the restore-and-update of one step and the next step's
``+eps`` become one pass instead of two. Every element still gets the same additions in
the same order, so the weights are bit-identical with or without it.
"""

from __future__ import annotations

from . import central, forward, sign  # noqa: F401  (registration)
from .base import (
    Estimator,
    Loss,
    Perturb,
    PerturbMany,
    Release,
    ZOEstimator,
    as_seeds,
    check_hyperparameters,
    estimate_step,
    get,
    local_steps,
    names,
    register,
)

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "Loss",
    "Perturb",
    "PerturbMany",
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

ESTIMATORS: tuple[str, ...] = names()  # the built-in ones; names() also lists any registered later
