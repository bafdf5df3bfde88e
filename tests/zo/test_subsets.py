"""Zeroth-order runs over a parameter subset (PEFT LoRA adapters, the head) from a label-name head.

Real Flower simulations: every party replays the seed log onto the subset and reports the
digest of its weights; the server compares them with its own, bit for bit.
"""

import json

import pytest

from tests.conftest import run_cli

SUBSET_CONFIG = """
name = "{name}"
rounds = 3
output_dir = "{output_dir}"
[model]
config = "micro-bert"
task = "seq-cls"
head = "label-names"
[data]
source = "topics"
num_examples = 240
eval_examples = 48
max_length = 24
[federation]
num_clients = 4
clients_per_round = 3
min_replies = 3
[simulation]
num_cpus = 1
[algorithm]
name = "{algorithm}"
local_steps = 4
batch_size = 8
num_candidates = 64
lr = 1e-2
eps = 1e-2
[lora]
rank = 2
alpha = 4.0
"""


def _write(tmp_path, name, algorithm="fedkseed"):
    path = tmp_path / f"{name}.toml"
    path.write_text(SUBSET_CONFIG.format(name=name, output_dir=tmp_path / "runs", algorithm=algorithm))
    return path


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "overrides"),
    [
        ("fedkseed", ['algorithm.params="lora"']),
        ("mezo", ['algorithm.params="lora"', 'model.trainable=["*lora_B*", "*classifier*"]']),
        ("fedkseed-pro", ['model.trainable=["classifier.*"]']),
    ],
)
def test_zo_over_a_subset_replays_bit_for_bit(tmp_path, algorithm, overrides):
    path = _write(tmp_path, "subset", algorithm)

    result = run_cli("run", path, *[a for o in overrides for a in ("--set", o)], timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "subset"
    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert records[0]["eval_accuracy"] is not None  # round 0: the label-name head's zero-shot accuracy
    for record in records[1:]:
        assert record["replies"] == 3 and record["sync_mismatches"] == 0 and record["rejected"] == 0
    assert any(r["eval_loss"] != records[0]["eval_loss"] for r in records[1:])  # the subset moved


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (['data.label_names=["a", "b", "c"]'], "`data.label_names` has 3 names but the data has 4 classes"),
        (['model.trainable=["*nothing_like_this*"]'], "match no"),
        (['algorithm.params="lora"', 'lora.target_modules=["no_such_module"]'], "`lora.target_modules`"),
        (['algorithm.params="lora"', 'algorithm.name="fedit"'], "`algorithm.params` = 'lora' is for the zeroth"),
    ],
)
def test_bad_subset_or_head_exits_2_and_writes_nothing(tmp_path, overrides, expected):
    path = _write(tmp_path, "bad")

    result = run_cli("run", path, *[a for o in overrides for a in ("--set", o)], timeout=300)

    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # one error, not a traceback
    assert not (tmp_path / "runs").exists()
