"""The perturbation stream: z = f(seed, tensor name, element index), and every seeded generator.

fedtune's zeroth-order methods never store a perturbation: every party regenerates it
from a seed. For the parties to stay in sync, z must be a *pure function* of
``(seed, tensor name, element index)``, independent of device, parameter order, chunking
and library. This module defines that function and implements it twice, in numpy (here,
for torch-free devices) and in torch (:mod:`fedtune.rng.torch_backend`, CPU and CUDA).

The stream (bit-exact on every backend, pinned by test vectors in ``tests/rng``):

1. ``key = splitmix64(seed XOR splitmix64(fnv1a64(utf8(name))))``
2. Element ``i`` lives in 64-bit word ``j = i // 64``:
   ``word_j = splitmix64(key + (j + 1) * 0x9E3779B97F4A7C15 mod 2**64)``
   (splitmix64's own counter-based sequence, seeded with ``key``).
3. The word's 8 little-endian bytes hold 64 bits; element ``i`` takes bit ``i % 8`` of byte
   ``i // 8`` of the stream: ``z_i = +1`` if that bit is 0, ``-1`` if it is 1.

z is Rademacher (±1), not Gaussian. Why (docs/architecture.md has the long form):
``E[z] = 0`` and ``E[z zᵀ] = I``, so the two-point estimator is the classic SPSA one
(Spall, 1992) and ZO-SGD's guarantees hold; ``c * z`` is exact in floating point, so the
update ``w - c z`` has one rounding whether or not a backend fuses multiply and add
(CUDA and compiled CPU kernels do), which makes replay bit-identical across backends with
no integer-to-float transcendental (libm ``log``/``cos``) anywhere; and one 64-bit hash
serves 64 elements, so generation costs a table look-up per byte.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = [
    "BITS_PER_WORD",
    "add_scaled_",
    "derive_seed",
    "generator",
    "rademacher",
    "secret_generator",
    "tensor_key",
    "words",
]

BITS_PER_WORD = 64
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
# Element chunk for the in-place update: a multiple of 64 (whole words); 1M elements keep
# the temporary at 4 MiB of float32 whatever the tensor's size.
CHUNK_ELEMENTS = 1 << 20


def _splitmix64(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__} {seed!r}")
    seed = int(seed)
    if not 0 <= seed <= _MASK64:
        raise ValueError(f"`seed` must be in [0, 2**64), got {seed}")
    return seed


def tensor_key(seed: int, name: str) -> int:
    """Return the 64-bit stream key of tensor ``name`` under ``seed``.

    Args:
        seed: a non-negative int below 2**64.
        name: the tensor's name (e.g. ``"model.layers.0.mlp.up_proj.weight"``).

    Returns:
        An int in ``[0, 2**64)``.

    Raises:
        TypeError, ValueError: on a bad seed or a non-str name.
    """
    seed = _check_seed(seed)
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got {type(name).__name__}")
    return _splitmix64(seed ^ _splitmix64(_fnv1a64(name.encode("utf-8"))))


def derive_seed(seed: int, *labels: str | int) -> int:
    """Derive an independent 63-bit seed from ``seed`` and a path of labels.

    Used for everything that needs its own stream (the FedKSeed pool, data generation,
    partitioning, model initialisation), so that changing one never shifts another.
    """
    seed = _check_seed(seed)
    text = "/".join(str(label) for label in labels).encode("utf-8")
    digest = hashlib.blake2b(seed.to_bytes(8, "little") + text, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def generator(seed: int, *labels: str | int) -> np.random.Generator:
    """A numpy generator for the stream named by ``(seed, *labels)``.

    The one place in fedtune that creates numpy generators: data generation and
    partitioning take theirs from here.
    """
    return np.random.default_rng(derive_seed(seed, *labels))


def secret_generator() -> np.random.Generator:
    """A numpy generator seeded from OS entropy, for draws that must not follow from the
    config: under central DP, the round's client sample (amplification by sampling holds
    only against whoever cannot tell who was sampled; fedtune.privacy.accounting)."""
    return np.random.default_rng()


def words(key: int, first_word: int, num_words: int) -> np.ndarray:
    """Return ``num_words`` stream words from word index ``first_word``, as ``uint64``."""
    j = np.arange(first_word + 1, first_word + 1 + num_words, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = j * np.uint64(_GOLDEN) + np.uint64(key)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


# _SIGNS[b] holds the 8 values of z coded by byte b, bit 0 first: +1 for a 0 bit.
_SIGNS = (1.0 - 2.0 * ((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1)).astype(
    np.float32
)


def _byte_stream(key: int, start: int, count: int) -> tuple[np.ndarray, int]:
    """Bytes covering elements ``[start, start + count)``, and the offset of ``start``."""
    first_word = start // BITS_PER_WORD
    last_word = (start + count + BITS_PER_WORD - 1) // BITS_PER_WORD
    raw = words(key, first_word, last_word - first_word).astype("<u8", copy=False)
    return raw.view(np.uint8), start - first_word * BITS_PER_WORD


def rademacher(
    seed: int, name: str, count: int, start: int = 0, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """Return ``z[start : start + count]`` of tensor ``name`` under ``seed`` (numpy).

    Args:
        seed: stream seed.
        name: tensor name.
        count: number of elements (the tensor's ``numel`` for the whole of it).
        start: first element index, for a slice of the stream.
        dtype: float dtype of the result (values are exactly ±1 in any of them).

    Returns:
        A 1-D array of ±1 of length ``count``.
    """
    if count < 0 or start < 0:
        raise ValueError(f"`count` and `start` must be >= 0, got {count}, {start}")
    stream, offset = _byte_stream(tensor_key(seed, name), start, count)
    z = _SIGNS[stream].reshape(-1)
    return z[offset : offset + count].astype(dtype, copy=False)


def add_scaled_(array: np.ndarray, seed: int, name: str, coef: float) -> None:
    """In place: ``array += c * z(seed, name)``, with ``c = array.dtype(coef)``.

    The canonical update: the coefficient is first rounded to the array's dtype, then
    each element gets one correctly rounded addition of ``±c`` (exact product), so the
    result is identical to the torch backend's on any device.

    Args:
        array: a C-contiguous float32/float64/float16 array, updated in place.
        seed, name: select the stream.
        coef: the scale (e.g. ``-lr * g`` for an update, ``eps`` for a perturbation).
    """
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise TypeError(f"`array` must be a float numpy array, got {type(array).__name__}")
    if not array.flags.c_contiguous:
        raise ValueError("`array` must be C-contiguous (updated in place through a flat view)")
    flat = array.reshape(-1)
    table = _SIGNS.astype(array.dtype) * array.dtype.type(coef)
    key = tensor_key(seed, name)
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        count = min(CHUNK_ELEMENTS, flat.size - start)
        stream, _ = _byte_stream(key, start, count)
        flat[start : start + count] += table[stream].reshape(-1)[:count]
