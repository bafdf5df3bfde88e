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

import ctypes
import hashlib
import itertools
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from . import _fast

__all__ = [
    "BITS_PER_WORD",
    "add_scaled_",
    "add_scaled_many_",
    "derive_seed",
    "fast_kernel",
    "generator",
    "kernel_problem",
    "kernel_threads",
    "pure_path",
    "rademacher",
    "round_coefs",
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


def _check_directions(seeds: Sequence[int], coefs: Sequence[float]) -> list[int]:
    """The checked seeds of a many-direction update (one coefficient each)."""
    if len(seeds) != len(coefs):
        raise ValueError(f"seeds and coefs differ in length: {len(seeds)} vs {len(coefs)}")
    return [_check_seed(seed) for seed in seeds]


@lru_cache(maxsize=4096)
def _name_key(name: str) -> int:
    """``splitmix64(fnv1a64(utf8(name)))``: the seed-independent half of :func:`tensor_key`."""
    return _splitmix64(_fnv1a64(name.encode("utf-8")))


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
    return _splitmix64(seed ^ _name_key(name))


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


def _is_float(dtype: np.dtype) -> bool:
    """numpy's float dtypes, and ``ml_dtypes.bfloat16`` (a float whose numpy kind is ``'V'``)."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


def _check_array(array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray) or not _is_float(array.dtype):
        raise TypeError(f"`array` must be a float numpy array, got {type(array).__name__}")
    if not array.flags.c_contiguous:
        raise ValueError("`array` must be C-contiguous (updated in place through a flat view)")


def round_coefs(coefs: Sequence[float], dtype: np.dtype) -> np.ndarray:
    """The coefficients ``c`` of the canonical update, rounded once to ``dtype``.

    float32 and float64 round the float64 value directly; the 16-bit dtypes (float16,
    ``ml_dtypes.bfloat16``) round it to float32 first, then to the dtype, which is what torch
    does (its half and bfloat16 scalars are built from a float), so both backends hold the
    same ``c`` even for a value near a 16-bit rounding boundary. Overflow gives ±inf.
    """
    with np.errstate(over="ignore"):
        values = np.asarray(coefs, dtype=np.float64)
        if dtype.itemsize == 2:
            values = values.astype(np.float32)
        return values.astype(dtype)


def _add_scaled_fallback_(array: np.ndarray, seed: int, name: str, coef: float) -> None:
    """The pure-numpy canonical update (the definition the compiled kernel is checked
    against): chunks of :data:`CHUNK_ELEMENTS`, z expanded through the ±c byte table.

    Per element ``w <- round_to_dtype(float32(w) + float32(±c))`` for the 16-bit dtypes:
    numpy's float16 and ml_dtypes' bfloat16 add in float32 and round once, which is the
    correctly rounded sum (float32 holds more than twice their significand bits + 2).
    """
    flat = array.reshape(-1)
    table = _SIGNS.astype(array.dtype) * round_coefs([coef], array.dtype)[0]
    key = tensor_key(seed, name)
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        count = min(CHUNK_ELEMENTS, flat.size - start)
        stream, _ = _byte_stream(key, start, count)
        flat[start : start + count] += table[stream].reshape(-1)[:count]


def add_scaled_(array: np.ndarray, seed: int, name: str, coef: float) -> None:
    """In place: ``array += c * z(seed, name)``, with ``c = array.dtype(coef)``.

    The canonical update: the coefficient is first rounded to the array's dtype, then
    each element gets one correctly rounded addition of ``±c`` (exact product), so the
    result is identical to the torch backend's on any device. Runs on the compiled kernel
    (:func:`fast_kernel`) when it is available, else in numpy: the same bits.

    Args:
        array: a C-contiguous float32, float64, float16 or ``ml_dtypes.bfloat16`` array,
            updated in place.
        seed, name: select the stream.
        coef: the scale (e.g. ``-lr * g`` for an update, ``eps`` for a perturbation).
    """
    _check_array(array)
    add_scaled_many_([(name, array)], [seed], [coef])


def add_scaled_many_(
    arrays: Sequence[tuple[str, np.ndarray]],
    seeds: Sequence[int],
    coefs: Sequence[float],
    *,
    threads: int | None = None,
) -> None:
    """In place, for each ``(seed, coef)`` in order and every ``(name, array)``:
    ``array += c * z(seed, name)``, ``c = array.dtype(coef)``.

    Bit-identical to calling :func:`add_scaled_` once per seed and array, in that order:
    every element sees the same additions in the same order. On the compiled kernel it is
    one pass over the arrays in cache-sized tiles, every direction added to a tile while it
    sits in registers, on ``threads`` threads (default :func:`kernel_threads`); without the
    kernel (or for arrays it does not take: other dtypes, read-only, unaligned or
    overlapping ones, or a NaN coefficient) the arrays get the numpy path, seed by seed.

    Args:
        arrays: ``(name, C-contiguous float array)`` pairs, updated in place.
        seeds: the directions' stream seeds, in the order they are added.
        coefs: one scale per seed.
    """
    seeds = _check_directions(seeds, coefs)
    for _, array in arrays:
        _check_array(array)
    if not seeds:
        return
    kernel = fast_kernel()
    rest: list[tuple[str, np.ndarray]] = list(arrays)
    # Arrays sharing memory get the definition's order (seed by seed, array by array).
    if kernel is not None and not _overlapping([(a.ctypes.data, a.nbytes) for _, a in arrays]):
        by_dtype: dict[np.dtype, list[tuple[str, np.ndarray]]] = {}
        rest = []
        for name, array in arrays:
            ok = (array.dtype.name in _fast.DTYPE_CODES and array.dtype.isnative
                  and array.flags.writeable and array.flags.aligned)
            (by_dtype.setdefault(array.dtype, []) if ok else rest).append((name, array))
        for dtype, group in by_dtype.items():
            cs = round_coefs(coefs, dtype)  # as the pure path: a coefficient may round to inf
            if np.isnan(cs).any():  # NaN payloads: left to the pure path's own arithmetic
                rest.extend(group)
                continue
            run_kernel(kernel, dtype.name, [a.ctypes.data for _, a in group], [a.size for _, a in group],
                       [n for n, _ in group], seeds, cs, threads or kernel_threads())
    for seed, coef in zip(seeds, coefs):
        for name, array in rest:
            _add_scaled_fallback_(array, seed, name, coef)


# --- the compiled kernel ------------------------------------------------------------------

# (seed, name, first two stream words): the pinned vectors of tests/rng, which a freshly
# loaded kernel must reproduce before it is used.
_PINNED = (
    (0, "w", (0x6BDF9353EBB4522A, 0x1103C3665844A1AE)),
    (42, "model.layers.0.self_attn.q_proj.weight", (0xA83E354B412C5D87, 0xBA77E5CF326D9CC3)),
    (2**64 - 1, "lm_head.weight", (0x6523546132B34B37, 0xBD14C6A735F772D1)),
)
# Below this many element updates a call runs on one thread: starting one costs more.
_PARALLEL_MIN_UPDATES = 1 << 20


class _Unset:
    pass


_kernel: _fast.Kernel | None | _Unset = _Unset()
_kernel_problem: str | None = None
_pure_depth = 0


@contextmanager
def pure_path() -> Iterator[None]:
    """Within the block, every update runs the pure numpy/torch path (as with
    ``$FEDTUNE_REPLAY_KERNEL=fallback``): for benchmarks and tests that compare the two."""
    global _pure_depth
    _pure_depth += 1
    try:
        yield
    finally:
        _pure_depth -= 1


def _overlapping(spans: Sequence[tuple[int, int]]) -> bool:
    """Whether any two ``(address, nbytes)`` memory ranges overlap."""
    ordered = sorted(span for span in spans if span[1] > 0)
    return any(a + n > b for (a, n), (b, _) in itertools.pairwise(ordered))


def kernel_threads() -> int:
    """Threads the kernel uses for numpy arrays: ``$FEDTUNE_REPLAY_THREADS``, else
    ``$OMP_NUM_THREADS`` (the budget Ray or the user gave the process), else the CPUs this
    process may run on. (The torch path uses ``torch.get_num_threads()``.)"""
    for var in ("FEDTUNE_REPLAY_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def kernel_numpy_dtype(name: str) -> np.dtype | None:
    """The numpy dtype of the kernel's element type ``name``; None for bfloat16 without
    ``ml_dtypes`` (the arrays and tensors of it then take the pure path)."""
    if name != "bfloat16":
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def run_kernel(
    kernel: _fast.Kernel,
    dtype: str,
    pointers: Sequence[int],
    sizes: Sequence[int],
    names: Sequence[str],
    seeds: Sequence[int],
    coefs: np.ndarray,
    threads: int,
) -> None:
    """Call the kernel on raw buffers (numpy's or torch's): for each seed in order, every
    buffer ``+= coef * z(seed, name)``. ``coefs`` are already rounded to ``dtype`` (an array
    of it); the caller has checked the buffers (contiguous, aligned, writable, disjoint)."""
    bits = coefs.view(f"u{coefs.dtype.itemsize}").astype(np.uint64)
    ptrs = np.array(pointers, dtype=np.uintp)
    counts = np.array(sizes, dtype=np.int64)
    name_keys = np.array([_name_key(name) for name in names], dtype=np.uint64)
    seed_arr = np.array(seeds, dtype=np.uint64)
    if int(counts.sum()) * len(seeds) < _PARALLEL_MIN_UPDATES:
        threads = 1
    rc = kernel.fn(
        _fast.DTYPE_CODES[dtype], len(ptrs), ptrs.ctypes.data, counts.ctypes.data,
        name_keys.ctypes.data, len(seed_arr), seed_arr.ctypes.data, bits.ctypes.data,
        ctypes.c_int(max(1, int(threads))),
    )
    if rc != 0:
        raise RuntimeError(f"the replay kernel refused its arguments (code {rc})")


def _verify(kernel: _fast.Kernel) -> str | None:
    """Why ``kernel`` must not be used (bits differ from the definition), or None.

    Checks the pinned stream vectors (the stream's definition) and, for every dtype, the
    kernel's update against :func:`_add_scaled_fallback_` on odd sizes, several seeds and
    coefficients that round: a miscompiled or foreign build is refused, never used.
    """
    for seed, name, pinned in _PINNED:
        out = np.zeros(2 * BITS_PER_WORD, dtype=np.float64)
        run_kernel(kernel, "float64", [out.ctypes.data], [out.size], [name], [seed],
                   np.array([1.0]), 1)
        bits = [sum(1 << i for i in range(64) if out[64 * w + i] < 0) for w in range(2)]
        if bits != list(pinned) or not np.all(np.abs(out) == 1.0):
            return f"the kernel's stream differs from the pinned vectors (seed {seed}, {name!r})"
    gen = generator(0, "replay-kernel-check")
    seeds = [int(s) for s in gen.integers(0, 2**63, 5)] + [2**64 - 1]
    coefs = [1e-3, -0.37, 12345.678, -3e-8, 0.5, 7.0]
    for kind in _fast.DTYPE_CODES:
        dtype = kernel_numpy_dtype(kind)
        if dtype is None:  # bfloat16 without ml_dtypes: no array of it can reach the kernel here
            continue
        sizes = [1, 63, 64, 65, 200, 64 * 512 + 17]
        arrays = [(f"check.{i}", gen.standard_normal(n).astype(dtype)) for i, n in enumerate(sizes)]
        expected = [(name, a.copy()) for name, a in arrays]
        for seed, coef in zip(seeds, coefs):
            for name, a in expected:
                _add_scaled_fallback_(a, seed, name, coef)
        cs = round_coefs(coefs, dtype)
        run_kernel(kernel, kind, [a.ctypes.data for _, a in arrays], sizes, [n for n, _ in arrays],
                   seeds, cs, 2)
        for (tensor, result), (_, want) in zip(arrays, expected):
            if result.tobytes() != want.tobytes():
                return f"the kernel's {kind} update differs from the numpy path ({tensor}, {result.size} elements)"
    return None


def fast_kernel() -> _fast.Kernel | None:
    """The compiled replay kernel, built and checked at first use, or None for the pure path.

    None when ``$FEDTUNE_REPLAY_KERNEL=fallback`` (checked at every call) or inside
    :func:`pure_path`, or when the kernel cannot be built or loaded or its bits differ from
    the pinned vectors or the numpy path: then one ``RuntimeWarning`` per process names the
    reason, and every update runs the pure numpy/torch path, with the same bits.
    """
    global _kernel, _kernel_problem
    mode = os.environ.get(_fast.ENV_MODE, "auto").strip().lower()
    if mode == "fallback" or _pure_depth:
        return None
    if isinstance(_kernel, _Unset):
        kernel: _fast.Kernel | None = None
        problem: str | None = None
        try:
            built = _fast.build()
            refused = _verify(built)
            if refused:
                problem = f"refused: {refused}"
            else:
                kernel = built
        except Exception as exc:  # noqa: BLE001 -- never a crash: any failure means the pure path
            problem = str(exc) or type(exc).__name__
        _kernel, _kernel_problem = kernel, problem
        if mode not in ("auto", ""):
            note = f"${_fast.ENV_MODE}={mode!r} is neither 'auto' nor 'fallback', read as 'auto'"
            problem = f"{problem}; {note}" if problem else note
        if problem:
            used = "used" if kernel is not None else (
                "not used; replay and perturbations run the pure numpy/torch path: the same bits, slower"
            )
            warnings.warn(
                f"fedtune's compiled replay kernel ({problem}): {used}. "
                f"${_fast.ENV_MODE}=fallback chooses the pure path without this warning.",
                RuntimeWarning,
                stacklevel=2,
            )
    return _kernel


def kernel_problem() -> str | None:
    """Why the compiled kernel is not in use (None when it is, or before first use)."""
    return _kernel_problem
