"""Compression of dense updates: top-k, uniform quantisation, ternary, and error feedback.

The maths only, in numpy (torch-free): what to keep and how coarsely. How the result is laid
out in bytes is :mod:`fedtune.wire`'s business (``encode_bundle``), so the two stay apart:
a :class:`Compressed` tensor is positions + values, never bytes.

Methods (``[compress] method`` in the TOML):

``none``
    float32 as it is.
``topk``
    the ``topk`` fraction of entries largest in magnitude, as float32, at their positions.
``quantize``
    every entry, uniformly quantised to ``bits`` (8, 4 or 2) between the tensor's min and
    max; round to nearest, or stochastic rounding (unbiased) with ``stochastic = true``.
``topk-quantize``
    top-k, then the kept values quantised.
``ternary``
    top-k, then every kept value replaced by ``sign * scale`` with ``scale`` the mean
    magnitude of the kept values (the L2-best single scale), in the spirit of ComPEFT.

With ``rescale`` (``[compress] rescale``, on by default) the sparsifying methods scale what
they keep up to the norm of the update (:func:`keep_norm`): a top-10 % of an AdamW update,
whose entries are all about the same size, holds only 10-35 % of its energy, and without
the rescale the server's step shrinks by that much every round.

:class:`ErrorFeedback` keeps what compression removed and adds it to the next update, so
nothing is lost, only delayed: after any number of rounds, the sum of what was sent plus the
residual equals the sum of the updates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BITS",
    "METHODS",
    "SPARSIFYING",
    "Compressed",
    "Compressor",
    "ErrorFeedback",
    "Quantized",
    "Ternary",
    "keep_norm",
    "quantize",
    "top_k",
]

_F32_MAX = float(np.finfo(np.float32).max)
METHODS = ("none", "topk", "quantize", "topk-quantize", "ternary")
SPARSIFYING = ("topk", "topk-quantize", "ternary")  # the methods that drop entries
BITS = (2, 4, 8)


@dataclass(frozen=True)
class Quantized:
    """``value = offset + code * step``, codes in ``[0, 2**bits)``."""

    codes: np.ndarray  # uint8, one per value
    bits: int
    offset: float
    step: float

    def values(self) -> np.ndarray:
        if abs(self.offset) + ((1 << self.bits) - 1) * self.step <= _F32_MAX:  # float32 cannot overflow
            return np.float32(self.offset) + self.codes.astype(np.float32) * np.float32(self.step)
        return (self.offset + self.codes.astype(np.float64) * self.step).astype(np.float32)


@dataclass(frozen=True)
class Ternary:
    """``value = -scale`` where ``negative``, else ``+scale``."""

    negative: np.ndarray  # bool, one per value
    scale: float

    def values(self) -> np.ndarray:
        scale = np.float32(self.scale)
        return np.where(self.negative, -scale, scale).astype(np.float32)


@dataclass(frozen=True)
class Compressed:
    """A tensor after compression: the values kept, and where they go.

    ``indices`` is None when every element is kept (row-major order); otherwise the strictly
    ascending positions in the flattened tensor, the rest being zero.
    """

    shape: tuple[int, ...]
    values: np.ndarray | Quantized | Ternary
    indices: np.ndarray | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def scaled(self, factor: float) -> Compressed:
        """The same positions with every value times ``factor`` (> 0); the scale, offset and
        step it changes are rounded to float32, as the wire carries them."""
        values = self.values
        if isinstance(values, Quantized):
            values = Quantized(values.codes, values.bits, _f32(values.offset * factor), _f32(values.step * factor))
        elif isinstance(values, Ternary):
            values = Ternary(values.negative, _f32(values.scale * factor))
        else:
            values = (values.astype(np.float64) * factor).astype(np.float32)
        return Compressed(self.shape, values, self.indices)

    def decompress(self) -> np.ndarray:
        values = self.values if isinstance(self.values, np.ndarray) else self.values.values()
        values = values.astype(np.float32, copy=False)
        if self.indices is None:
            return values.reshape(self.shape)
        out = np.zeros(self.numel, np.float32)
        out[self.indices] = values
        return out.reshape(self.shape)


def _f32(x: float) -> float:
    return float(np.float32(x))


def keep_norm(sent: Compressed, norm: float) -> Compressed:
    """``sent`` scaled up so that its L2 norm is ``norm``, if it is shorter; never scaled down.

    Top-k keeps the largest entries, but of an update whose entries are all about the same
    size (AdamW's: every coordinate moves by about ``lr`` a step) 10 % of them carry only
    10-35 % of its energy, and the server's step shrinks by as much. Scaling the kept
    entries back to the update's norm is ComPEFT's rescale (Yadav et al. 2023, values
    ``sign * alpha * std``) with ``alpha`` fixed by the norm instead of tuned.
    """
    have = float(np.linalg.norm(sent.decompress().astype(np.float64)))
    if not (have > 0 and norm > have and math.isfinite(norm)):
        return sent
    return sent.scaled(norm / have)


def top_k(x: np.ndarray, fraction: float) -> np.ndarray:
    """Positions (ascending) of the ``ceil(fraction * x.size)`` entries of ``x`` largest in
    magnitude (at least one of a non-empty ``x``)."""
    flat = np.ravel(x)
    n = flat.size
    k = min(n, max(1, math.ceil(fraction * n))) if n else 0
    if k == n:
        return np.arange(n, dtype=np.int64)
    positions = np.argpartition(np.abs(flat), n - k)[n - k :]
    return np.sort(positions).astype(np.int64)


def quantize(values: np.ndarray, bits: int, rng: np.random.Generator | None = None) -> Quantized:
    """Uniform quantisation of ``values`` to ``bits`` bits between their min and max.

    Round to nearest (error <= step / 2) when ``rng`` is None, else stochastic rounding
    (unbiased: the expected decoded value is the input; error < step).
    """
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    values = np.asarray(values, np.float32).ravel()
    if values.size == 0:
        return Quantized(np.zeros(0, np.uint8), bits, 0.0, 0.0)
    lo, hi = float(values.min()), float(values.max())
    levels = (1 << bits) - 1
    if hi == lo:
        return Quantized(np.zeros(values.size, np.uint8), bits, lo, 0.0)
    # the smallest float32 step if the range is denormal-small (it would round to 0)
    step = max(float(np.float32((hi - lo) / levels)), float(np.finfo(np.float32).smallest_subnormal))
    # float32 arithmetic in place (codes are < 256, exact in float32), float64 where the
    # range itself overflows float32
    wide = hi - lo > float(np.finfo(np.float32).max)
    scaled = values.astype(np.float64) - lo if wide else values - np.float32(lo)
    scaled /= step if wide else np.float32(step)
    if rng is None:
        np.rint(scaled, out=scaled)
    else:
        scaled += rng.random(values.size, dtype=np.float32)
        np.floor(scaled, out=scaled)
    np.clip(scaled, 0, levels, out=scaled)
    return Quantized(scaled.astype(np.uint8), bits, lo, step)


@dataclass(frozen=True)
class Compressor:
    """One compression method with its settings (see the module's docstring).

    Args:
        method: one of :data:`METHODS`.
        topk: the fraction of entries kept by ``topk``, ``topk-quantize`` and ``ternary``.
        bits: bits per value for ``quantize`` and ``topk-quantize``.
        stochastic: stochastic rounding for the quantising methods.
        rescale: the sparsifying methods (:data:`SPARSIFYING`) scale what they keep up to the
            norm of the tensor they stand for (:func:`keep_norm`).
    """

    method: str = "none"
    topk: float = 0.05
    bits: int = 8
    stochastic: bool = False
    rescale: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 < self.topk <= 1.0:
            raise ValueError(f"topk must be in (0, 1], got {self.topk}")
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits}")

    def __call__(
        self, x: np.ndarray, rng: np.random.Generator | None = None, *, norm: float | None = None
    ) -> Compressed:
        """Compress one tensor. ``rng`` drives stochastic rounding (required then); with
        ``rescale``, a sparsified result is scaled up to L2 norm ``norm`` (default: ``x``'s)."""
        x = np.asarray(x, np.float32)
        sent = self._compress(x, rng)
        if self.rescale and self.method in SPARSIFYING:
            sent = keep_norm(sent, float(np.linalg.norm(x.astype(np.float64))) if norm is None else norm)
        return sent

    def _compress(self, x: np.ndarray, rng: np.random.Generator | None) -> Compressed:
        shape, flat = tuple(x.shape), x.ravel()
        if self.stochastic and self.method in ("quantize", "topk-quantize") and rng is None:
            raise ValueError("stochastic rounding needs an rng")
        rounding = rng if self.stochastic else None
        if self.method == "none":
            return Compressed(shape, flat.copy())
        if self.method == "quantize":
            return Compressed(shape, quantize(flat, self.bits, rounding))
        indices = top_k(flat, self.topk)
        kept = flat[indices]
        if indices.size == flat.size:
            indices_or_none = None  # everything kept: positions are implicit
        else:
            indices_or_none = indices
        if self.method == "topk":
            return Compressed(shape, kept, indices_or_none)
        if self.method == "topk-quantize":
            return Compressed(shape, quantize(kept, self.bits, rounding), indices_or_none)
        scale = float(np.float32(np.abs(kept, dtype=np.float64).mean())) if kept.size else 0.0
        return Compressed(shape, Ternary(np.signbit(kept), scale), indices_or_none)


class ErrorFeedback:
    """Error feedback around a :class:`Compressor`: compress ``update + residual``, keep the
    difference to what was sent as the new residual.

    With ``compressor.rescale`` the sent tensor is scaled up to the norm of this round's
    *update* (not of ``update + residual``): a client's step is never shorter than what it
    trained, and whatever that sends beyond ``update + residual`` is taken back from the
    residual, so the books still balance (sum sent + residual == sum of updates). Once the
    residual has built up the top entries carry the update's norm themselves and the scale
    is 1: plain error feedback.

    Args:
        compressor: the method.
        residual: the residual carried over from earlier rounds (``{name: float32 array}``;
            the client keeps it in its persistent Flower state), or None to start at zero.
    """

    def __init__(
        self,
        compressor: Compressor,
        residual: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.compressor = compressor
        self.residual: dict[str, np.ndarray] = {k: np.asarray(v, np.float32) for k, v in (residual or {}).items()}

    def __call__(
        self, update: Mapping[str, np.ndarray], rng: np.random.Generator | None = None
    ) -> dict[str, Compressed]:
        """Compress every tensor of ``update``; the residuals are updated in place."""
        sent = {}
        for name, value in update.items():
            value = np.asarray(value, np.float32)
            residual = self.residual.get(name)
            if residual is not None and residual.shape != value.shape:
                raise ValueError(f"residual of {name!r} has shape {residual.shape}, the update {value.shape}")
            corrected = value + residual if residual is not None else value.copy()
            sent[name] = self.compressor(corrected, rng, norm=float(np.linalg.norm(value.astype(np.float64))))
            self.residual[name] = corrected - sent[name].decompress()
        return sent
