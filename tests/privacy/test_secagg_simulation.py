"""Real SecAgg+ in a real Flower simulation: the sum is right, the server sees only masked
vectors, and drop-outs (and a malformed masked vector) do not stop the round.

tests/privacy/secagg_run.py runs the real ServerApp and ClientApp with recording on both
sides; see its docstring for the three clients that misbehave from round 2 on.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedtune import wire
from fedtune.config import load_config
from fedtune.privacy import SecAggSettings, error_bound, q_ratio
from fedtune.zo.seedlog import SeedLog
from tests.conftest import REPO, SMALL_CONFIG

SECAGG = """
[privacy]
secagg = true
reconstruction_threshold = 3
"""


def _clear(out, round_, partitions):
    files = {p: np.load(out / f"clear-r{round_}-p{p}.npz") for p in partitions}
    return {p: (f["vector"], float(f["weight"])) for p, f in files.items()}


@pytest.mark.slow
def test_secagg_sum_is_right_server_sees_only_masks_and_dropouts_survive(tmp_path):
    config = tmp_path / "secagg.toml"
    config.write_text(SMALL_CONFIG.format(name="secagg", rounds=2, output_dir=tmp_path / "runs", num_clients=6,
                                          per_round=6, algorithm="fedkseed-pro") + SECAGG)
    out = tmp_path / "out"
    out.mkdir()

    result = subprocess.run([sys.executable, str(REPO / "tests/privacy/secagg_run.py"), str(config), str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cfg = load_config(config)
    settings = SecAggSettings.from_config(cfg)
    run_dir = Path(json.loads((out / "server.json").read_text())["run_dir"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    updates = [wire.decode_update(p, max_key=64) for p in SeedLog.open(run_dir / "seedlog.bin").payloads]
    assert len(updates) == 2
    # Round 1: all six clients; round 2: partition 0 dropped before its masked vector,
    # partition 1's truncated vector was refused, partition 2 dropped after its vector was summed.
    summed = {1: range(6), 2: range(2, 6)}
    for round_, (record, (r, keys, scalars, _)) in enumerate(zip(records[1:], updates), start=1):
        clear = _clear(out, round_, summed[round_])
        weights = [w for _, w in clear.values()]
        exact = sum(w * v for v, w in clear.values()) / sum(weights)
        secure = np.zeros(64)
        secure[keys.astype(np.int64)] = scalars
        bound = error_bound(weights, settings)
        assert r == round_ and record["secagg_error_bound"] == pytest.approx(bound)
        assert bound < 1e-4  # 2**29 levels over +-128, six clients
        # within the quantisation bound, plus float32's rounding of the broadcast G
        assert np.all(np.abs(secure - exact) <= bound + np.abs(exact) * 2**-23)
        # the seeds no client drew are exactly absent, as in the clear path
        assert set(keys.tolist()) == set(np.flatnonzero(exact).tolist())
        assert record["sync_mismatches"] == 0  # every summed client replayed to the server's weights
    assert [(r["replies"], r["rejected"], r["failed"]) for r in records[1:]] == [(6, 0, 0), (4, 1, 1)]

    # What reached the server: masked vectors only, none equal to (or near) a client's update.
    seen = json.loads((out / "server.json").read_text())
    assert seen["clear_steps"] == 0 and seen["masked"] == 6 + 5
    masked_files = sorted(out.glob("masked-r*.npy"))
    assert len(masked_files) == 11
    for path in masked_files:
        round_ = int(path.name.split("-")[1][1:])
        masked = np.load(path).astype(np.float64)
        assert masked.max() > settings.quantization_range  # masks are uniform over [0, 2**32)
        for vector, weight in _clear(out, round_, [p for p in range(6) if (out / f"clear-r{round_}-p{p}.npz").exists()]).values():
            dq = q_ratio(weight, settings) / settings.quantization_range
            quantised = (vector * dq + settings.clipping_range) * settings.quantization_range / (2 * settings.clipping_range)
            if len(masked) == len(vector):
                assert not np.any(np.abs(masked - quantised) <= 1)  # not the client's quantised update
                assert not np.any(masked == vector)  # nor its clear values
