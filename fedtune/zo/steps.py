"""A client's local ZO steps, collected: what the torch and the numpy (device) MeZO share.

Torch-free. Each backend supplies its own in-place ``zo_step`` (:mod:`fedtune.zo.mezo` on
torch tensors, :mod:`fedtune.device.mezo` on numpy arrays); :func:`run_steps` walks the
drawn keys in order and keeps the (key, g) pairs of the steps that were not skipped.
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
        projected_grad: ``g = (L+ - L-) / (2 eps)``; ``nan`` when the step was skipped.
        loss: ``(L+ + L-) / 2``, the loss near the current weights (``nan`` if skipped).
        skipped: True when a loss was NaN/inf: the weights were restored, not updated.
    """

    projected_grad: float
    loss: float
    skipped: bool


@dataclass(frozen=True)
class LocalResult:
    """What a client's local ZO steps produce.

    Attributes:
        keys: ``uint64 (steps,)`` the key of each step's direction (skipped steps removed).
        scalars: ``float32 (steps,)`` each step's projected gradient.
        mean_loss: mean of the steps' losses (nan if every step was skipped).
        skipped: how many steps had a non-finite loss and were skipped.
    """

    keys: np.ndarray
    scalars: np.ndarray
    mean_loss: float
    skipped: int


def run_steps(keys: Sequence[int], step: Callable[[int, int], StepResult]) -> LocalResult:
    """``step(step_index, key)`` for every key in order; the kept steps' keys and g."""
    kept_keys: list[int] = []
    kept_scalars: list[float] = []
    losses: list[float] = []
    skipped = 0
    for index, key in enumerate(keys):
        result = step(index, int(key))
        if result.skipped:
            skipped += 1
            continue
        kept_keys.append(int(key))
        kept_scalars.append(float(np.float32(result.projected_grad)))
        losses.append(result.loss)
    return LocalResult(
        keys=np.asarray(kept_keys, dtype=np.uint64),
        scalars=np.asarray(kept_scalars, dtype=np.float32),
        mean_loss=float(np.mean(losses)) if losses else math.nan,
        skipped=skipped,
    )
