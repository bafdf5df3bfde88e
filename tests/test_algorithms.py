"""The algorithm registry: declarations, what the config derives from them, bad plugins refused."""

import dataclasses

import pytest

from fedtune import algorithms
from fedtune.algorithms import Algorithm
from fedtune.cli import main
from fedtune.config import ConfigError, dump_toml, parse_config
from fedtune.runs import CONFIG_FILE

BASE = {"model": {"config": "micro-bert", "task": "seq-cls"}, "data": {"source": "topics"}}


def _cfg(*overrides):
    return parse_config(BASE, list(overrides))


def test_every_built_in_is_registered_once_with_its_family():
    assert algorithms.names("zo") == ("fedkseed", "fedkseed-pro", "mezo", "offsite-zo")
    assert set(algorithms.names("lora")) == {"fedit", "ffa-lora", "lorafair", "fedprox", "fedadam", "fedyogi",
                                             "fedadagrad", "hetlora", "offsite"}
    assert len(set(algorithms.names())) == len(algorithms.names())
    assert algorithms.names("split") == ("split-prompt",)
    assert algorithms.supporting("device") == ("fedkseed", "fedkseed-pro", "mezo", "offsite-zo")
    assert "mezo" not in algorithms.supporting("secagg")


@pytest.mark.parametrize(("algorithm", "message"), [
    (Algorithm("fedit", "lora", "again", rule="fedit"), "'fedit' is already registered"),
    (Algorithm("x-1", "zo", "", features=frozenset({"telepathy"})), "unknown features"),
    (Algorithm("x-2", "lora", ""), "must name the rule"),
    (Algorithm("x-3", "sgd", ""), "family must be"),  # type: ignore[arg-type]
    (Algorithm("x-4", "zo", "", section=dict), "give both `section` and `section_name`"),
    (Algorithm("x-5", "zo", "", section=dict, section_name="fedprox"), "[fedprox] is already declared"),
    (Algorithm("x-6", "lora", "", rule="fedit", rank_pruner=lambda cfg: None), "`rank_pruner` needs `client_rank`"),
])
def test_a_bad_or_second_registration_is_refused_and_changes_nothing(algorithm, message):
    before = algorithms.names()

    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        algorithms.register(algorithm)

    assert algorithms.names() == before


def test_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="`algorithm.name` must be one of 'fedkseed', .*'fedprox'.*got 'fedsgd'"):
        _cfg("algorithm.name=fedsgd")
    with pytest.raises(ValueError, match="unknown algorithm 'fedsgd'; known: fedkseed"):
        algorithms.get("fedsgd")


def test_algorithm_sections_are_read_checked_and_written_back():
    cfg = _cfg("algorithm.name=fedprox", "fedprox.mu=0.5", "fedopt.tau=0.01")

    assert cfg.section("fedprox").mu == 0.5
    assert cfg.section("fedopt").tau == 0.01 and cfg.section("fedopt").beta1 == 0.9  # defaults elsewhere
    assert parse_config(__import__("tomllib").loads(dump_toml(cfg))) == cfg
    with pytest.raises(KeyError, match="no algorithm config section"):
        cfg.section("fedavg")
    with pytest.raises(ConfigError) as info:
        _cfg("algorithm.name=fedadam", "fedprox.nu=1", "fedopt.beta1=1.5", "fedprox.mu=-1")
    text = str(info.value)
    assert "unknown key `fedprox.nu`" in text
    # only the running algorithm's own checks apply: fedprox.mu is not fedadam's business
    with pytest.raises(ConfigError, match=r"`fedopt.beta1` must be in \[0, 1\), got 1.5"):
        _cfg("algorithm.name=fedadam", "fedopt.beta1=1.5", "fedprox.mu=-1")
    with pytest.raises(ConfigError, match="`fedprox.mu` must be >= 0, got -1"):
        _cfg("algorithm.name=fedprox", "fedprox.mu=-1")


def test_a_feature_the_algorithm_does_not_declare_is_one_clear_error():
    with pytest.raises(ConfigError, match="`privacy.dp` supports algorithm.name .* got 'hetlora' "
                                          r"\(the algorithm does not declare it\)"):
        _cfg("algorithm.name=hetlora", "privacy.dp=central", "algorithm.weighting=uniform")
    with pytest.raises(ConfigError, match="`ondevice.clients` > 0 needs a zeroth-order algorithm"):
        _cfg("algorithm.name=fedprox", "ondevice.clients=1")
    with pytest.raises(ConfigError, match="`compress.method` applies to the dense updates of the LoRA rules"):
        _cfg("algorithm.name=mezo", "compress.method=topk")


def test_resume_for_an_algorithm_without_a_seed_log_exits_2_before_flower_starts(tmp_path, capsys):
    cfg = dataclasses.replace(_cfg("algorithm.name=fedit"), output_dir=str(tmp_path))
    run_dir = tmp_path / "crashed"
    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text(dump_toml(cfg))

    code = main(["run", "--resume", str(run_dir)])

    assert code == 2
    err = capsys.readouterr().err
    assert "--resume is not supported for algorithm 'fedit'" in err and "fedkseed" in err
    assert sorted(p.name for p in run_dir.iterdir()) == [CONFIG_FILE]  # nothing written
