"""fedtune's payloads inside Flower messages: record keys, the protobuf format, and byte counts.

The only module that knows how updates look on the wire. Payloads are the protobuf messages
of ``proto/fedtune_wire.proto`` (Python code generated into ``fedtune/_proto``), serialised
to ``bytes`` and carried as values of a Flower ``ConfigRecord``:

- :func:`encode_steps` / :func:`decode_steps`: a client's ``(key, g)`` step list (up). A
  FedKSeed key is a candidate index packed in ``ceil(log2 K)`` bits (10 bits at K = 1024);
  a MeZO key is a raw 64-bit seed.
- :func:`encode_update` / :func:`decode_update`: one round of the seed log (down): the
  aggregated scalar per key, keys as an ascending set (Elias-Fano or a bitmap over K,
  whichever is smaller).
- :func:`encode_importance` / :func:`decode_importance`: FedKSeed-Pro's per-candidate levels.
- :func:`encode_bundle` / :func:`decode_bundle`: named tensors, dense or compressed by
  :mod:`fedtune.compress` (sparse positions, quantised codes, ternary signs).

Decoding is the server's front door. Every malformed payload (truncated, random, oversized,
another version, a shape other than expected, a non-finite value, an index out of range)
raises :class:`WireError` naming the problem, and no decoder allocates more than a small
multiple of the payload's size or the element count the caller allows.

:func:`message_bytes` counts what a Flower message costs on the Fleet API (the messages,
their object trees and every object, as Flower's own protobufs carry them), never an
estimate from tensor sizes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord
from google.protobuf.message import DecodeError

from fedtune._proto import fedtune_wire_pb2 as pb
from fedtune.compress import BITS, Compressed, Quantized, Ternary

__all__ = [
    "ACTIVATIONS",
    "ADAPTER",
    "A_MEAN",
    "BUNDLE",
    "CONFIG",
    "GRADIENT",
    "LABELS",
    "MASK",
    "MAX_PAYLOAD_BYTES",
    "METRICS",
    "PENDING",
    "PENDING_BASE",
    "PHASE",
    "PROJECTIONS",
    "PROMPT",
    "Q8_LEVELS",
    "QUERY",
    "RESIDUAL",
    "STEP",
    "VERSION",
    "WEIGHTS",
    "WireError",
    "decode_bundle",
    "decode_importance",
    "decode_steps",
    "decode_update",
    "dequantize_scalars_q8",
    "encode_bundle",
    "encode_class_sums",
    "encode_importance",
    "encode_steps",
    "encode_update",
    "key_universe",
    "message_bytes",
    "quantize_scalars_q8",
    "read_bytes",
    "read_bytes_list",
    "read_float",
    "read_int",
    "read_str",
    "record",
]

VERSION = 2  # of every payload below; version 1 was fedtune 0.1's struct format
MAX_PAYLOAD_BYTES = 1 << 30  # a payload larger than this is refused before it is parsed

# Record keys of fedtune's messages (server <-> client).
# Every record is one more object on Flower's wire (~430 bytes of ids and framing, see
# message_bytes), so a seed message has one ConfigRecord each way plus the metrics.
CONFIG = "fedtune.config"  # ConfigRecord: round-level instructions and seed-log entries (keys below)
METRICS = "fedtune.metrics"  # MetricRecord: the client's numbers (num-examples, loss, ...)
WEIGHTS = "fedtune.weights"  # ArrayRecord: full weights, only to resynchronise a client
STATE = "fedtune.state"  # ConfigRecord of a reply: the client's state and step list (keys below)

# Federated LoRA (fedtune.lora): tensors travel as a TensorBundle in a ConfigRecord
# {"bundle": bytes}, keyed by their PEFT names (e.g.
# "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight").
ADAPTER = "fedtune.adapter"  # the global adapter (down, dense) or the client's update (up)
A_MEAN = "fedtune.a-mean"  # LoRA-FAIR phase 2, down: the averaged lora_A tensors
PROJECTIONS = "fedtune.projections"  # phase 2, up: B_k A_k Ā^T (d x r) per LoRA module
BUNDLE = "bundle"  # bytes inside the records above
PENDING = "fedtune.pending"  # ArrayRecord in the client's context.state: its factors between phases
PENDING_BASE = "fedtune.pending-base"  # context.state under SecAgg+: the global factors PENDING left from
PENDING_ROUND = "fedtune.pending-round"  # ConfigRecord in context.state: {"round": r} of PENDING
RESIDUAL = "fedtune.residual"  # ArrayRecord in context.state: the error-feedback residual
PHASE = "phase"  # int in CONFIG (LoRA): 1 = train and send the adapter, 2 = send projections

# Split prompt tuning (fedtune.split): one exchange per local step, tensors as TensorBundles
# in {"bundle": bytes} records. Step s's message brings the prompt the client steps from and
# the gradient of its step s - 1; its reply brings the prompt after that step and the
# activations of step s (the last step's reply: the prompt alone, with METRICS).
PROMPT = "fedtune.prompt"  # BUNDLE {"prompt": (P, H) float32}: the client's soft prompt (down and up)
ACTIVATIONS = "fedtune.activations"  # reply: BUNDLE {"activations": (B, P+T, H) float32} at the cut, LABELS, MASK
GRADIENT = "fedtune.gradient"  # down: BUNDLE {"gradient": (B, P+T, H) float32}, d loss / d activations of step s-1
LABELS = "labels"  # list[int] in ACTIVATIONS: the batch's classes, (B,)
MASK = "attention-mask"  # list[int] in ACTIVATIONS: the tokens' attention mask (B x T, row-major; prompt not in it)

# Keys inside CONFIG.
ROUND = "round"  # int, the round being trained
STEP = "step"  # int (split-prompt): the local split step, 0 .. algorithm.local_steps
STATE_ROUND = "state-round"  # int, the global state the client must train from
RUN_KEY = "run-key"  # str, identifies the run (model + seed) the client's cache must match
UPDATES = "updates"  # list[bytes] in CONFIG: the seed-log entries to replay, oldest first
STEP_LIST = "steps"  # bytes in STATE of a reply: encode_steps' payload
NEED_STATE = "need-state"  # int in STATE of a reply: the client's state; it could not reach state-round
DIGEST = "digest"  # str in STATE of a reply: SHA-256 of the client's synced weights ("" if unchecked)

PARTITION = "partition-id"  # int in STATE of a query reply: the node's data partition; in CONFIG
# of a train message (a `fedtune run` simulation): the partition the server assigned the node
NUM_PARTITIONS = "num-partitions"  # int in CONFIG next to PARTITION
QUERY = "query"  # str in CONFIG of a query message: what the server asks (absent: the node's partition)
CLASS_SUMS = "class-sums"  # QUERY's value for model.head_init = "centroids"; the reply's STATE holds BUNDLE:
# {"sums": (classes, hidden) float32, its examples' normalised features summed per class, "counts": (classes,)}
SEED_IMPORTANCE = "seed-importance"  # bytes in CONFIG (FedKSeed-Pro): encode_importance's payload
RANK = "rank"  # int in CONFIG of a hetlora train message: the rank the client trains (its ADAPTER is cut
# to it); in METRICS of the reply, with [hetlora] prune: the rank it kept after self-pruning

# Keys of METRICS in a reply.
NUM_EXAMPLES = "num-examples"  # int, size of the client's partition (the aggregation weight)
TRAIN_LOSS = "train-loss"  # float, mean loss over the client's local steps
SKIPPED_STEPS = "skipped-steps"  # int, local steps skipped for a non-finite loss
LOCAL_LOSS = "local-loss"  # float (split-prompt, step 0's reply): mean loss of the client's local-loss steps
KEPT_EXAMPLES = "kept-examples"  # int (split-prompt, step 0's reply): the examples EL2N pruning kept
REPLAY_RATE = "replay-elements-per-s"  # float, the client's measured replay speed (0: none measured)
# Keys of METRICS in an evaluate reply (eval.federated), beside NUM_EXAMPLES (the client's
# held-out examples; 0: it holds none): float scores of the global model on them, named as
# the server's own evaluation names its (fedtune.workload.evaluate).
EVAL_LOSS = "eval_loss"  # mean cross-entropy (per response token for a causal LM, per row for seq-cls)
EVAL_ACCURACY = "eval_accuracy"  # next-token accuracy over response tokens, or argmax accuracy per row
EVAL_MACRO_F1 = "eval_macro_f1"  # seq-cls, when eval.metrics has macro_f1: the client's own macro-F1
CLIPPED = "clipped-scalars"  # int (SecAgg+ replies): entries of the client's dense vector the scalar clip changed

_F32, _F16 = np.dtype("<f4"), np.dtype("<f2")
_F32_MAX = float(np.finfo(np.float32).max)
_U64 = 1 << 64


class WireError(ValueError):
    """A payload that does not decode: truncated, wrong version, out-of-range or non-finite."""


# --- typed reads of record values ---------------------------------------------------------
# A Flower record holds a union of value types; these read one key as the type fedtune sent
# and raise WireError (not a TypeError deep inside a handler) when a peer sent another.


def record(content: Mapping[str, Any], key: str) -> ConfigRecord:
    """The ConfigRecord ``content[key]`` of a message (CONFIG, STATE, ADAPTER, ...)."""
    value = content.get(key)
    if not isinstance(value, ConfigRecord):
        raise WireError(f"message has no config record {key!r} (found {type(value).__name__})")
    return value


def read_int(values: Mapping[str, Any], key: str) -> int:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{key!r} must be an int, got {type(value).__name__}")
    return value


def read_float(values: Mapping[str, Any], key: str) -> float:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{key!r} must be a number, got {type(value).__name__}")
    return float(value)


def read_str(values: Mapping[str, Any], key: str) -> str:
    value = values.get(key)
    if not isinstance(value, str):
        raise WireError(f"{key!r} must be a str, got {type(value).__name__}")
    return value


def read_bytes(values: Mapping[str, Any], key: str) -> bytes:
    value = values.get(key)
    if not isinstance(value, bytes):
        raise WireError(f"{key!r} must be bytes, got {type(value).__name__}")
    return value


def read_bytes_list(values: Mapping[str, Any], key: str) -> list[bytes]:
    value = values.get(key)
    if not isinstance(value, list) or not all(isinstance(v, bytes) for v in value):
        raise WireError(f"{key!r} must be a list of bytes, got {type(value).__name__}")
    return list(value)


# --- bit packing -------------------------------------------------------------------------


def _packed_size(count: int, width: int) -> int:
    return (count * width + 7) // 8


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """``values`` (non-negative, each < 2**width) in ``width`` bits each, LSB first."""
    values = np.asarray(values).ravel()
    if width == 0 or values.size == 0:
        return b""
    if width in (8, 16, 32, 64):
        return values.astype(f"<u{width // 8}").tobytes()
    if width in (1, 2, 4):
        per_byte = 8 // width
        v = np.zeros(-(-values.size // per_byte) * per_byte, np.uint8)
        v[: values.size] = values
        rows = v.reshape(-1, per_byte)
        out = np.zeros(rows.shape[0], np.uint8)
        for i in range(per_byte):
            out |= rows[:, i] << np.uint8(i * width)
        return out.tobytes()
    shifts = np.arange(width, dtype=np.uint64)
    bits = ((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` (``data`` must be exactly ``ceil(count*width/8)`` bytes)."""
    if width == 0 or count == 0:
        return np.zeros(count, np.uint64)
    raw = np.frombuffer(data, np.uint8)
    if width in (8, 16, 32, 64):
        return np.frombuffer(data, f"<u{width // 8}", count=count).astype(np.uint64)
    if width in (1, 2, 4):
        per_byte = 8 // width
        mask = np.uint8((1 << width) - 1)
        parts = np.stack([(raw >> np.uint8(i * width)) & mask for i in range(per_byte)], axis=1)
        return parts.ravel()[:count].astype(np.uint64)
    bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width).astype(np.uint64)
    return (bits << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def _bit_length(n: int) -> int:
    return max(1, int(n).bit_length())


# --- index sets and lists ------------------------------------------------------------------


def _elias_fano_width(count: int, universe: int) -> int:
    if count == 0:
        return (universe - 1).bit_length() if universe else 0  # the upper part is then a single bit
    return max(0, (universe // count).bit_length() - 1)  # floor(log2(universe / count))


def _elias_fano_upper_bits(count: int, universe: int, width: int) -> int:
    return count + ((universe - 1) >> width) + 1 if universe else count


def _encode_set(indices: np.ndarray, universe: int) -> pb.Indices:
    """Strictly ascending ``indices`` in ``[0, universe)``: Elias-Fano or a bitmap, the smaller."""
    idx = np.asarray(indices, np.uint64)
    count = int(idx.size)
    width = _elias_fano_width(count, universe)
    upper_bits = _elias_fano_upper_bits(count, universe, width)
    ef_size = _packed_size(count, width) + (upper_bits + 7) // 8
    bitmap_size = (universe + 7) // 8
    if bitmap_size <= ef_size:
        bits = np.zeros(universe, np.uint8)
        bits[idx.astype(np.int64)] = 1
        data = np.packbits(bits, bitorder="little").tobytes()
        return pb.Indices(coding=pb.BITMAP, count=count, universe=universe, data=data)
    low = idx & np.uint64((1 << width) - 1)
    upper = np.zeros(upper_bits, np.uint8)
    upper[(idx >> np.uint64(width)).astype(np.int64) + np.arange(count)] = 1
    data = pack_bits(low, width) + np.packbits(upper, bitorder="little").tobytes()
    return pb.Indices(coding=pb.ELIAS_FANO, count=count, universe=universe, width=width, data=data)


def _encode_list(values: np.ndarray, universe: int) -> pb.Indices:
    """Integers in ``[0, universe)`` (0: 2**64) in any order, ``log2(universe)`` bits each."""
    values = np.asarray(values, np.uint64)
    width = 64 if universe == 0 else _bit_length(universe - 1)
    if values.size and universe and int(values.max()) >= universe:
        raise ValueError(f"key {int(values.max())} is outside [0, {universe})")
    return pb.Indices(coding=pb.PACKED, count=values.size, universe=universe, width=width,
                      data=pack_bits(values, width))


def _decode_indices(msg: pb.Indices, what: str, *, max_count: int, ascending: bool) -> np.ndarray:
    """The integers of an ``Indices``, checked against its own declared sizes and ``max_count``."""
    count, universe, width, data = int(msg.count), int(msg.universe), int(msg.width), msg.data
    if count > max_count:
        raise WireError(f"{what}: {count} indices, more than the {max_count} allowed")
    if msg.coding == pb.PACKED:
        if ascending:
            raise WireError(f"{what}: an ascending index set cannot use the PACKED coding")
        need = 64 if universe == 0 else _bit_length(universe - 1)
        if width != need:
            raise WireError(f"{what}: {width}-bit keys for a universe of {universe or '2^64'}, expected {need}")
        _expect_len(data, _packed_size(count, width), what)
        values = unpack_bits(data, count, width)
        if universe and count and int(values.max()) >= universe:
            raise WireError(f"{what}: index {int(values.max())} is outside [0, {universe})")
        return values
    if universe == 0:
        raise WireError(f"{what}: an index set needs a universe")
    if count > universe:
        raise WireError(f"{what}: {count} distinct indices cannot lie in [0, {universe})")
    if msg.coding == pb.BITMAP:
        _expect_len(data, (universe + 7) // 8, what)
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        if bits[universe:].any():
            raise WireError(f"{what}: bitmap has bits set past its universe of {universe}")
        values = np.flatnonzero(bits).astype(np.uint64)
        if values.size != count:
            raise WireError(f"{what}: bitmap holds {values.size} indices, its header says {count}")
        return values
    if msg.coding == pb.ELIAS_FANO:
        if width != _elias_fano_width(count, universe):
            raise WireError(f"{what}: Elias-Fano low width {width} does not match {count} of {universe}")
        low_size = _packed_size(count, width)
        upper_bits = _elias_fano_upper_bits(count, universe, width)
        _expect_len(data, low_size + (upper_bits + 7) // 8, what)
        upper = np.unpackbits(np.frombuffer(data, np.uint8, offset=low_size), count=upper_bits, bitorder="little")
        ones = np.flatnonzero(upper)
        if ones.size != count:
            raise WireError(f"{what}: Elias-Fano upper part holds {ones.size} indices, header says {count}")
        high = (ones - np.arange(count)).astype(np.uint64)
        values = (high << np.uint64(width)) | unpack_bits(data[:low_size], count, width)
        if count and int(values[-1]) >= universe:
            raise WireError(f"{what}: index {int(values[-1])} is outside [0, {universe})")
        if count > 1 and not np.all(values[1:] > values[:-1]):
            raise WireError(f"{what}: indices are not strictly ascending")
        return values
    raise WireError(f"{what}: unknown index coding {msg.coding}")


def _expect_len(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise WireError(f"{what}: {len(data)} bytes where {size} are expected (truncated or padded)")


def _parse(message: Any, payload: object, what: str, max_bytes: int) -> None:
    if not isinstance(payload, bytes):
        raise WireError(f"{what}: expected bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise WireError(f"{what}: {len(payload)} bytes, more than the {max_bytes} allowed")
    try:
        message.ParseFromString(payload)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WireError(f"{what}: not a fedtune payload ({exc})") from None
    if message.version != VERSION:
        raise WireError(f"{what}: version {message.version}, this fedtune reads version {VERSION}")


def _floats(data: bytes, count: int, what: str, dtype: np.dtype[Any] = _F32) -> np.ndarray:
    _expect_len(data, dtype.itemsize * count, what)
    values = np.frombuffer(data, dtype, count=count).astype(np.float32)
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise WireError(f"{what}: non-finite value {float(values[bad])} at position {bad}")
    return values


# --- seeds ---------------------------------------------------------------------------------


def key_universe(pooled: bool, num_candidates: int) -> int:
    """The range of an algorithm's keys: K candidate indices (``pooled``, FedKSeed), or 0
    (2**64 raw seeds: MeZO)."""
    return num_candidates if pooled else 0


def encode_steps(keys: np.ndarray, scalars: np.ndarray, universe: int) -> bytes:
    """Encode a client's per-step ``(key, g)`` list (the upload), in the order taken."""
    scalars = np.asarray(scalars, dtype=np.float32)
    if len(keys) != len(scalars):
        raise ValueError(f"keys and scalars differ in length: {len(keys)} vs {len(scalars)}")
    msg = pb.SeedSteps(version=VERSION, keys=_encode_list(keys, universe), scalars=scalars.astype(_F32).tobytes())
    return msg.SerializeToString()


def decode_steps(
    payload: object, *, max_key: int | None, max_steps: int, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a client's step list into ``(keys uint64, scalars float32)``.

    Raises:
        WireError: on any malformed payload, a key ``>= max_key``, or more than ``max_steps``.
    """
    what = "step list"
    msg = pb.SeedSteps()
    _parse(msg, payload, what, max_bytes)
    if msg.keys.count > max_steps:
        raise WireError(f"{what}: {msg.keys.count} steps, more than the {max_steps} configured")
    keys = _decode_indices(msg.keys, what, max_count=max_steps, ascending=False)
    if max_key is not None and keys.size and int(keys.max()) >= max_key:
        raise WireError(f"{what}: key {int(keys.max())} is outside the pool of {max_key} candidates")
    return keys, _floats(msg.scalars, keys.size, what)


Q8_LEVELS = 127
"""An 8-bit seed-log entry's codes lie in ``[-Q8_LEVELS, Q8_LEVELS]`` (symmetric, no -128)."""


def quantize_scalars_q8(scalars: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """One round's ``G`` on an 8-bit grid: ``(q int8, scale float32)`` with
    ``scale = float32(max|G| / 127)`` and ``q = round(G / scale)`` (half to even).

    What a party replays is :func:`dequantize_scalars_q8` of the result, the same bits on
    every machine: one float32 multiply per key. The rounding error of each key is at most
    ``scale / 2`` = max|G| / 254. All-zero ``G`` gives scale 0 and q 0.
    """
    g = np.asarray(scalars, np.float32)
    if g.size and not np.all(np.isfinite(g)):
        raise ValueError("cannot quantise non-finite scalars")
    top = float(np.max(np.abs(g))) if g.size else 0.0
    scale = np.float32(top / Q8_LEVELS)
    if scale == 0 or not np.isfinite(scale):
        return np.zeros(g.size, np.int8), np.float32(0.0)
    q = np.clip(np.rint(g.astype(np.float64) / float(scale)), -Q8_LEVELS, Q8_LEVELS).astype(np.int8)
    return q, scale


def dequantize_scalars_q8(q: np.ndarray, scale: np.float32 | float) -> np.ndarray:
    """``float32(q) * float32(scale)``: the canonical scalars of an 8-bit entry."""
    with np.errstate(over="ignore"):  # an overflowing scale gives inf: the decoder refuses it
        return np.asarray(q, np.int8).astype(np.float32) * np.float32(scale)


def encode_update(
    round: int, keys: np.ndarray, scalars: np.ndarray, lr: float, universe: int, *,
    q8: tuple[np.ndarray, np.float32] | None = None,
) -> bytes:
    """Encode one round's aggregated ``(key, G)`` pairs (the broadcast); keys strictly ascending.

    ``q8 = (q, scale)`` (from :func:`quantize_scalars_q8`) sends one byte per key instead of
    four; ``scalars`` must then be exactly :func:`dequantize_scalars_q8` of it, what every
    decoder returns.
    """
    scalars = np.asarray(scalars, dtype=np.float32)
    keys = np.asarray(keys, np.uint64)
    if len(keys) != len(scalars):
        raise ValueError(f"keys and scalars differ in length: {len(keys)} vs {len(scalars)}")
    coded = _encode_list(keys, 0) if universe == 0 else _encode_set(keys, universe)
    if q8 is None:
        msg = pb.SeedUpdate(version=VERSION, round=round, lr=float(lr), keys=coded, scalars=scalars.tobytes())
    else:
        q, scale = q8
        if len(q) != len(keys) or not np.array_equal(dequantize_scalars_q8(q, scale), scalars):
            raise ValueError("the 8-bit codes do not give the update's scalars")
        msg = pb.SeedUpdate(version=VERSION, round=round, lr=float(lr), keys=coded,
                            scalars_q8=np.asarray(q, np.int8).tobytes(), scale=float(scale))
    return msg.SerializeToString()


def decode_update(
    payload: object, *, max_key: int | None, max_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[int, np.ndarray, np.ndarray, float]:
    """Decode a broadcast update into ``(round, keys, scalars, lr)``.

    Raises:
        WireError: on any malformed payload.
    """
    what = "seed update"
    msg = pb.SeedUpdate()
    _parse(msg, payload, what, max_bytes)
    if not math.isfinite(msg.lr):
        raise WireError(f"{what}: non-finite lr {msg.lr}")
    q8 = bool(msg.scalars_q8)
    if q8 and msg.scalars:
        raise WireError(f"{what}: both float32 and 8-bit scalars")
    if q8 and not (math.isfinite(msg.scale) and msg.scale > 0):
        raise WireError(f"{what}: 8-bit scalars with scale {msg.scale}")
    # Every key carries a 4-byte scalar (1 byte if 8-bit): the payload's length bounds the count.
    max_count = len(msg.scalars_q8) if q8 else len(msg.scalars) // 4
    keys = _decode_indices(msg.keys, what, max_count=max_count, ascending=msg.keys.coding != pb.PACKED)
    if msg.keys.coding == pb.PACKED and keys.size > 1 and not np.all(keys[1:] > keys[:-1]):
        raise WireError(f"{what}: keys are not strictly ascending (the canonical replay order)")
    if max_key is not None and keys.size and int(keys.max()) >= max_key:
        raise WireError(f"{what}: key {int(keys.max())} is outside the pool of {max_key} candidates")
    if not q8:
        return int(msg.round), keys, _floats(msg.scalars, keys.size, what), float(msg.lr)
    _expect_len(msg.scalars_q8, keys.size, what)
    q = np.frombuffer(msg.scalars_q8, np.int8, count=keys.size)
    if keys.size and int(q.min()) < -Q8_LEVELS:
        raise WireError(f"{what}: 8-bit code {int(q.min())} outside [-{Q8_LEVELS}, {Q8_LEVELS}]")
    scalars = dequantize_scalars_q8(q, np.float32(msg.scale))
    if not np.all(np.isfinite(scalars)):
        raise WireError(f"{what}: 8-bit scalars overflow float32 at scale {msg.scale}")
    return int(msg.round), keys, scalars, float(msg.lr)


def encode_importance(levels: bytes) -> bytes:
    """FedKSeed-Pro's importance levels (one byte per candidate), for the broadcast."""
    return pb.SeedImportance(version=VERSION, levels=levels).SerializeToString()


def decode_importance(payload: object, num_candidates: int) -> bytes:
    """The levels of :func:`encode_importance`'s payload, one byte per candidate."""
    what = "seed importance"
    msg = pb.SeedImportance()
    _parse(msg, payload, what, MAX_PAYLOAD_BYTES)
    _expect_len(msg.levels, num_candidates, what)
    return bytes(msg.levels)


# --- tensors -------------------------------------------------------------------------------


def _encode_tensor(msg: pb.Tensor, name: str, tensor: Compressed | np.ndarray) -> None:
    if not isinstance(tensor, Compressed):
        array = np.asarray(tensor, np.float32)
        tensor = Compressed(tuple(array.shape), array.ravel())
    msg.name = name
    msg.shape.extend(tensor.shape)
    if tensor.indices is not None:
        msg.indices.CopyFrom(_encode_set(tensor.indices, tensor.numel))
    values = tensor.values
    if isinstance(values, Quantized):
        q = msg.quantized
        q.bits, q.offset, q.step, q.codes = values.bits, values.offset, values.step, pack_bits(values.codes, values.bits)
    elif isinstance(values, Ternary):
        msg.ternary.scale, msg.ternary.negative = values.scale, pack_bits(values.negative, 1)
    else:
        msg.dense.dtype, msg.dense.data = pb.FLOAT32, np.asarray(values, _F32).tobytes()


def encode_bundle(tensors: Mapping[str, Compressed | np.ndarray]) -> bytes:
    """Named tensors (float32 arrays, or :class:`fedtune.compress.Compressed`) as one payload."""
    msg = pb.TensorBundle(version=VERSION)
    for name, tensor in tensors.items():
        _encode_tensor(msg.tensors.add(), name, tensor)
    return msg.SerializeToString()


def encode_class_sums(sums: np.ndarray, counts: np.ndarray) -> bytes:
    """A client's reply payload to a :data:`CLASS_SUMS` query: ``sums (classes, hidden)`` and
    ``counts (classes,)``, float32 (:func:`fedtune.server.centroids.centroid_head` decodes it)."""
    return encode_bundle({"sums": np.asarray(sums, np.float32), "counts": np.asarray(counts, np.float32)})


def _decode_tensor(msg: pb.Tensor, shape: tuple[int, ...], what: str) -> Compressed:
    numel = math.prod(shape)
    count = numel
    indices = None
    if msg.HasField("indices"):
        if msg.indices.universe != numel:
            raise WireError(f"{what}: positions span {msg.indices.universe} elements, the tensor has {numel}")
        indices = _decode_indices(msg.indices, what, max_count=numel, ascending=True).astype(np.int64)
        count = indices.size
    kind = msg.WhichOneof("values")
    values: np.ndarray | Quantized | Ternary
    if kind == "dense":
        if msg.dense.dtype == pb.FLOAT32:
            values = _floats(msg.dense.data, count, what)
        elif msg.dense.dtype == pb.FLOAT16:
            values = _floats(msg.dense.data, count, what, _F16)
        else:
            raise WireError(f"{what}: unknown dtype {msg.dense.dtype}")
    elif kind == "quantized":
        q = msg.quantized
        if q.bits not in BITS:
            raise WireError(f"{what}: {q.bits}-bit codes; fedtune reads {BITS}")
        if not (math.isfinite(q.offset) and math.isfinite(q.step) and q.step >= 0):
            raise WireError(f"{what}: non-finite or negative quantisation offset {q.offset} / step {q.step}")
        _expect_len(q.codes, _packed_size(count, q.bits), what)
        codes = unpack_bits(q.codes, count, q.bits).astype(np.uint8)
        values = Quantized(codes, int(q.bits), float(q.offset), float(q.step))
        if abs(q.offset + ((1 << q.bits) - 1) * q.step) > _F32_MAX:  # the largest code's value
            raise WireError(f"{what}: quantised values overflow float32")
    elif kind == "ternary":
        t = msg.ternary
        if not (math.isfinite(t.scale) and t.scale >= 0):
            raise WireError(f"{what}: non-finite or negative ternary scale {t.scale}")
        _expect_len(t.negative, _packed_size(count, 1), what)
        values = Ternary(unpack_bits(t.negative, count, 1).astype(bool), float(t.scale))
    else:
        raise WireError(f"{what}: no values")
    return Compressed(shape, values, indices)


def decode_bundle(
    payload: object,
    expected: Mapping[str, tuple[int, ...]] | None,
    what: str,
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    max_elements: int = 1 << 28,
) -> dict[str, Compressed]:
    """Decode :func:`encode_bundle`'s payload, checked name for name and shape for shape.

    Args:
        payload: the bytes.
        expected: ``{name: shape}`` the payload must hold exactly (in any order), or None to
            accept any names and shapes up to ``max_elements`` elements in all.
        what: what the payload is, for error messages (e.g. ``"the update of client 7"``).

    Returns:
        ``{name: Compressed}`` in ``expected``'s order (call ``.decompress()`` for arrays).

    Raises:
        WireError: on any malformed payload, missing or unexpected names (e.g. other
            ``lora.target_modules``), another shape (e.g. another ``lora.rank``), an index out
            of range or a non-finite value.
    """
    msg = pb.TensorBundle()
    _parse(msg, payload, what, max_bytes)
    names = [t.name for t in msg.tensors]
    if len(set(names)) != len(names):
        raise WireError(f"{what}: a tensor name appears twice")
    if expected is not None:
        missing, extra = set(expected) - set(names), set(names) - set(expected)
        if missing or extra:
            raise WireError(
                f"{what}: tensors differ from the expected layout (different `lora.target_modules` or "
                f"algorithm?): missing [{_listing(missing)}], unexpected [{_listing(extra)}]"
            )
    out: dict[str, Compressed] = {}
    total = 0
    for t in msg.tensors:
        shape = tuple(int(s) for s in t.shape)
        if expected is not None and shape != tuple(expected[t.name]):
            raise WireError(
                f"{what}: `{t.name}` has shape {shape}, expected {tuple(expected[t.name])} "
                "(a different `lora.rank`, or another model?)"
            )
        total += math.prod(shape)
        if expected is None and total > max_elements:
            raise WireError(f"{what}: more than the {max_elements} elements allowed")
        out[t.name] = _decode_tensor(t, shape, f"{what}: `{t.name}`")
    return {n: out[n] for n in expected} if expected is not None else out


def _listing(names: set[str], shown: int = 3) -> str:
    first = sorted(names)[:shown]
    return ", ".join(first) + (f" and {len(names) - shown} more" if len(names) > shown else "")


# --- what a message costs on the Fleet API -------------------------------------------------


_GRPC_PREFIX = 5  # gRPC's length-prefixed framing: 1 flag byte + 4 length bytes per message


def message_bytes(message: Any, *, downlink: bool) -> int:
    """Bytes a Flower message costs on the Fleet API between SuperLink and SuperNode.

    Built from Flower's own protobufs exactly as its SuperNode exchanges them (flwr 1.41): the
    message travels without content plus its object tree; then every object (records,
    arrays, chunks) travels on its own. Down (``downlink=True``): ``PullMessages``, one
    ``PullObject`` per object, ``ConfirmMessageReceived``. Up: ``PushMessages``, one
    ``PushObject`` per object. Requests and responses both count, each with 5 bytes of
    length prefix (gRPC's framing, when the Fleet API runs over gRPC). Flower 1.41's default
    Fleet transport is protobuf over HTTPS: its HTTP headers, TLS records and the SuperNode's
    idle polling are the channel's and are not counted (``bench/deploy.py`` measures them).
    """
    from fedtune._flwr_compat import (
        fleet_pb2,
        get_all_nested_objects,
        get_object_tree,
        message_pb2,
        message_to_proto,
        node_pb2,
        remove_content_from_message,
    )

    node = node_pb2.Node(node_id=message.metadata.dst_node_id if downlink else message.metadata.src_node_id)
    run_id = message.metadata.run_id
    header = message_to_proto(remove_content_from_message(message))
    sizes = []
    if message.has_content():  # every object travels, the message itself included
        tree, objects = get_object_tree(message), get_all_nested_objects(message)
    else:
        tree, objects = message_pb2.ObjectTree(), {}
    if downlink:
        sizes.append(fleet_pb2.PullMessagesRequest(node=node).ByteSize())
        sizes.append(fleet_pb2.PullMessagesResponse(messages_list=[header], message_object_trees=[tree]).ByteSize())
        for object_id, obj in objects.items():
            sizes.append(message_pb2.PullObjectRequest(node=node, run_id=run_id, object_id=object_id).ByteSize())
            sizes.append(message_pb2.PullObjectResponse(
                object_found=True, object_available=True, object_content=obj.deflate()).ByteSize())
        confirm = message_pb2.ConfirmMessageReceivedRequest(node=node, run_id=run_id, message_object_id=message.object_id)
        sizes += [confirm.ByteSize(), message_pb2.ConfirmMessageReceivedResponse().ByteSize()]
    else:
        sizes.append(fleet_pb2.PushMessagesRequest(
            node=node, messages_list=[header], message_object_trees=[tree], clientapp_runtime_list=[0.0]).ByteSize())
        session = str(uuid.UUID(int=0))  # the SuperLink's push session: a uuid4 string
        sizes.append(fleet_pb2.PushMessagesResponse(objects_to_push=list(objects), session_id=session).ByteSize())
        for object_id, obj in objects.items():
            sizes.append(message_pb2.PushObjectRequest(node=node, run_id=run_id, object_id=object_id,
                                                       object_content=obj.deflate(), session_id=session).ByteSize())
            sizes.append(message_pb2.PushObjectResponse(stored=True).ByteSize())
    return sum(sizes) + _GRPC_PREFIX * len(sizes)
