"""The torch implementation of :mod:`fedtune.rng`'s stream, on any device.

Same function, same bits as the numpy path (pinned by ``tests/rng``). On CPU tensors of
float32, float64, float16 and bfloat16 the updates run on fedtune's compiled replay kernel
(:func:`fedtune.rng.fast_kernel`: one pass over all the tensors of a call, every direction
added to a tile while it is in registers, ``torch.get_num_threads()`` threads); everything
else (CUDA, bfloat16 without ml_dtypes, the kernel unavailable or ``$FEDTUNE_REPLAY_KERNEL=fallback``) runs
the torch ops below, with the same bits. torch has no
unsigned 64-bit arithmetic, so the hash runs on int64: multiplication wraps modulo 2**64
exactly as uint64 does, and every right shift is followed by a mask that clears the sign
extension, which turns torch's arithmetic shift into the logical one splitmix64 needs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from . import (
    _GOLDEN,
    _MIX1,
    _MIX2,
    _SIGNS,
    BITS_PER_WORD,
    CHUNK_ELEMENTS,
    _check_directions,
    _overlapping,
    derive_seed,
    fast_kernel,
    kernel_numpy_dtype,
    run_kernel,
    tensor_key,
)
from . import words as _numpy_words

__all__ = ["add_scaled_", "add_scaled_many_", "add_scaled_multi_", "rademacher", "seeded_init", "words"]

# torch dtypes the compiled kernel takes, by the numpy name it knows them by; bfloat16 too where
# ml_dtypes is installed (its bfloat16 carries the coefficients), looked up at the first
# bfloat16 tensor: importing ml_dtypes takes ~1 s, which every process would otherwise pay
_KERNEL_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16"}


@functools.cache
def _kernel_takes_bfloat16() -> bool:
    return kernel_numpy_dtype("bfloat16") is not None


def _kernel_dtype(dtype: torch.dtype) -> str | None:
    """The kernel's name of ``dtype``; None where the kernel does not take it."""
    if dtype == torch.bfloat16:
        return "bfloat16" if _kernel_takes_bfloat16() else None
    return _KERNEL_DTYPES.get(dtype)


def _as_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN_I = _as_int64(_GOLDEN)
_MIX1_I = _as_int64(_MIX1)
_MIX2_I = _as_int64(_MIX2)


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def words(key: int, first_word: int, num_words: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Stream words ``[first_word, first_word + num_words)`` as int64 (uint64 bit patterns)."""
    j = torch.arange(first_word + 1, first_word + 1 + num_words, dtype=torch.int64, device=device)
    z = j * _GOLDEN_I + _as_int64(key)
    z = (z ^ _shr(z, 30)) * _MIX1_I
    z = (z ^ _shr(z, 27)) * _MIX2_I
    return z ^ _shr(z, 31)


_tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _signs(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    table = _tables.get((device, dtype))
    if table is None:
        table = torch.from_numpy(_SIGNS).to(device=device, dtype=dtype)
        _tables[(device, dtype)] = table
    return table


def _chunk_z(key: int, start: int, count: int, table: torch.Tensor) -> torch.Tensor:
    """``table``-scaled z for elements ``[start, start + count)``; ``start`` word-aligned."""
    first_word = start // BITS_PER_WORD
    num_words = (count + BITS_PER_WORD - 1) // BITS_PER_WORD
    if table.device.type == "cpu":
        # On the CPU the hash of the few words (one per 64 elements) runs in numpy: a dozen
        # tiny torch ops would each wait on torch's thread pool, which costs more than the
        # hash itself whenever the cores are busy. The same bits (tests/rng).
        raw = _numpy_words(key, first_word, num_words).astype("<u8", copy=False).view(np.uint8)
        index = torch.from_numpy(raw.astype(np.int64))
    else:
        # x86, ARM and CUDA are little-endian, so the uint8 view is the byte order the
        # stream defines; the test vectors would catch a big-endian host.
        index = words(key, first_word, num_words, table.device).view(torch.uint8).long()
    return table.index_select(0, index).view(-1)[:count]


def rademacher(
    seed: int,
    name: str,
    count: int,
    start: int = 0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Return ``z[start : start + count]`` of tensor ``name`` under ``seed`` as a tensor."""
    if count < 0 or start < 0:
        raise ValueError(f"`count` and `start` must be >= 0, got {count}, {start}")
    device = torch.device(device)
    aligned = start - start % BITS_PER_WORD
    z = _chunk_z(tensor_key(seed, name), aligned, count + start - aligned, _signs(device, dtype))
    return z[start - aligned :]


def _round_coef(coef: float, dtype: torch.dtype) -> float:
    """The coefficient rounded to ``dtype`` (as torch rounds a float64 scalar), as a float."""
    return float(torch.tensor(coef, dtype=torch.float64).to(dtype).item())


def _check_tensor(tensor: torch.Tensor) -> None:
    if not tensor.is_floating_point():
        raise TypeError(f"`tensor` must be floating point, got {tensor.dtype}")
    if not tensor.is_contiguous():
        raise ValueError("`tensor` must be contiguous (updated in place through a flat view)")


def _add_scaled_fallback_(tensor: torch.Tensor, seed: int, name: str, coef: float) -> None:
    """The torch-ops canonical update, in chunks of :data:`fedtune.rng.CHUNK_ELEMENTS`."""
    flat = tensor.view(-1)
    # Round the coefficient to the tensor's dtype first, the same way numpy does, then
    # scale the ±1 table: every entry is exactly ±c.
    table = _signs(tensor.device, tensor.dtype) * _round_coef(coef, tensor.dtype)
    key = tensor_key(seed, name)
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        count = min(CHUNK_ELEMENTS, flat.numel() - start)
        flat[start : start + count].add_(_chunk_z(key, start, count, table))


# Elements per block of the torch-ops replay: small enough that the block stays in the
# CPU's L2 cache while every direction of a round is added to it.
REPLAY_BLOCK = 1 << 18


def _add_scaled_many_fallback_(tensor: torch.Tensor, seeds: Sequence[int], name: str,
                               coefs: Sequence[float]) -> None:
    """The torch-ops replay of one tensor: L2-sized blocks, every direction per block."""
    flat = tensor.view(-1)
    signs = _signs(tensor.device, tensor.dtype)
    tables = [signs * _round_coef(c, tensor.dtype) for c in coefs]
    keys = [tensor_key(seed, name) for seed in seeds]
    for start in range(0, flat.numel(), REPLAY_BLOCK):
        count = min(REPLAY_BLOCK, flat.numel() - start)
        block = flat[start : start + count]
        for key, table in zip(keys, tables):
            block.add_(_chunk_z(key, start, count, table))


@torch.no_grad()
def add_scaled_(tensor: torch.Tensor, seed: int, name: str, coef: float) -> None:
    """In place: ``tensor += c * z(seed, name)`` with ``c = tensor.dtype(coef)``.

    Bit-identical to :func:`fedtune.rng.add_scaled_` (numpy) for the same dtype: the
    product ``c * (±1)`` is exact, then one rounding per element in the add. On the
    compiled kernel for CPU tensors it can take; else with torch ops in chunks of
    :data:`fedtune.rng.CHUNK_ELEMENTS`, so the extra memory is a few MiB whatever the
    tensor's size.

    Args:
        tensor: a contiguous floating-point tensor (a parameter's ``.data``), any device.
        seed, name: select the stream.
        coef: the scale.
    """
    _check_tensor(tensor)
    add_scaled_multi_([(name, tensor)], [seed], [coef])


@torch.no_grad()
def add_scaled_many_(tensor: torch.Tensor, seeds: list[int], name: str, coefs: list[float]) -> None:
    """In place, for each ``(seed, coef)`` in order: ``tensor += c * z(seed, name)``.

    Bit-identical to calling :func:`add_scaled_` once per seed, in order: every element
    sees the same additions in the same order. It walks the tensor once, in cache-sized
    blocks, adding all the directions to a block before moving on, instead of streaming the
    whole tensor through memory once per direction.
    """
    if len(seeds) != len(coefs):
        raise ValueError(f"seeds and coefs differ in length: {len(seeds)} vs {len(coefs)}")
    if not tensor.is_floating_point() or not tensor.is_contiguous():
        raise TypeError("`tensor` must be a contiguous floating-point tensor")
    add_scaled_multi_([(name, tensor)], seeds, coefs)


@torch.no_grad()
def add_scaled_multi_(
    tensors: Sequence[tuple[str, torch.Tensor]],
    seeds: Sequence[int],
    coefs: Sequence[float],
    *,
    threads: int | None = None,
) -> None:
    """In place, for every ``(name, tensor)`` and each ``(seed, coef)`` in order:
    ``tensor += c * z(seed, name)``, ``c = tensor.dtype(coef)``.

    One call for a whole round (replay) or a whole perturbation (one seed): bit-identical
    to :func:`add_scaled_many_` per tensor. CPU tensors the compiled kernel takes (float32,
    float64, float16, bfloat16 with ml_dtypes; disjoint; finite coefficients) go to it in one call, spread over
    ``threads`` threads (default ``torch.get_num_threads()``); the others run torch ops.

    Args:
        tensors: ``(name, contiguous floating-point tensor)`` pairs (parameters' ``.data``).
        seeds: the directions' stream seeds, in the order they are added.
        coefs: one scale per seed.
    """
    seeds = _check_directions(seeds, coefs)
    for _, tensor in tensors:
        _check_tensor(tensor)
    if not seeds:
        return
    rest: list[tuple[str, torch.Tensor]] = list(tensors)
    cpu = [t for _, t in tensors if t.device.type == "cpu"]
    kernel = fast_kernel() if cpu else None
    # Tensors sharing memory get the definition's order (tensor by tensor).
    if kernel is not None and not _overlapping([(t.data_ptr(), t.numel() * t.element_size()) for t in cpu]):
        groups: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
        rest = []
        for name, tensor in tensors:
            ok = tensor.device.type == "cpu" and _kernel_dtype(tensor.dtype) is not None
            (groups.setdefault(tensor.dtype, []) if ok else rest).append((name, tensor))
        for dtype, group in groups.items():
            kernel_dtype = _kernel_dtype(dtype)
            assert kernel_dtype is not None
            cs = np.array([_round_coef(c, dtype) for c in coefs], dtype=kernel_numpy_dtype(kernel_dtype))
            if np.isnan(cs).any():  # NaN payloads: left to torch's own arithmetic
                rest.extend(group)
                continue
            run_kernel(kernel, kernel_dtype, [t.data_ptr() for _, t in group],
                       [t.numel() for _, t in group], [n for n, _ in group], seeds, cs,
                       threads or torch.get_num_threads())
    for name, tensor in rest:
        if len(seeds) == 1:
            _add_scaled_fallback_(tensor, seeds[0], name, coefs[0])
        else:
            _add_scaled_many_fallback_(tensor, seeds, name, coefs)


@contextmanager
def seeded_init(seed: int, *labels: str | int) -> Iterator[None]:
    """Run a block (e.g. a model's ``__init__``) under torch's global RNG seeded from
    ``(seed, *labels)``, restoring the caller's RNG state afterwards.

    Hugging Face models draw their initial weights from torch's global generator; this is
    how fedtune makes every party build bit-identical base weights from a config.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, *labels))
        yield
