"""``model.dtype`` = bfloat16 / float16: ZO weights held and replayed in it, LoRA over it.

In-process federations (the real strategies and ClientApp handlers, :class:`InProcessGrid`)
check the seed algorithms end to end in each 16-bit dtype: every client's digest of its
16-bit weights matches the server's, a client out of the log window is sent the 16-bit
weights and lands on the same digest, a resumed server rebuilds them bit for bit from a
bf16 checkpoint and the log. The slow tests run the same through ``fedtune run`` (Flower's
simulation engine, Ray, the wire).
"""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fedtune import wire
from fedtune.capacity import MODEL_COPIES, estimate_memory
from fedtune.client.zo_protocol import answer_train
from fedtune.config import ConfigError, parse_config
from fedtune.lora.adapters import adapter_parameters
from fedtune.server.strategy import FedKSeed
from fedtune.zo.client import ZOClient
from tests.conftest import run_cli
from tests.lora.conftest import InProcessGrid, micro_config, run_rounds


def _zo_config(dtype, algorithm="fedkseed", eps=1e-2, params="model", **federation):
    return parse_config({
        "seed": 1, "model": {"config": "micro-llama", "dtype": dtype},
        "data": {"num_examples": 120, "eval_examples": 16, "max_length": 16},
        "federation": {"num_clients": 3, "clients_per_round": 3, "min_replies": 3, "checkpoint_every": 2,
                       **federation},
        "algorithm": {"name": algorithm, "num_candidates": 16, "local_steps": 3, "batch_size": 4,
                      "lr": 5e-4, "eps": eps, "params": params},
        "lora": {"rank": 2},
    })


def _zo_run(cfg, rounds, run_dir):
    client = ZOClient(cfg)  # one process-wide client, as in a simulation's worker
    grid = InProcessGrid(cfg, handlers={n: lambda msg, ctx: answer_train(msg, ctx, cfg, client)
                                        for n in range(101, 101 + 7 * cfg.federation.num_clients, 7)})
    server = FedKSeed(cfg, run_dir)
    records = []
    server.start_rounds(grid, rounds, records.append, connect_timeout=1)
    return server, records


@pytest.mark.parametrize(("dtype", "algorithm", "params"),
                         [("bfloat16", "fedkseed", "model"), ("float16", "mezo", "model"),
                          ("bfloat16", "mezo", "lora")])
def test_seed_federation_holds_replays_and_resumes_in_the_dtype(task_identity, tmp_path, dtype, algorithm, params):
    cfg = _zo_config(dtype, algorithm, params=params)
    # MeZO's LoRA mode perturbs float32 adapters over the 16-bit base (PEFT's habit)
    torch_dtype = getattr(torch, dtype) if params == "model" else torch.float32

    server, records = _zo_run(cfg, 3, tmp_path)

    assert all(r["replies"] == 3 and r["sync_mismatches"] == 0 and r["rejected"] == 0 for r in records[1:])
    assert all(p.dtype == torch_dtype for _, p in server.params)
    assert all(p.dtype == getattr(torch, dtype) for n, p in server.model.named_parameters() if "lora_" not in n)
    assert all(np.isfinite(r["eval_loss"]) for r in records)
    # A client that missed every round is sent the 16-bit weights (their int16 bits for
    # bfloat16, through the ArrayRecord a Flower message carries) and lands on the digest.
    late = ZOClient(cfg)
    sent = server.train_content(4, None)[wire.WEIGHTS]
    late.sync(server.state_round, [], {k: v.numpy() for k, v in sent.items()})
    assert late._base_digest() == server.state_digest()
    assert all(t.dtype == torch_dtype for _, t in late.base)
    # The checkpoint of round 2 keeps the dtype; resume = that checkpoint + round 3's log entry.
    with safe_open(str(tmp_path / "checkpoints" / "state-2.safetensors"), "np") as f:
        saved = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert saved == {{torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[torch_dtype]}
    resumed = FedKSeed(cfg, tmp_path, resume=True)
    assert resumed.state_round == 3 and resumed.state_digest() == server.state_digest()


def test_a_bfloat16_base_trains_float32_lora_adapters_that_load_in_peft(task_identity, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    cfg = micro_config('algorithm.name="fedit"', 'model.dtype="bfloat16"')

    start, strategy, records = run_rounds(cfg, 2)
    strategy.workload.save(strategy.model, tmp_path)

    base = [p for n, p in strategy.model.named_parameters() if "lora_" not in n and "classifier" not in n]
    assert base and all(p.dtype == torch.bfloat16 for p in base)
    assert all(t.dtype == torch.float32 for t in strategy.state.values())  # adapters and head
    assert all(np.isfinite(r["eval_loss"]) for r in records)
    assert records[-1]["eval_loss"] != records[0]["eval_loss"]
    assert any(not torch.equal(start[n], strategy.state[n]) for n in start)
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base, tmp_path)
    assert base.config.dtype == torch.bfloat16
    loaded = adapter_parameters(reloaded)  # under PEFT's file names, as strategy.state
    assert loaded.keys() == strategy.state.keys()
    for name, tensor in strategy.state.items():
        if "lora_" in name:  # PEFT keeps LoRA factors float32 over a 16-bit base: read back as saved
            assert loaded[name].dtype == torch.float32 and torch.equal(loaded[name].detach(), tensor), name
        else:  # PEFT loads the head it saved beside them in the base's dtype
            assert torch.equal(loaded[name].detach(), tensor.to(loaded[name].dtype)), name


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"ondevice": {"clients": 1}}, "`model.dtype` = 'bfloat16' is not supported by ONNX device clients"),
        ({"algorithm": {"name": "fedit"}, "model": {"config": "micro-llama", "dtype": "bfloat16",
                                                    "trainable": ["*"]}},
         "`model.dtype` = 'bfloat16' with first-order fine-tuning of model tensors"),
    ],
)
def test_what_a_16_bit_model_cannot_do_is_refused(overrides, expected):
    raw = {"model": {"config": "micro-llama", "dtype": "bfloat16"}, "data": {"num_examples": 100},
           "federation": {"num_clients": 4, "clients_per_round": 2}, **overrides}

    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("`", ".")):
        parse_config(raw)


def test_the_memory_estimate_counts_the_dtypes_bytes():
    full = estimate_memory(_zo_config("float32"), 10**9, cores=2, available=10**12)
    half = estimate_memory(_zo_config("bfloat16"), 10**9, cores=2, available=10**12)

    assert full.worker_bytes - half.worker_bytes == MODEL_COPIES * (4 - 2) * 10**9  # bytes per parameter


@pytest.mark.parametrize(("eps", "warned"), [(1e-3, True), (1e-2, False)])
def test_an_eps_that_rounds_away_on_many_weights_is_warned_about_once(caplog, eps, warned):
    FedKSeed(_zo_config("bfloat16", eps=eps)).summary()

    # micro-llama's norm gains are 1.0: bfloat16's half ulp there is 2**-8 > 1e-3 (0.3 % of its weights)
    lines = [r.message for r in caplog.records if "rounds away" in r.message]
    assert len(lines) == int(warned)


@pytest.mark.slow
def test_a_bfloat16_fedkseed_simulation_stays_in_sync_and_saves_bfloat16(small_config, tmp_path):
    path = small_config("bf16", rounds=3)
    text = path.read_text().replace('config = "micro-llama"', 'config = "micro-llama"\ndtype = "bfloat16"')
    path.write_text(text.replace("lr = 5e-4", "lr = 5e-4\neps = 1e-2"))

    result = run_cli("run", path, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "bf16"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert all(r["sync_mismatches"] == 0 and r["rejected"] == 0 and r["replies"] >= 2 for r in records[1:])
    with safe_open(str(run_dir / "model" / "model.safetensors"), "np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118 (not iterable)


def test_a_16_bit_model_for_device_clients_exits_2_before_anything_starts(small_config, tmp_path):
    path = small_config("refused")
    path.write_text(path.read_text().replace('config = "micro-llama"', 'config = "micro-llama"\ndtype = "float16"'))

    result = run_cli("run", path, "--set", "ondevice.clients=1", timeout=120)

    assert result.returncode == 2
    assert "`model.dtype` = 'float16' is not supported by ONNX device clients" in result.stderr
    assert not (tmp_path / "runs").exists()
