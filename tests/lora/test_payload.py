"""Adapter payloads are checked name for name and shape for shape, with clear errors; uploads
are compressed updates that the server rebuilds on the global adapter."""

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedtune import wire
from fedtune.config import CompressConfig
from fedtune.lora.payload import compress_update, pack, pack_compressed, unpack, unpack_update
from fedtune.wire import WireError

Q = "base_model.model.bert.encoder.layer.0.attention.self.query"
EXPECTED = {f"{Q}.lora_A.weight": (8, 64), f"{Q}.lora_B.weight": (64, 8)}


def _state(seed=0, **shapes):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in (shapes or EXPECTED).items()}


def test_a_matching_payload_decodes_to_the_same_float32_tensors():
    state = _state()

    tensors = unpack(pack(state), EXPECTED, "the update of client 3")

    assert list(tensors) == list(EXPECTED)
    for name, t in tensors.items():
        assert t.dtype == torch.float32
        torch.testing.assert_close(t, state[name], rtol=0, atol=0)


def test_another_rank_names_the_module_and_both_shapes():
    record = pack(_state(**{f"{Q}.lora_A.weight": (4, 64), f"{Q}.lora_B.weight": (64, 4)}))

    with pytest.raises(WireError) as info:
        unpack(record, EXPECTED, "the update of client 3")

    message = str(info.value)
    assert message.startswith("the update of client 3: ")
    assert f"`{Q}.lora_A.weight` has shape (4, 64), expected (8, 64)" in message
    assert "`lora.rank`" in message


def test_other_target_modules_list_missing_and_unexpected_tensors():
    v = Q.replace("query", "value")
    record = pack(_state(**{f"{v}.lora_A.weight": (8, 64), f"{v}.lora_B.weight": (64, 8)}))

    with pytest.raises(WireError, match=r"`lora.target_modules`.*missing \[.*query.lora_A.weight.*"
                                        r"unexpected \[.*value.lora_A.weight"):
        unpack(record, EXPECTED, "the update of client 3")


def test_non_finite_values_are_refused():
    state = _state()
    state[f"{Q}.lora_B.weight"][3, 1] = math.nan

    with pytest.raises(WireError, match="lora_B.weight`: non-finite value nan at position 25"):
        unpack(pack(state), EXPECTED, "x")


@pytest.mark.parametrize("record", [ArrayRecord(), ConfigRecord({"other": b""}), ConfigRecord({wire.BUNDLE: 3})])
def test_a_record_without_a_bundle_is_refused(record):
    with pytest.raises(WireError, match="x: expected"):
        unpack(record, EXPECTED, "x")


def test_a_truncated_bundle_is_refused():
    payload = pack(_state())[wire.BUNDLE]
    with pytest.raises(WireError, match="x: "):
        unpack(ConfigRecord({wire.BUNDLE: payload[:-10]}), EXPECTED, "x")


@pytest.mark.parametrize("method", ["none", "topk", "quantize", "topk-quantize", "ternary"])
def test_the_server_rebuilds_what_the_client_sent_on_the_global_adapter(method):
    base, trained = _state(0), _state(1)
    cfg = CompressConfig(method=method, topk=0.1, bits=4)

    sent, residual = compress_update(trained, base, cfg, None, np.random.default_rng(0))
    rebuilt = unpack_update(pack_compressed(sent), base, "x")

    for name in base:
        expected = base[name] + torch.from_numpy(sent[name].decompress())
        torch.testing.assert_close(rebuilt[name], expected, rtol=0, atol=0)
        if method == "none":
            torch.testing.assert_close(rebuilt[name], trained[name], rtol=0, atol=1e-6)
            assert residual is None
        else:  # what was not sent is in the residual
            update = (trained[name] - base[name]).numpy()
            np.testing.assert_allclose(sent[name].decompress() + residual[name], update, atol=1e-6)


def test_compression_shrinks_the_upload():
    base, trained = _state(0), _state(1)
    dense = len(pack_compressed(compress_update(trained, base, CompressConfig(), None, None)[0])[wire.BUNDLE])
    cfg = CompressConfig(method="topk-quantize", topk=0.1, bits=8)
    small = len(pack_compressed(compress_update(trained, base, cfg, None, np.random.default_rng(0))[0])[wire.BUNDLE])

    # 4 bytes a value dense; kept: 10 %, each 1 byte + ~5.3 bits of Elias-Fano position: ~24x less
    # on the values, less per-tensor headers on these two small tensors
    assert dense > 4 * 1024 and small * 10 < dense
