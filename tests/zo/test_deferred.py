"""Held perturbations (``perturb_many``): fewer passes over the weights, the same bits."""

from functools import partial

import numpy as np
import pytest

from fedtune import rng
from fedtune.zo.estimators import local_steps


def _run(estimator: str, directions: int, fused: bool) -> tuple[np.ndarray, np.ndarray, int]:
    w = rng.generator(0, "deferred").standard_normal(1000).astype(np.float32)
    target = rng.generator(1, "deferred").standard_normal(1000).astype(np.float32)
    arrays = [("w", w)]
    passes = [0]

    def perturb(seed: int, coef: float) -> None:
        passes[0] += 1
        rng.add_scaled_(w, seed, "w", coef)

    def perturb_many(seeds, coefs) -> None:
        passes[0] += 1
        rng.add_scaled_many_(arrays, seeds, coefs)

    def loss(step: int) -> float:
        return float(np.mean((w.astype(np.float64) - target) ** 2)) + step

    result = local_steps(
        perturb, loss, keys=list(range(1, 1 + 6 * directions)), seed_of_key=partial(rng.derive_seed, 3),
        eps=1e-3, lr=1e-2, estimator=estimator, directions=directions,
        perturb_many=perturb_many if fused else None,
    )
    return w, result.scalars, passes[0]


@pytest.mark.parametrize("estimator", ["central", "forward", "sign"])
@pytest.mark.parametrize("directions", [1, 3])
def test_held_perturbations_give_the_same_weights_in_fewer_passes(estimator, directions):
    w_plain, scalars_plain, passes_plain = _run(estimator, directions, fused=False)
    w_fused, scalars_fused, passes_fused = _run(estimator, directions, fused=True)

    assert w_fused.tobytes() == w_plain.tobytes()
    np.testing.assert_array_equal(scalars_fused, scalars_plain)
    # forward with q = 1 reads L(w) right after each update: nothing to fuse there.
    if estimator == "forward" and directions == 1:
        assert passes_fused == passes_plain
    else:
        assert passes_fused < passes_plain
