"""Nothing data-dependent leaves a DP client in clear (docs/privacy.md, "What a DP client
sends in clear"): every key of every reply the server receives in real simulations, per
path, is one the docs' table names, and the only clear number is SecAgg+'s weight of 1.

tests/privacy/release_run.py runs the real ServerApp and ClientApp and records the replies.
"""

import json
import re
import subprocess
import sys

import pytest

from fedtune import wire
from tests.conftest import REPO, SMALL_CONFIG, SMALL_LORA_CONFIG

DP = "\n[privacy]\ndp = \"{dp}\"\nsecagg = {secagg}\nnoise_multiplier = 1.0\ndp_clip = 1.0\n"
PATHS = {  # the docs' row -> (the config's family, dp, secagg)
    "zeroth-order, clear": ("zo", "local", "false"),
    "zeroth-order, SecAgg+": ("zo", "distributed", "true"),
    "LoRA, clear": ("lora", "central", "false"),
    "LoRA, SecAgg+": ("lora", "distributed", "true"),
    "zeroth-order, example-level, clear": ("zo", "sample", "false"),
    "zeroth-order, example-level, SecAgg+": ("zo", "sample", "true"),
}


def _documented() -> dict[str, set[str]]:
    """The docs' table: path -> the ``record/key`` names in its second column."""
    text = (REPO / "docs" / "privacy.md").read_text(encoding="utf-8")
    start = text.index("| path | what a DP client's reply carries |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        path, carries = (cell.strip() for cell in line.strip("|").split("|"))
        rows[path] = set(re.findall(r"`([^`]+/[^`]+)`", carries))
    return rows


def _config(tmp_path, path: str) -> str:
    family, dp, secagg = PATHS[path]
    name = family + "-" + dp
    if family == "zo":
        text = SMALL_CONFIG.format(name=name, rounds=1, output_dir=tmp_path / "runs", num_clients=4, per_round=4,
                                   algorithm="fedkseed")
    else:
        text = SMALL_LORA_CONFIG.format(name=name, output_dir=tmp_path / "runs", num_clients=4, rule="fedit",
                                        two_phase="false", method="none").replace("rounds = 2", "rounds = 1")
    text = text.replace("[algorithm]\n", "[algorithm]\nweighting = \"uniform\"\n")
    return text + DP.format(dp=dp, secagg=secagg)


def _allowed(key: str, documented: set[str]) -> bool:
    return key in documented or any(d.endswith("/*") and key.startswith(d[:-1]) for d in documented)


def test_the_table_names_every_path_and_no_data_dependent_metric():
    rows = _documented()

    assert set(rows) == set(PATHS)
    named = {key.split("/", 1)[1] for keys in rows.values() for key in keys}
    for withheld in (wire.NUM_EXAMPLES, wire.TRAIN_LOSS, wire.SKIPPED_STEPS, wire.REPLAY_RATE, wire.CLIPPED):
        assert withheld not in named


@pytest.mark.slow
@pytest.mark.parametrize("path", list(PATHS))
def test_a_dp_client_sends_only_what_the_table_says(tmp_path, path):
    config = tmp_path / "dp.toml"
    config.write_text(_config(tmp_path, path))
    out = tmp_path / "out"
    out.mkdir()

    result = subprocess.run([sys.executable, str(REPO / "tests/privacy/release_run.py"), str(config), str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600, check=False)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads((out / "replies.json").read_text())
    replies = [r for r in seen["replies"] if r["type"] == "train"]
    assert replies  # the round ran and its replies were recorded
    documented = _documented()[path]
    for reply in replies:
        assert [k for k in reply["keys"] if not _allowed(k, documented)] == []
        assert all(value == 1 for value in reply["metrics"].values()), reply["metrics"]  # SecAgg+'s uniform weight
    keys = {k for reply in replies for k in reply["keys"]}
    assert all(any(_allowed(k, {d}) for k in keys) for d in documented)  # the table lists nothing that is not sent
    records = [json.loads(line) for line in (tmp_path / "runs").glob("*/metrics.jsonl").__next__().read_text().splitlines()]
    assert "train_loss" not in records[-1] and "skipped_steps" not in records[-1]
    assert records[-1]["replies"] >= 2 and "dp_epsilon" in records[-1]
