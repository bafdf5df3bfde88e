"""The seed log and checkpoints: durable, ordered, and loud about damage."""

import logging

import numpy as np
import pytest

from fedtune import wire
from fedtune.zo.checkpoint import latest_checkpoint, save_checkpoint
from fedtune.zo.seedlog import SeedLog, SeedLogError


def _entry(round_, n=3):
    keys = np.arange(n, dtype=np.uint64) * 2 + round_
    return wire.encode_update(round_, keys, np.full(n, 0.5 * round_, np.float32), 1e-4, 1024)


def test_appended_rounds_read_back_in_order(tmp_path):
    path = tmp_path / "seedlog.bin"
    seedlog = SeedLog.open(path)
    for r in (1, 2, 3):
        seedlog.append(_entry(r))

    again = SeedLog.open(path)

    assert again.rounds == 3
    assert again.payloads == [_entry(1), _entry(2), _entry(3)]
    # 4-byte length + payload + 4-byte CRC per record
    assert path.stat().st_size == sum(len(_entry(r)) + 8 for r in (1, 2, 3))


def test_out_of_order_append_is_refused(tmp_path):
    seedlog = SeedLog.open(tmp_path / "seedlog.bin")
    seedlog.append(_entry(1))

    with pytest.raises(ValueError, match="cannot append round 3 after round 1"):
        seedlog.append(_entry(3))


def test_torn_tail_is_detected_named_and_repairable(tmp_path, caplog):
    path = tmp_path / "seedlog.bin"
    seedlog = SeedLog.open(path)
    for r in (1, 2):
        seedlog.append(_entry(r))
    good_size = path.stat().st_size
    with open(path, "ab") as f:  # a crash in the middle of writing round 3
        f.write(b"\x20\x00\x00\x00partial")

    with pytest.raises(SeedLogError) as info:
        SeedLog.open(path)
    assert info.value.last_good_round == 2
    assert str(path) in str(info.value) and "torn record" in str(info.value)

    with caplog.at_level(logging.WARNING):
        repaired = SeedLog.open(path, repair=True)
    assert repaired.rounds == 2 and path.stat().st_size == good_size
    assert "truncating to round 2" in caplog.text
    repaired.append(_entry(3))
    assert SeedLog.open(path).rounds == 3


def test_flipped_bit_fails_the_crc(tmp_path):
    path = tmp_path / "seedlog.bin"
    seedlog = SeedLog.open(path)
    for r in (1, 2):
        seedlog.append(_entry(r))
    data = bytearray(path.read_bytes())
    data[len(_entry(1)) + 8 + 10] ^= 0x01  # inside round 2's payload

    path.write_bytes(bytes(data))

    with pytest.raises(SeedLogError, match="CRC mismatch") as info:
        SeedLog.open(path)
    assert info.value.last_good_round == 1


def test_checkpoint_round_trip_and_fallback_past_a_corrupt_one(tmp_path, caplog):
    arrays = lambda v: [("a", np.full((2, 3), v, np.float32)), ("b", np.arange(4, dtype=np.float32) + v)]
    for r in (2, 4, 6):
        save_checkpoint(tmp_path, r, arrays(float(r)), keep=3)
    newest = tmp_path / "state-6.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7] + b"garbage")

    with caplog.at_level(logging.WARNING):
        round_, loaded = latest_checkpoint(tmp_path, max_round=10)

    assert round_ == 4
    np.testing.assert_array_equal(loaded["a"], np.full((2, 3), 4.0, np.float32))
    assert "state-6.safetensors" in caplog.text
    assert latest_checkpoint(tmp_path, max_round=3)[0] == 2
    assert latest_checkpoint(tmp_path, max_round=1) is None


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for r in (1, 2, 3, 4):
        save_checkpoint(tmp_path, r, [("a", np.zeros(2, np.float32))], keep=2)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-3.safetensors", "state-4.safetensors"]
