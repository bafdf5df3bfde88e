"""A client's local ZO steps, collected: what the torch and the numpy (device) MeZO share.

Torch-free. The step itself is :func:`fedtune.zo.estimators.estimate_step`, written once;
each backend only says how a direction is added to its weights (:mod:`fedtune.zo.mezo` on
torch tensors, :mod:`fedtune.device.mezo` on numpy arrays). :func:`run_steps` walks the
drawn keys in order, q per step, and keeps the (key, scalar) pairs of the steps that were
not skipped: one entry per direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LocalResult", "StepResult", "run_steps"]


@dataclass(frozen=True)
class StepResult:
    """Outcome of one ZO step.

    Attributes:
        projected_grad: ``g = (L+ - L-) / (2 eps)`` (the estimator's g, the mean of the
            directions' g with several); ``nan`` when the step was skipped.
        loss: ``(L+ + L-) / 2``, the loss near the current weights (``nan`` if skipped).
        skipped: True when a loss was NaN/inf: the weights were restored, not updated.
        scalars: each direction's scalar, in the order of its seeds: what the client
            uploads with the direction's key and every party replays as ``-lr * scalar``
            (``g`` itself for MeZO's one central direction); empty when skipped.
    """

    projected_grad: float
    loss: float
    skipped: bool
    scalars: tuple[float, ...] = ()


@dataclass(frozen=True)
class LocalResult:
    """What a client's local ZO steps produce.

    Attributes:
        keys: ``uint64 (steps * q,)`` the key of each step's directions (skipped steps removed).
        scalars: ``float32 (steps * q,)`` each direction's scalar (the projected gradient,
            for one central direction).
        mean_loss: mean of the steps' losses (nan if every step was skipped).
        skipped: how many steps had a non-finite loss and were skipped.
    """

    keys: np.ndarray
    scalars: np.ndarray
    mean_loss: float
    skipped: int


def run_steps(
    keys: Sequence[int], step: Callable[[int, tuple[int, ...]], StepResult], *, directions: int = 1
) -> LocalResult:
    """``step(step_index, step_keys)`` for every ``directions`` keys in order; the kept
    steps' ``(key, scalar)`` entries, one per direction.

    Raises:
        ValueError: if ``directions < 1``, the keys are not a whole number of steps, or a
            step returns another number of scalars than it has keys.
    """
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(f"`directions` must be an int >= 1, got {directions!r}")
    if len(keys) % directions:
        raise ValueError(f"{len(keys)} keys are not whole steps of {directions} directions")
    kept_keys: list[int] = []
    kept_scalars: list[float] = []
    losses: list[float] = []
    skipped = 0
    for index in range(len(keys) // directions):
        step_keys = tuple(int(key) for key in keys[index * directions : (index + 1) * directions])
        result = step(index, step_keys)
        if result.skipped:
            skipped += 1
            continue
        if len(result.scalars) != len(step_keys):
            raise ValueError(f"step {index}: {len(result.scalars)} scalars for {len(step_keys)} directions")
        kept_keys.extend(step_keys)
        kept_scalars.extend(float(np.float32(scalar)) for scalar in result.scalars)
        losses.append(result.loss)
    return LocalResult(
        keys=np.asarray(kept_keys, dtype=np.uint64),
        scalars=np.asarray(kept_scalars, dtype=np.float32),
        mean_loss=float(np.mean(losses)) if losses else math.nan,
        skipped=skipped,
    )
