"""The wire format: round trips, exact sizes, and a decoder that refuses garbage clearly."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtune import wire
from fedtune._proto import fedtune_wire_pb2 as pb
from fedtune.compress import Compressed, Compressor

# --- seeds --------------------------------------------------------------------------------


def test_update_round_trip_and_elias_fano_size():
    keys = np.array([3, 70, 1023], np.uint64)
    scalars = np.array([0.5, -2.0, 1e-7], np.float32)

    payload = wire.encode_update(9, keys, scalars, 1e-4, universe=1024)
    round_, k, s, lr = wire.decode_update(payload, max_key=1024)

    assert (round_, lr) == (9, 1e-4)
    np.testing.assert_array_equal(k, keys)
    np.testing.assert_array_equal(s, scalars)
    msg = pb.SeedUpdate.FromString(payload)
    # 3 of 1024: Elias-Fano with floor(log2(1024/3)) = 8 low bits: 3 bytes low + 3+3+1 = 7 bits high
    assert msg.keys.coding == pb.ELIAS_FANO and msg.keys.width == 8 and len(msg.keys.data) == 3 + 1


def test_a_dense_update_uses_the_bitmap():
    keys = np.arange(0, 1024, 2, dtype=np.uint64)  # half the pool: K bits beat Elias-Fano

    payload = wire.encode_update(1, keys, np.ones(keys.size, np.float32), 0.1, universe=1024)

    msg = pb.SeedUpdate.FromString(payload)
    assert msg.keys.coding == pb.BITMAP and len(msg.keys.data) == 128
    np.testing.assert_array_equal(wire.decode_update(payload, max_key=1024)[1], keys)


def test_steps_pack_keys_in_log2_k_bits():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 1024, 10).astype(np.uint64)  # repeats and any order are kept
    g = rng.standard_normal(10).astype(np.float32)

    payload = wire.encode_steps(keys, g, universe=1024)

    msg = pb.SeedSteps.FromString(payload)
    assert msg.keys.width == 10 and len(msg.keys.data) == math.ceil(10 * 10 / 8)
    k, s = wire.decode_steps(payload, max_key=1024, max_steps=10)
    np.testing.assert_array_equal(k, keys)
    np.testing.assert_array_equal(s, g)


def test_mezo_keys_are_raw_64_bit_seeds():
    keys = np.array([2**63 + 5, 7, 2**40], np.uint64)
    g = np.ones(3, np.float32)

    k, _ = wire.decode_steps(wire.encode_steps(keys, g, universe=0), max_key=None, max_steps=3)
    np.testing.assert_array_equal(k, keys)
    ascending = np.sort(keys)
    _, k, _, _ = wire.decode_update(wire.encode_update(1, ascending, g, 0.1, universe=0), max_key=None)
    np.testing.assert_array_equal(k, ascending)


def test_key_universe():
    assert wire.key_universe(True, 4096) == 4096
    assert wire.key_universe(True, 1024) == 1024
    assert wire.key_universe(False, 4) == 0


def test_importance_round_trip():
    levels = bytes(range(16))
    assert wire.decode_importance(wire.encode_importance(levels), 16) == levels
    with pytest.raises(wire.WireError, match="seed importance: 16 bytes where 8"):
        wire.decode_importance(wire.encode_importance(levels), 8)


def _steps(keys, scalars=None, *, width=10, universe=1024, count=None, version=wire.VERSION):
    keys = np.asarray(keys, np.uint64)
    scalars = np.ones(keys.size, np.float32) if scalars is None else np.asarray(scalars, np.float32)
    indices = pb.Indices(coding=pb.PACKED, count=keys.size if count is None else count, universe=universe,
                         width=width, data=wire.pack_bits(keys, width))
    return pb.SeedSteps(version=version, keys=indices, scalars=scalars.tobytes()).SerializeToString()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "version 0"),
        (b"\xff\xff\xff", "not a fedtune payload"),
        (_steps([1, 2], version=1), "version 1, this fedtune reads version 2"),
        (_steps([1, 2], count=3), "bytes where 4 are expected"),
        (_steps([1, 2], [1.0]), "4 bytes where 8 are expected"),
        (_steps([1, 2], width=16), "16-bit keys for a universe of 1024, expected 10"),
        (_steps([1000], universe=1000), "index 1000 is outside"),
        (_steps([9]), "key 9 is outside the pool of 8"),
        (_steps([1], [math.nan]), "non-finite value nan"),
        (_steps([1], [math.inf]), "non-finite value inf"),
        (_steps([1] * 5), "5 steps, more than the 4"),
        (b"x" * 2000, "2000 bytes, more than the 1000 allowed"),
    ],
)
def test_bad_step_lists_raise_wire_error(payload, message):
    with pytest.raises(wire.WireError, match=message):
        wire.decode_steps(payload, max_key=8, max_steps=4, max_bytes=1000)


def test_an_8_bit_update_round_trips_to_its_dequantised_scalars():
    keys = np.array([2, 7, 9, 600], np.uint64)
    g = np.array([0.25, -1.5, 3e-3, 0.7], np.float32)
    q, scale = wire.quantize_scalars_q8(g)
    scalars = wire.dequantize_scalars_q8(q, scale)

    payload = wire.encode_update(4, keys, scalars, 0.01, universe=1024, q8=(q, scale))
    _, k, s, _ = wire.decode_update(payload, max_key=1024)

    assert q.tolist() == [21, -127, 0, 59] and scale == np.float32(1.5 / 127)
    assert s.dtype == np.float32 and s.tobytes() == scalars.tobytes()
    np.testing.assert_array_equal(k, keys)
    assert np.max(np.abs(s - g)) <= scale / 2
    float32 = wire.encode_update(4, keys, scalars, 0.01, universe=1024)
    assert len(float32) - len(payload) >= 3 * len(keys) - 8  # 1 byte a key instead of 4, plus the scale


def test_8_bit_codes_must_give_the_scalars_they_claim():
    q, scale = wire.quantize_scalars_q8(np.array([1.0, -0.5], np.float32))
    with pytest.raises(ValueError, match="8-bit codes"):
        wire.encode_update(1, np.array([0, 1], np.uint64), np.array([1.0, -0.5], np.float32), 0.1, 16,
                           q8=(q, scale))


@pytest.mark.parametrize(("fields", "message"), [
    ({"scalars_q8": bytes([1, 2]), "scale": 0.0}, "scale 0"),
    ({"scalars_q8": bytes([1, 2]), "scale": float("inf")}, "scale inf"),
    ({"scalars_q8": bytes([1, 0x80]), "scale": 0.1}, "-128 outside"),
    ({"scalars_q8": bytes([1, 2]), "scale": 3e38}, "overflow float32"),
    ({"scalars_q8": bytes([1, 2]), "scalars": np.ones(2, np.float32).tobytes(), "scale": 0.1}, "both"),
    ({"scalars_q8": bytes([1]), "scale": 0.1}, "seed update"),  # two keys, one code
])
def test_bad_8_bit_updates_raise_wire_error(fields, message):
    indices = pb.Indices(coding=pb.PACKED, count=2, universe=0, width=64, data=wire.pack_bits(np.array([2, 4]), 64))
    payload = pb.SeedUpdate(version=wire.VERSION, round=1, lr=0.1, keys=indices, **fields).SerializeToString()
    with pytest.raises(wire.WireError, match=message):
        wire.decode_update(payload, max_key=None)


def test_update_keys_must_ascend():
    indices = pb.Indices(coding=pb.PACKED, count=2, universe=0, width=64, data=wire.pack_bits(np.array([4, 2]), 64))
    payload = pb.SeedUpdate(version=wire.VERSION, round=1, lr=0.1, keys=indices,
                            scalars=np.ones(2, np.float32).tobytes()).SerializeToString()
    with pytest.raises(wire.WireError, match="ascending"):
        wire.decode_update(payload, max_key=None)


def test_a_bitmap_with_bits_past_its_universe_is_refused():
    indices = pb.Indices(coding=pb.BITMAP, count=1, universe=4, data=bytes([0b10000]))
    payload = pb.SeedUpdate(version=wire.VERSION, round=1, lr=0.1, keys=indices,
                            scalars=np.ones(1, np.float32).tobytes()).SerializeToString()
    with pytest.raises(wire.WireError, match="bits set past its universe"):
        wire.decode_update(payload, max_key=None)


# --- tensors ------------------------------------------------------------------------------

SHAPES = {"a": (8, 64), "b": (64, 8)}
METHODS = [Compressor("none"), Compressor("topk", topk=0.1), Compressor("quantize", bits=8),
           Compressor("quantize", bits=4), Compressor("quantize", bits=2), Compressor("topk-quantize", 0.1, 4),
           Compressor("ternary", topk=0.1), Compressor("ternary", topk=1.0), Compressor("topk", topk=1.0)]


@pytest.mark.parametrize("compressor", METHODS, ids=lambda c: f"{c.method}-{c.topk}-{c.bits}")
def test_bundles_round_trip_every_method_exactly(compressor):
    rng = np.random.default_rng(1)
    tensors = {n: compressor(rng.standard_normal(s).astype(np.float32)) for n, s in SHAPES.items()}

    decoded = wire.decode_bundle(wire.encode_bundle(tensors), SHAPES, "x")

    for name, sent in tensors.items():
        np.testing.assert_array_equal(decoded[name].decompress(), sent.decompress())


def test_compressed_bundles_are_as_small_as_their_coding_says():
    x = np.random.default_rng(2).standard_normal(100_000).astype(np.float32)
    dense = len(wire.encode_bundle({"x": x}))
    topk = len(wire.encode_bundle({"x": Compressor("topk", topk=0.01)(x)}))
    q2 = len(wire.encode_bundle({"x": Compressor("quantize", bits=2)(x)}))
    ternary = len(wire.encode_bundle({"x": Compressor("ternary", topk=0.01)(x)}))

    assert 400_000 < dense < 400_100
    assert 25_000 < q2 < 25_100  # 2 bits a value
    # 1000 positions of 100k, Elias-Fano: 6 low bits + ~2 high bits each; plus 4 bytes a value
    assert topk < 1000 * (4 + 8 / 8 + 0.25) + 100
    assert ternary < 1000 * (1 / 8 + 8 / 8 + 0.25) + 100


def test_a_bundle_of_another_layout_names_the_difference():
    payload = wire.encode_bundle({"a": np.ones((4, 64), np.float32), "b": np.ones((64, 8), np.float32)})
    with pytest.raises(wire.WireError, match=r"the update of client 3: `a` has shape \(4, 64\), expected \(8, 64\)"):
        wire.decode_bundle(payload, SHAPES, "the update of client 3")
    payload = wire.encode_bundle({"a": np.ones((8, 64), np.float32), "c": np.ones((64, 8), np.float32)})
    with pytest.raises(wire.WireError, match=r"missing \[b\], unexpected \[c\]"):
        wire.decode_bundle(payload, SHAPES, "x")


def _tensor_payload(**fields):
    tensor = pb.Tensor(name="a", shape=[8, 64], **fields)
    other = pb.Tensor(name="b", shape=[64, 8], dense=pb.Dense(dtype=pb.FLOAT32, data=bytes(4 * 512)))
    return pb.TensorBundle(version=wire.VERSION, tensors=[tensor, other]).SerializeToString()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dense": pb.Dense(dtype=pb.FLOAT32, data=bytes(100))}, "100 bytes where 2048"),
        ({"dense": pb.Dense(dtype=pb.FLOAT32, data=np.full(512, np.nan, np.float32).tobytes())}, "non-finite"),
        ({"dense": pb.Dense(dtype=7, data=b"")}, "unknown dtype"),
        ({}, "no values"),
        ({"quantized": pb.Quantized(bits=3, codes=b"")}, "3-bit codes"),
        ({"quantized": pb.Quantized(bits=8, offset=math.inf, codes=bytes(512))}, "non-finite or negative"),
        ({"quantized": pb.Quantized(bits=8, step=-1.0, codes=bytes(512))}, "non-finite or negative"),
        ({"quantized": pb.Quantized(bits=8, offset=3e38, step=3e38, codes=bytes(512))}, "overflow"),
        ({"quantized": pb.Quantized(bits=4, codes=bytes(512))}, "512 bytes where 256"),
        ({"ternary": pb.Ternary(scale=math.nan, negative=bytes(64))}, "ternary scale"),
        ({"indices": pb.Indices(coding=pb.BITMAP, count=1, universe=99, data=b""),
          "dense": pb.Dense(dtype=pb.FLOAT32, data=bytes(4))}, "positions span 99 elements, the tensor has 512"),
        ({"indices": pb.Indices(coding=pb.ELIAS_FANO, count=2, universe=512, width=8, data=bytes([1, 0, 0b11])),
          "dense": pb.Dense(dtype=pb.FLOAT32, data=bytes(8))}, "not strictly ascending"),
        ({"indices": pb.Indices(coding=pb.PACKED, count=1, universe=512, width=9, data=bytes(2)),
          "dense": pb.Dense(dtype=pb.FLOAT32, data=bytes(4))}, "cannot use the PACKED coding"),
        ({"indices": pb.Indices(coding=pb.BITMAP, count=600, universe=512, data=bytes(64)),
          "dense": pb.Dense(dtype=pb.FLOAT32, data=bytes(4))}, "600 indices, more than the 512"),
        ({"indices": pb.Indices(coding=9, count=1, universe=512, data=bytes(64)),
          "dense": pb.Dense(dtype=pb.FLOAT32, data=bytes(4))}, "unknown index coding"),
    ],
)
def test_bad_tensors_raise_wire_error_naming_the_tensor(fields, message):
    with pytest.raises(wire.WireError, match=message) as info:
        wire.decode_bundle(_tensor_payload(**fields), SHAPES, "the update of client 3")
    assert str(info.value).startswith("the update of client 3: `a`")


def test_without_an_expected_layout_the_element_cap_holds():
    huge = pb.Tensor(name="x", shape=[1 << 40], indices=pb.Indices(coding=pb.ELIAS_FANO, count=0, universe=1 << 40),
                     dense=pb.Dense(dtype=pb.FLOAT32))
    payload = pb.TensorBundle(version=wire.VERSION, tensors=[huge]).SerializeToString()
    with pytest.raises(wire.WireError, match="more than the 1000 elements allowed"):
        wire.decode_bundle(payload, None, "x", max_elements=1000)


# --- fuzz: the decoders fail only with WireError, and never allocate beyond the caps -------


def _mutations(payload: bytes):
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(payload)).map(lambda n: payload[:n]),  # truncated
        st.tuples(st.integers(0, max(len(payload) - 1, 0)), st.integers(0, 255)).map(
            lambda t: payload[: t[0]] + bytes([t[1]]) + payload[t[0] + 1 :]),  # one byte changed
        st.binary(min_size=1, max_size=20).map(lambda tail: payload + tail),  # padded
    )


_BUNDLE = wire.encode_bundle({
    "a": Compressor("topk-quantize", 0.1, 4)(np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)),
    "b": Compressor("ternary", 0.2)(np.random.default_rng(4).standard_normal((64, 8)).astype(np.float32)),
})
_STEPS = wire.encode_steps(np.array([1, 5, 900], np.uint64), np.ones(3, np.float32), 1024)
_UPDATE = wire.encode_update(3, np.array([1, 5, 900], np.uint64), np.ones(3, np.float32), 0.1, 1024)


def _accepts_or_wire_error(decode, payload):
    try:
        decode(payload)
    except wire.WireError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations(_BUNDLE))
def test_bundle_decoder_fails_only_with_wire_error(payload):
    _accepts_or_wire_error(lambda p: wire.decode_bundle(p, SHAPES, "x"), payload)
    _accepts_or_wire_error(lambda p: wire.decode_bundle(p, None, "x", max_elements=4096), payload)


@settings(max_examples=400, deadline=None)
@given(_mutations(_STEPS), _mutations(_UPDATE))
def test_seed_decoders_fail_only_with_wire_error(steps, update):
    _accepts_or_wire_error(lambda p: wire.decode_steps(p, max_key=1024, max_steps=8), steps)
    _accepts_or_wire_error(lambda p: wire.decode_update(p, max_key=1024), update)


@settings(max_examples=200, deadline=None)
@given(
    coding=st.sampled_from([pb.PACKED, pb.BITMAP, pb.ELIAS_FANO, 7]),
    count=st.integers(0, 1 << 62),
    universe=st.integers(0, (1 << 64) - 1),
    width=st.integers(0, 70),
    data=st.binary(max_size=64),
)
def test_structured_garbage_in_indices_is_refused_without_huge_allocations(coding, count, universe, width, data):
    # Counts and universes up to 2**64 with a few bytes of data: each must be refused from the
    # header and the data's length alone (an allocation sized by the header would fail here).
    tensor = pb.Tensor(name="a", shape=[8, 64], indices=pb.Indices(coding=coding, count=count, universe=universe,
                                                                    width=width, data=data),
                       dense=pb.Dense(dtype=pb.FLOAT32, data=bytes(4 * min(count, 16))))
    other = pb.Tensor(name="b", shape=[64, 8], dense=pb.Dense(dtype=pb.FLOAT32, data=bytes(4 * 512)))
    payload = pb.TensorBundle(version=wire.VERSION, tensors=[tensor, other]).SerializeToString()
    _accepts_or_wire_error(lambda p: wire.decode_bundle(p, SHAPES, "x"), payload)
    steps = pb.SeedSteps(version=wire.VERSION, keys=tensor.indices, scalars=bytes(4 * min(count, 16)))
    _accepts_or_wire_error(lambda p: wire.decode_steps(p, max_key=None, max_steps=1 << 20), steps.SerializeToString())
    update = pb.SeedUpdate(version=wire.VERSION, keys=tensor.indices, scalars=bytes(4 * min(count, 16)))
    _accepts_or_wire_error(lambda p: wire.decode_update(p, max_key=None), update.SerializeToString())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4095), max_size=200, unique=True), st.sampled_from([4096, 5000, 1 << 40]))
def test_index_sets_round_trip(indices, universe):
    keys = np.array(sorted(indices), np.uint64)
    payload = wire.encode_update(1, keys, np.ones(keys.size, np.float32), 0.1, universe)
    np.testing.assert_array_equal(wire.decode_update(payload, max_key=universe)[1], keys)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 64), st.lists(st.integers(0, (1 << 64) - 1), max_size=50))
def test_bit_packing_round_trips_every_width(width, values):
    v = np.array([x & ((1 << width) - 1) for x in values], np.uint64)
    packed = wire.pack_bits(v, width)
    assert len(packed) == math.ceil(v.size * width / 8)
    np.testing.assert_array_equal(wire.unpack_bits(packed, v.size, width), v)


def test_a_compressed_tensor_with_every_position_kept_needs_no_indices():
    c = Compressor("topk", topk=1.0)(np.ones((3, 3), np.float32))
    assert c.indices is None
    assert isinstance(c, Compressed)


# --- bytes of a Flower message on the Fleet API -------------------------------------------


def _message(payload: bytes, *, records: int = 1):
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    # distinct contents: Flower's objects are content-addressed, equal ones travel once
    content = RecordDict({f"r{i}": ConfigRecord({"p": payload + bytes([i])}) for i in range(records)})
    return Message(content, dst_node_id=12345, message_type=MessageType.TRAIN)


def test_message_bytes_count_the_payload_once_plus_flowers_framing(task_identity):
    from fedtune._flwr_compat import message_to_proto

    small, large = _message(b"x" * 100), _message(b"x" * 100_100)

    for downlink in (True, False):
        grown = wire.message_bytes(large, downlink=downlink) - wire.message_bytes(small, downlink=downlink)
        # 100,000 more payload bytes, plus a few bytes of longer varint lengths; object ids are
        # fixed-length hashes, so nothing else grows
        assert 100_000 <= grown <= 100_000 + 16
    # Flower's framing is real: more than the bare Message protobuf
    assert wire.message_bytes(small, downlink=True) > message_to_proto(small).ByteSize() + 200


def test_every_record_is_one_more_object_on_the_wire(task_identity):
    one, two = _message(b"x" * 10, records=1), _message(b"x" * 10, records=2)

    extra = wire.message_bytes(two, downlink=False) - wire.message_bytes(one, downlink=False)

    # the record's 64-hex-digit id four times (the parent's reference to it, the object tree,
    # PushMessages' objects_to_push, its own PushObject request, which also carries the
    # 36-character session id), its content (~30 B) and the field tags and gRPC prefixes
    assert 4 * 64 + 36 < extra < 4 * 64 + 36 + 160
