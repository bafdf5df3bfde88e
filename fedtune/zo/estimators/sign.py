"""``sign``: ZO-SGD-Sign, the central estimate reduced to its sign.

z is Rademacher (±1), so ``sign(g) z`` is exactly the coordinate-wise sign of the estimate
``g z``, and ``lr`` is the step size of every coordinate. With q > 1 the directions' signs
are averaged (the sign of the averaged vector is not a sum of seeded directions, so no
(seed, scalar) upload could carry it).
"""

from __future__ import annotations

import math

from .base import ZOEstimator, register
from .central import CENTRAL

__all__ = ["SIGN", "sign"]


def sign(g: float) -> float:
    """``±1``, or 0 for a zero estimate."""
    return math.copysign(1.0, g) if g != 0 else 0.0


SIGN = register(ZOEstimator(
    name="sign",
    summary="ZO-SGD-Sign: the sign of the central estimate",
    probe=CENTRAL.probe,
    offset=CENTRAL.offset,
    scalar=sign,
))
