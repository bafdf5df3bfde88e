"""Prints the pinned test vectors of tests/rng/test_stream.py and tests/rng/test_low_precision.py
(run: python tests/rng/make_vectors.py).

Re-run only when the stream's definition changes on purpose: every party of a federation,
on every version, must produce these bits.
"""

import hashlib

import numpy as np

from fedtune import rng
from fedtune.dtypes import numpy_dtype

CASES = [(0, "w"), (42, "model.layers.0.self_attn.q_proj.weight"), (2**64 - 1, "lm_head.weight")]

# The low-precision update: 300 weights of scale 0.05, five directions whose coefficients
# move them by less than, about, and far more than an ulp; 1 + 2**-11 + 2**-40 rounds to
# float16 differently directly and through float32 (the canonical c goes through float32).
LOW_PRECISION_NAME = "model.layers.0.mlp.up_proj.weight"
LOW_PRECISION_SEEDS = [0, 42, 2**64 - 1, 7, 123456789]
LOW_PRECISION_COEFS = [1e-3, -0.37, 3e-5, 1 + 2**-11 + 2**-40, -2.5e-3]


def low_precision_base(dtype: str) -> np.ndarray:
    """The 300 starting weights, float32 rounded to ``dtype``."""
    values = rng.generator(0, "low-precision-vectors").standard_normal(300) * 0.05
    return values.astype(np.float32).astype(numpy_dtype(dtype))


def bits_digest(array: np.ndarray) -> str:
    """SHA-256 of a 2-byte array's little-endian bits."""
    return hashlib.sha256(array.view(np.uint16).astype("<u2").tobytes()).hexdigest()


if __name__ == "__main__":
    for seed, name in CASES:
        key = rng.tensor_key(seed, name)
        words = [f"0x{int(w):016x}" for w in rng.words(key, 0, 2)]
        signs = "".join("+" if z > 0 else "-" for z in rng.rademacher(seed, name, 64))
        print(f"({seed}, {name!r}, 0x{key:016x}, {words}, {signs!r}),")
    for dtype in ("bfloat16", "float16"):
        weights = low_precision_base(dtype)
        rng.add_scaled_many_([(LOW_PRECISION_NAME, weights)], LOW_PRECISION_SEEDS, LOW_PRECISION_COEFS)
        print(f"{dtype!r}: {bits_digest(weights)!r},")
