"""Zeroth-order fine-tuning: MeZO steps and FedKSeed's seed pool, aggregation and replay.

:mod:`fedtune.zo.seeds` and :mod:`fedtune.zo.steps` are torch-free (numpy); the rest needs torch and is imported on
first use, so ``from fedtune.zo.seeds import ...`` works on a device without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .seeds import SeedUpdate, aggregate, candidate_seeds, replay_coefficient, replay_numpy_
from .steps import LocalResult, StepResult, run_steps

_TORCH_NAMES = {
    "local_train": "fedkseed",
    "replay_": "fedkseed",
    "NamedParams": "mezo",
    "apply_direction_": "mezo",
    "zo_step": "mezo",
}

__all__ = [
    "LocalResult",
    "NamedParams",
    "SeedUpdate",
    "StepResult",
    "aggregate",
    "apply_direction_",
    "candidate_seeds",
    "local_train",
    "replay_",
    "replay_coefficient",
    "replay_numpy_",
    "run_steps",
    "zo_step",
]


def __getattr__(name: str) -> Any:
    module = _TORCH_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'fedtune.zo' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
