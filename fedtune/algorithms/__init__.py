"""fedtune's algorithms: one module each, registered in :mod:`fedtune.algorithms.registry`.

Importing this package registers the built-in ones. A new algorithm is a module that calls
:func:`~fedtune.algorithms.registry.register` (see docs/architecture.md, "How to add an
algorithm") and one import line below.
"""

from __future__ import annotations

from . import (  # noqa: F401  (registration)
    fedit,
    fedkseed,
    fedkseed_pro,
    fedopt,
    fedprox,
    ffa_lora,
    hetlora,
    lorafair,
    mezo,
    offsite,
    split_prompt,
)
from .registry import FEATURES, Algorithm, get, names, register, sections, supporting

__all__ = ["FEATURES", "Algorithm", "get", "names", "register", "sections", "supporting"]
