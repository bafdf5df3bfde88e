"""Adapter tensors in and out of Flower messages, checked before anything uses them.

Tensors travel as one :func:`fedtune.wire.encode_bundle` payload in a ``ConfigRecord``
(``{"bundle": bytes}``): one object on Flower's wire instead of two per tensor. Both ends
know the adapter's exact layout (tensor names and shapes follow from the model and
``[lora]``), so a payload must match it name for name and shape for shape; anything else is
a :class:`fedtune.wire.WireError` naming the tensor and both shapes, and the server drops
that update for the round.

A client's upload is its *update* (trained minus the global adapter it was sent),
compressed as ``[compress]`` says; see :func:`compress_update`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import ConfigRecord

from fedtune import wire
from fedtune.compress import Compressed, Compressor, ErrorFeedback
from fedtune.config import CompressConfig
from fedtune.privacy import unflatten

__all__ = [
    "apply_update", "compress_update", "pack", "pack_compressed", "plus_vector", "shapes_of", "unpack", "unpack_update",
]


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of a state, the layout :func:`unpack` expects."""
    return {name: tuple(t.shape) for name, t in state.items()}


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def pack(state: Mapping[str, torch.Tensor]) -> ConfigRecord:
    """Tensors as one dense float32 bundle."""
    return ConfigRecord({wire.BUNDLE: wire.encode_bundle({n: _numpy(t) for n, t in state.items()})})


def pack_compressed(tensors: Mapping[str, Compressed]) -> ConfigRecord:
    """Compressed tensors as one bundle."""
    return ConfigRecord({wire.BUNDLE: wire.encode_bundle(tensors)})


def _decode(record: object, expected: Mapping[str, tuple[int, ...]], what: str, max_bytes: int) -> dict[str, Compressed]:
    if not isinstance(record, ConfigRecord) or wire.BUNDLE not in record:
        raise wire.WireError(f"{what}: expected a ConfigRecord with a {wire.BUNDLE!r} payload")
    return wire.decode_bundle(record[wire.BUNDLE], expected, what, max_bytes=max_bytes)


def unpack(
    record: object, expected: Mapping[str, tuple[int, ...]], what: str, *, max_bytes: int = wire.MAX_PAYLOAD_BYTES
) -> dict[str, torch.Tensor]:
    """The record's tensors as float32, after checking them against ``expected``.

    Args:
        record: a ``ConfigRecord`` made by :func:`pack` or :func:`pack_compressed`.
        expected: ``{name: shape}`` the payload must hold exactly.
        what: what the payload is, for error messages (e.g. ``"the update of client 7"``).

    Raises:
        WireError: on a missing payload, missing or unexpected names (different
            ``lora.target_modules``), a shape that differs (e.g. a different ``lora.rank``),
            undecodable bytes or a non-finite value.
    """
    return {n: torch.from_numpy(c.decompress()) for n, c in _decode(record, expected, what, max_bytes).items()}


def unpack_update(
    record: object,
    base: Mapping[str, torch.Tensor],
    what: str,
    *,
    max_bytes: int = wire.MAX_PAYLOAD_BYTES,
) -> dict[str, torch.Tensor]:
    """``base + update``: a client's adapter rebuilt from its (compressed) update."""
    return apply_update(base, _decode(record, shapes_of(base), what, max_bytes))


def apply_update(base: Mapping[str, torch.Tensor], update: Mapping[str, Compressed]) -> dict[str, torch.Tensor]:
    """``base + update`` per tensor, float32: the adapter as the server rebuilds it."""
    return {n: base[n].float() + torch.from_numpy(update[n].decompress()) for n in base}


def plus_vector(
    state: Mapping[str, torch.Tensor], vector: np.ndarray, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """``state`` plus an update laid out as one flat vector (:func:`fedtune.privacy.flatten`:
    the tensors of ``shapes``, in name order), added in float64 and rounded to float32 once;
    tensors not in ``shapes`` stay as they are."""
    delta = unflatten(vector, shapes)
    return {n: (t.double() + torch.from_numpy(delta[n])).float() if n in delta else t for n, t in state.items()}


def compress_update(
    trained: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    cfg: CompressConfig,
    residual: Mapping[str, np.ndarray] | None,
    rng: np.random.Generator,
) -> tuple[dict[str, Compressed], dict[str, np.ndarray] | None]:
    """Compress ``trained - base`` as ``cfg`` says.

    Args:
        trained: the client's adapter after its local steps.
        base: the global adapter it started from.
        cfg: the run's ``[compress]``.
        residual: the error-feedback residual kept since the client's last round (None: zero).
        rng: drives stochastic rounding.

    Returns:
        ``(sent, residual)``: the compressed update, and the residual to keep for the next
        round (None when ``cfg.error_feedback`` is off or nothing is compressed away).
    """
    update = {n: _numpy(trained[n]) - _numpy(base[n]) for n in trained}
    compressor = Compressor(cfg.method, cfg.topk, cfg.bits, cfg.stochastic, cfg.rescale)
    if cfg.method == "none" or not cfg.error_feedback:  # nothing to carry over
        return {n: compressor(u, rng) for n, u in update.items()}, None
    feedback = ErrorFeedback(compressor, residual)
    sent = feedback(update, rng)
    return sent, feedback.residual
