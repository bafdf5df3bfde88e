"""``forward``: the one-point forward difference ``g_i = (L(w + eps z_i) - L(w)) / eps``.

``L(w)`` is evaluated once per step and shared by the q directions: q + 1 forwards a step,
not 2q (Zhang et al., ICML 2024, "Revisiting Zeroth-Order Optimization for
Memory-Efficient LLM Fine-Tuning: A Benchmark", https://arxiv.org/abs/2402.11592).
"""

from __future__ import annotations

from .base import Loss, Perturb, ZOEstimator, register

__all__ = ["FORWARD", "probe"]


def probe(perturb: Perturb, loss: Loss, seed: int, eps: float, base_loss: float) -> tuple[float, float]:
    """``+eps``, ``L+``: the weights are left at ``w + eps z``; the loss near ``w`` is ``L(w)``."""
    perturb(seed, eps)
    return (loss() - base_loss) / eps, base_loss


FORWARD = register(ZOEstimator(
    name="forward",
    summary="one-point forward difference, L(w) once per step",
    probe=probe,
    offset=1.0,
    base_loss=True,
))
