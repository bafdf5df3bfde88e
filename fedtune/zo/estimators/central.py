"""``central``: MeZO's two-point difference (Malladi et al., NeurIPS 2023, Algorithm 1).

``g_i = (L(w + eps z_i) - L(w - eps z_i)) / (2 eps)``; the loss near ``w`` is the mean of the
two. Two forwards a direction.
"""

from __future__ import annotations

from .base import Loss, Perturb, ZOEstimator, register

__all__ = ["CENTRAL", "probe"]


def probe(perturb: Perturb, loss: Loss, seed: int, eps: float, base_loss: float) -> tuple[float, float]:
    """``+eps``, ``L+``, ``-2 eps``, ``L-``: the weights are left at ``w - eps z``."""
    perturb(seed, eps)
    loss_plus = loss()
    perturb(seed, -2.0 * eps)
    loss_minus = loss()
    return (loss_plus - loss_minus) / (2.0 * eps), 0.5 * (loss_plus + loss_minus)


CENTRAL = register(ZOEstimator(
    name="central",
    summary="MeZO's two-point difference",
    probe=probe,
    offset=-1.0,
))
