"""Each LoRA rule end to end in Flower's real simulation engine, through `fedtune run`."""

import json

import pytest

from tests.conftest import SMALL_LORA_CONFIG, run_cli


@pytest.mark.slow
@pytest.mark.parametrize(("rule", "two_phase", "method"),
                         [("fedit", False, "none"), ("ffa-lora", False, "ternary"), ("lorafair", True, "topk-quantize")])
def test_rule_completes_in_the_simulation_engine(tmp_path, rule, two_phase, method):
    path = tmp_path / "lora.toml"
    path.write_text(SMALL_LORA_CONFIG.format(name=rule, output_dir=tmp_path / "runs", num_clients=4, rule=rule,
                                             two_phase="true" if two_phase else "false", method=method))

    result = run_cli("run", path, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / rule
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records[1:]:
        assert record["replies"] == record["sampled"] == 3
        assert record["failed"] == record["rejected"] == 0
        assert record["bytes_up_per_client"] > 0 and record["bytes_down_per_client"] > 0
        assert 0 <= record["eval_accuracy"] <= 1
        # Two-phase LoRA-FAIR sums projections; it never forms ΣpBA, so no bias numbers.
        assert (record["bias_after"] is None) == two_phase
    assert "round 2/2: train loss" in result.stdout
    # Flower ran 3 nodes for 4 clients: the error-feedback residuals are kept per client, on disk
    states = sorted(f.name for f in (run_dir / "client-state").glob("*")) if method != "none" else []
    assert all(name.endswith(".residual.safetensors") for name in states)
    assert 3 <= len(states) <= 4 if method != "none" else not (run_dir / "client-state").exists()
    # The final adapter, in the PEFT format.
    assert (run_dir / "model" / "adapter_config.json").is_file()
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
