"""The numpy MeZO step moves weights exactly as the torch step does, given the same losses."""

import math

import numpy as np
import pytest
import torch

from fedtune.device import local_train, zo_step
from fedtune.zo import fedkseed
from fedtune.zo.mezo import zo_step as torch_zo_step


def _arrays():
    gen = np.random.default_rng(0)
    return [("layer.weight", gen.standard_normal((7, 5)).astype(np.float32)),
            ("layer.bias", gen.standard_normal(5).astype(np.float32))]


def _quadratic(named):
    """0.5 |w|^2 in float64 from the raw float32 values: the same number on both sides
    whenever the weights are bit-identical."""
    return lambda: 0.5 * sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for _, a in named)


def test_a_step_is_bit_identical_to_the_torch_step():
    arrays = _arrays()
    tensors = [(n, torch.from_numpy(a.copy())) for n, a in arrays]

    result = zo_step(arrays, _quadratic(arrays), seed=42, eps=1e-3, lr=0.1)
    expected = torch_zo_step(tensors, _quadratic([(n, t.numpy()) for n, t in tensors]), seed=42, eps=1e-3, lr=0.1)

    assert result.projected_grad == expected.projected_grad and not result.skipped
    for (_, a), (_, t) in zip(arrays, tensors):
        assert np.array_equal(a, t.numpy())


def test_the_step_follows_the_gradient_of_a_quadratic():
    # L = 0.5|w|^2: g = z . w exactly (the central difference is exact for a quadratic).
    arrays = _arrays()
    from fedtune.rng import rademacher

    z_dot_w = sum(float(rademacher(42, n, a.size) @ a.reshape(-1).astype(np.float64)) for n, a in arrays)

    result = zo_step(arrays, _quadratic(arrays), seed=42, eps=1e-3, lr=0.0)

    # float32 perturbations of size 1e-3 leave ~1e-4 relative error in the difference quotient.
    assert result.projected_grad == pytest.approx(z_dot_w, rel=1e-3)


def test_a_nan_loss_restores_the_weights_as_the_torch_step_does():
    arrays = _arrays()
    tensors = [(n, torch.from_numpy(a.copy())) for n, a in arrays]

    result = zo_step(arrays, lambda: math.nan, seed=3, eps=1e-3, lr=0.1)
    torch_zo_step(tensors, lambda: math.nan, seed=3, eps=1e-3, lr=0.1)

    assert result.skipped and math.isnan(result.projected_grad)
    for (_, a), (_, t) in zip(arrays, tensors):
        assert np.array_equal(a, t.numpy())


def test_local_train_matches_fedkseed_local_train():
    arrays = _arrays()
    tensors = [(n, torch.from_numpy(a.copy())) for n, a in arrays]
    losses = iter([1.0, 0.5, math.nan, 0.7, 0.2, 0.1])  # the second step is skipped
    torch_losses = iter([1.0, 0.5, math.nan, 0.7, 0.2, 0.1])

    result = local_train(arrays, lambda step: next(losses), keys=[5, 9, 2], seed_of_key=lambda k: k * 11,
                         eps=1e-3, lr=0.01)
    expected = fedkseed.local_train(tensors, lambda step: next(torch_losses), keys=[5, 9, 2],
                                    seed_of_key=lambda k: k * 11, eps=1e-3, lr=0.01)

    assert result.keys.tolist() == expected.keys.tolist() == [5, 2]
    assert result.scalars.dtype == np.float32
    assert np.array_equal(result.scalars, expected.scalars)
    assert result.skipped == expected.skipped == 1
    assert result.mean_loss == expected.mean_loss
    for (_, a), (_, t) in zip(arrays, tensors):
        assert np.array_equal(a, t.numpy())


def test_bad_hyper_parameters_are_refused_before_any_forward():
    calls = []
    with pytest.raises(ValueError, match="eps"):
        zo_step(_arrays(), lambda: calls.append(1) or 0.0, seed=0, eps=0.0, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        zo_step(_arrays(), lambda: calls.append(1) or 0.0, seed=0, eps=1e-3, lr=-1.0)
    assert calls == []


@pytest.mark.parametrize("estimator", ["forward", "sign"])
@pytest.mark.parametrize("seed", [42, [42, 3, 17]])
def test_other_estimators_are_bit_identical_to_the_torch_step(estimator, seed):
    arrays = _arrays()
    tensors = [(n, torch.from_numpy(a.copy())) for n, a in arrays]

    result = zo_step(arrays, _quadratic(arrays), seed=seed, eps=1e-3, lr=0.1, estimator=estimator)
    expected = torch_zo_step(tensors, _quadratic([(n, t.numpy()) for n, t in tensors]), seed=seed, eps=1e-3,
                             lr=0.1, estimator=estimator)

    assert result.scalars == expected.scalars and not result.skipped
    for (_, a), (_, t) in zip(arrays, tensors):
        assert np.array_equal(a, t.numpy())


@pytest.mark.parametrize("estimator", ["central", "forward", "sign"])
def test_local_train_with_several_directions_matches_fedkseed_local_train(estimator):
    arrays = _arrays()
    tensors = [(n, torch.from_numpy(a.copy())) for n, a in arrays]
    keys = [5, 9, 2, 5, 7, 1]  # 3 steps of 2 directions

    result = local_train(arrays, lambda step: _quadratic(arrays)(), keys=keys, seed_of_key=lambda k: k * 11,
                         eps=1e-3, lr=0.01, estimator=estimator, directions=2)
    expected = fedkseed.local_train(tensors, lambda step: _quadratic([(n, t.numpy()) for n, t in tensors])(),
                                    keys=keys, seed_of_key=lambda k: k * 11, eps=1e-3, lr=0.01,
                                    estimator=estimator, directions=2)

    assert result.keys.tolist() == expected.keys.tolist() == keys
    assert np.array_equal(result.scalars, expected.scalars) and result.mean_loss == expected.mean_loss
    for (_, a), (_, t) in zip(arrays, tensors):
        assert np.array_equal(a, t.numpy())
