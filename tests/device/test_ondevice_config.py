"""The [ondevice] section: defaults, and every illegal combination reported at once."""

import pytest

from fedtune.config import ConfigError, dump_toml, parse_config
from fedtune.onnx import ONNX_FILE, onnx_path_for


def test_defaults_mean_no_devices_and_round_trip_through_toml(tmp_path):
    cfg = parse_config({"model": {"config": "tiny-llama"}, "ondevice": {"clients": 3}})

    assert parse_config({"model": {"config": "tiny-llama"}}).ondevice.clients == 0
    assert cfg.ondevice.clients == 3 and cfg.ondevice.onnx_path == ""
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    from fedtune.config import load_config

    assert load_config(path) == cfg


def test_every_problem_is_listed():
    table = {"model": {"path": "/m", "task": "seq-cls"}, "data": {"source": "topics"},
             "algorithm": {"name": "fedit"}, "ondevice": {"clients": 21, "onnx_path": "model.bin"}}

    with pytest.raises(ConfigError) as info:
        parse_config(table)

    errors = [e for e in info.value.errors if "ondevice" in e]
    assert len(errors) == 5, errors
    assert any("[0, num_clients=20], got 21" in e for e in errors)
    assert any("zeroth-order algorithm" in e and "'fedit'" in e for e in errors)
    assert any("causal-lm `model.config`" in e for e in errors)
    assert any("'topics'" in e for e in errors)
    assert any("must name a .onnx file" in e for e in errors)


def test_the_graph_is_in_the_run_dir_unless_a_path_is_set(tmp_path):
    default = parse_config({"model": {"config": "tiny-llama"}, "ondevice": {"clients": 1}})
    pinned = parse_config({"model": {"config": "tiny-llama"},
                           "ondevice": {"clients": 1, "onnx_path": "/models/tiny.onnx"}})

    assert onnx_path_for(default, tmp_path) == tmp_path / ONNX_FILE
    assert str(onnx_path_for(pinned, None)) == "/models/tiny.onnx"
    with pytest.raises(ValueError, match="set ondevice.onnx_path"):
        onnx_path_for(default, None)  # under `flwr run`: no run directory known here


def test_a_pretrained_label_name_head_run_is_a_device_run_and_the_encoder_is_not():
    from fedtune.config import device_mode
    from tests.device.conftest import MINILM_TABLE

    encoder = {**MINILM_TABLE, "model": {**MINILM_TABLE["model"], "trainable": ["classifier.*", "encoder.*"]}}

    assert device_mode(parse_config(MINILM_TABLE)) == "head"
    with pytest.raises(ConfigError) as info:
        parse_config(encoder)
    errors = [e for e in info.value.errors if "ondevice" in e]
    assert len(errors) == 1 and "\n" not in errors[0]  # one line, and 'topics' is fine for a head run
    assert "label-name head" in errors[0] and "trainable=['classifier.*', 'encoder.*']" in errors[0]
