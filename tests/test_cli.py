"""`fedtune run` on bad input: one clear line, exit status 2, nothing under runs/."""

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("algorithm.name=sgd", "`algorithm.name` must be one of 'fedkseed', "),
        ("algorithm.num_candidates=0", "`algorithm.num_candidates` (K) must be >= 1, got 0"),
        ("model.config=gpt-9", "unknown model.config 'gpt-9'; known configs:"),
        ("algorithm.lrr=1", "unknown key `algorithm.lrr`"),
        ("rounds", "--set expects key=value"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(small_config, tmp_path, override, expected):
    path = small_config()

    result = run_cli("run", path, "--set", override, timeout=120)

    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_model_path_and_config_file(small_config, tmp_path):
    path = small_config()

    result = run_cli("run", path, "--set", "model.config=''", "--set", f"model.path='{tmp_path}/nope'")
    missing = run_cli("run", tmp_path / "absent.toml")

    assert result.returncode == 2
    assert "is not a local Hugging Face model directory" in result.stderr
    assert missing.returncode == 2 and "config file not found" in missing.stderr
    assert not (tmp_path / "runs").exists()


def test_malformed_toml_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model\nconfig = 1\n")

    result = run_cli("run", path)

    assert result.returncode == 2
    assert "malformed TOML" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("privacy.dp='sample'", "algorithm.weighting='uniform'", "algorithm.name='fedit'", "model.config='micro-bert'",
          "model.task='seq-cls'", "data.source='topics'"),
         "`privacy.dp` = 'sample' supports algorithm.name fedkseed, fedkseed-pro, mezo"),
        (("privacy.dp='sample'", "algorithm.weighting='uniform'", "privacy.noise_multiplier=0.0"),
         "`privacy.noise_multiplier` = 0 with `privacy.dp` = 'sample' adds no noise"),
    ],
)
def test_bad_sample_dp_exits_2_and_writes_nothing(small_config, tmp_path, overrides, expected):
    path = small_config()
    sets = [arg for override in overrides for arg in ("--set", override)]

    result = run_cli("run", path, *sets, timeout=120)

    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "runs").exists()
