"""The canonical update in bfloat16 and float16: torch == numpy == the definition == pinned bits.

Per element ``w <- round_to_dtype(float32(w) + float32(c) * z)`` with
``c = round_to_dtype(float32(coef))`` once (docs/architecture.md, "Low precision"). numpy
runs bfloat16 as ``ml_dtypes.bfloat16``; torch's bfloat16 tensors cross to numpy through
their int16 bits (:mod:`fedtune.dtypes`), never through a value conversion.
"""

import numpy as np
import pytest
import torch

from fedtune import rng
from fedtune.dtypes import copy_bits_, numpy_dtype, to_numpy, torch_dtype, wire_tensor
from fedtune.rng import torch_backend
from fedtune.zo.seeds import weights_digest
from tests.rng.make_vectors import (
    LOW_PRECISION_COEFS,
    LOW_PRECISION_NAME,
    LOW_PRECISION_SEEDS,
    bits_digest,
    low_precision_base,
)

DTYPES = ["bfloat16", "float16"]
# From tests/rng/make_vectors.py.
PINNED = {
    "bfloat16": "3595a2dce989fb2bfd3b0dae175e217a1f39ec6a31bd41f1c7d39e6d8b93e308",
    "float16": "8e0406603fa3e56b4716467bcd1ab68f07095d9dde6cd809dea929f01879ef08",
}


def _definition(weights: np.ndarray, seeds: list[int], coefs: list[float]) -> np.ndarray:
    """The update written out in float32 arithmetic, one rounding to the dtype per addition."""
    dtype, w = weights.dtype, weights.copy()
    for seed, coef in zip(seeds, coefs):
        c = np.float32(np.float32(coef).astype(dtype))
        z = rng.rademacher(seed, LOW_PRECISION_NAME, w.size)
        w = (w.astype(np.float32) + c * z).astype(dtype)
    return w


def _torch(weights: np.ndarray) -> torch.Tensor:
    tensor = torch.empty(weights.size, dtype=torch_dtype(weights.dtype.name))
    copy_bits_(tensor, weights)
    return tensor


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_numpy_and_the_definition_agree_with_the_pinned_bits(dtype):
    base = low_precision_base(dtype)
    numpy_many, numpy_one = base.copy(), base.copy()
    torch_many, torch_one = _torch(base), _torch(base)

    rng.add_scaled_many_([(LOW_PRECISION_NAME, numpy_many)], LOW_PRECISION_SEEDS, LOW_PRECISION_COEFS)
    torch_backend.add_scaled_multi_([(LOW_PRECISION_NAME, torch_many)], LOW_PRECISION_SEEDS, LOW_PRECISION_COEFS)
    with rng.pure_path():  # the torch ops and numpy ufuncs, one direction at a time
        for seed, coef in zip(LOW_PRECISION_SEEDS, LOW_PRECISION_COEFS):
            rng.add_scaled_(numpy_one, seed, LOW_PRECISION_NAME, coef)
            torch_backend.add_scaled_(torch_one, seed, LOW_PRECISION_NAME, coef)

    want = _definition(base, LOW_PRECISION_SEEDS, LOW_PRECISION_COEFS)
    assert bits_digest(want) == PINNED[dtype]
    for got in (numpy_many, numpy_one, to_numpy(torch_many), to_numpy(torch_one)):
        assert got.dtype == numpy_dtype(dtype)
        assert bits_digest(got) == PINNED[dtype]
    assert (want.view(np.uint16) != base.view(np.uint16)).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coef", [1e-4, 1e-3, 1e-2])
def test_small_perturbations_agree_on_every_backend(dtype, coef):
    # Steps of about an ulp and below: the rounding (ties included) decides every bit.
    base = low_precision_base(dtype)
    arrays, tensor = base.copy(), _torch(base)

    rng.add_scaled_(arrays, 3, LOW_PRECISION_NAME, coef)
    torch_backend.add_scaled_(tensor, 3, LOW_PRECISION_NAME, coef)

    assert bits_digest(to_numpy(tensor)) == bits_digest(arrays) == bits_digest(_definition(base, [3], [coef]))


def test_the_coefficient_rounds_through_float32_as_torch_does():
    coef = 1 + 2**-11 + 2**-40  # float16 directly: 1 + 2**-10; through float32: a tie, to even 1.0

    assert float(rng.round_coefs([coef], np.dtype(np.float16))[0]) == 1.0
    assert torch_backend._round_coef(coef, torch.float16) == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_bits_cross_torch_numpy_and_the_wire_unchanged(dtype):
    base = low_precision_base(dtype)
    tensor = _torch(base)
    back = torch.empty_like(tensor)

    copy_bits_(back, wire_tensor(tensor).numpy())  # what a client does with sent weights

    assert torch.equal(back.view(torch.int16), tensor.view(torch.int16))
    assert to_numpy(tensor).tobytes() == base.tobytes()
    assert weights_digest([("w", to_numpy(tensor))]) == weights_digest([("w", base)])
    assert weights_digest([("w", base)]) != weights_digest([("w", base.astype(np.float32))])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_agrees_with_the_pinned_bits(dtype):
    tensor = _torch(low_precision_base(dtype)).cuda()

    torch_backend.add_scaled_multi_([(LOW_PRECISION_NAME, tensor)], LOW_PRECISION_SEEDS, LOW_PRECISION_COEFS)

    assert bits_digest(to_numpy(tensor)) == PINNED[dtype]
