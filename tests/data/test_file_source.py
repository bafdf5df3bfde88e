"""data.source = "file": config keys, and what a run's Workload makes of a local dataset."""

import dataclasses
import logging

import pytest
import tomllib
from datasets import Dataset

from fedtune.config import ConfigError, dump_toml, parse_config
from fedtune.data.hf import write_dolly
from fedtune.workload import Workload

BASE = {
    "model": {"config": "micro-llama"},
    "federation": {"num_clients": 6, "clients_per_round": 3, "min_replies": 2},
}


def _config(data, **top):
    return parse_config({**BASE, **top, "data": {"source": "file", "max_length": 40, **data}})


@pytest.fixture(scope="module")
def dolly_dir(tmp_path_factory):
    return str(write_dolly(tmp_path_factory.mktemp("dolly") / "data", num_examples=240, seed=1))


def test_fields_table_parses_from_toml_and_set_and_dumps_back():
    cfg = _config({"path": "x.parquet", "fields": {"prompt": "question"}})
    overridden = parse_config({**BASE, "data": {"source": "file", "path": "x"}},
                              ["data.fields.response=answer", 'data.fields.label="topic"'])

    assert cfg.data.fields == (("prompt", "question"),)
    assert overridden.data.fields == (("label", "topic"), ("response", "answer"))
    assert parse_config(tomllib.loads(dump_toml(overridden))) == overridden


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"source": "instructions", "template": "dolly"}, "`data.template` applies to data.source = 'file'"),
        ({"path": "x", "fields": {"question": "q"}}, "`data.fields` maps question, not a role of data.template"),
        ({"path": "x", "fields": ["prompt"]}, "`data.fields` must be a table of strings"),
        ({"path": "x", "partition": "by-field"}, "`data.partition` = 'by-field' needs data.source = 'file' and"),
        ({"path": "x", "partition_field": "category"}, "`data.partition_field` = 'category' applies to"),
        ({"path": "x", "template": "chat"}, "`data.template` = 'chat' needs a chat model's tokenizer"),
    ],
)
def test_file_keys_are_checked(data, expected):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "data": {"source": "file", **data}})

    assert any(expected in line for line in err.value.errors), err.value.errors


def test_dolly_by_field_gives_one_client_per_task(dolly_dir):
    workload = Workload(_config({"path": dolly_dir, "template": "dolly", "partition": "by-field",
                                 "partition_field": "category"}))
    train, held_out = workload.examples

    parts = workload.partitions(6)
    names = workload.label_names

    assert len(train) + len(held_out) == 240 and len(held_out) == 24  # a tenth, seeded
    assert names == ("copy", "first", "last", "max", "reverse", "sort")
    for k, part in enumerate(parts):
        assert {names[train[i].label] for i in part} == {names[k]}  # client k: the k-th category, sorted
    assert workload.partition(2, 6) == parts[2].tolist()


def test_grouped_values_and_seeded_holdout_are_deterministic(dolly_dir):
    cfg = _config({"path": dolly_dir, "template": "dolly", "partition": "by-field",
                   "partition_field": "category", "group_values": True},
                  federation={"num_clients": 4, "clients_per_round": 2, "min_replies": 1})
    first, second = Workload(cfg), Workload(cfg)
    other_seed = Workload(dataclasses.replace(cfg, seed=1))

    parts = first.partitions(4)

    assert [p.tolist() for p in parts] == [p.tolist() for p in second.partitions(4)]
    assert min(len(p) for p in parts) > 0
    assert first.examples == second.examples
    assert first.examples[1] != other_seed.examples[1]  # the held-out rows follow the seed


def test_eval_path_is_the_held_out_set(tmp_path, dolly_dir):
    held = tmp_path / "held.jsonl"
    Dataset.from_dict({"instruction": ["copy"] * 5, "context": ["a b"] * 5, "response": ["a b"] * 5,
                       "category": ["copy"] * 5}).to_json(str(held))

    workload = Workload(_config({"path": dolly_dir, "template": "dolly", "eval_path": str(held),
                                 "eval_examples": 3}))
    train, held_out = workload.examples

    assert len(train) == 240 and len(held_out) == 3
    assert all(ex.response == "a b" for ex in held_out)


def test_rows_that_cannot_be_encoded_are_skipped_with_one_line(tmp_path, caplog):
    path = tmp_path / "rows.parquet"
    responses = ["yes", "", "no", " ".join(["w"] * 30), "yes", "no", "yes", "no", "yes", "no", "yes", "no"]
    Dataset.from_dict({"prompt": [f"q{i}" for i in range(12)], "response": responses}).to_parquet(str(path))
    workload = Workload(_config({"path": str(path), "max_length": 16, "eval_examples": 1,
                                 "partition": "iid"}))

    with caplog.at_level(logging.WARNING, logger="fedtune.workload"):
        train, held_out = workload.examples
        encoded = workload.encode(train)

    skipped = [r.getMessage() for r in caplog.records if "cannot be encoded" in r.getMessage()]
    assert len(train) + len(held_out) == 10
    assert encoded["input_ids"].shape[0] == len(train)
    assert len(skipped) <= 2  # one summary line per set (train, held-out) that lost rows
    assert "1 empty response" in " ".join(skipped) and "1 no room for the prompt" in " ".join(skipped)
