"""split-prompt (SFPrompt): the split forward, the per-step protocol over real Flower messages,
EL2N pruning, config refusals and a small run in Flower's simulation engine."""

import json

import pytest
import torch
from flwr.app import Context, MessageType, RecordDict

from fedtune import wire
from fedtune.config import ConfigError, parse_config
from fedtune.lora.payload import unpack
from fedtune.split import GRADIENT_NAME, PROMPT_NAME
from fedtune.split.model import SplitModel, el2n_scores
from fedtune.workload import Workload
from tests.conftest import run_cli

MODELS = [("micro-bert-6", "label-names"), ("micro-bert-6", "default"),
          ("micro-llama-6", "default"), ("micro-llama-6", "label-names")]


def _cfg(model="micro-llama-6", head="default", *overrides):
    table = {"model": {"config": model, "task": "seq-cls", "head": head},
             "data": {"source": "topics", "num_examples": 120, "eval_examples": 16, "max_length": 20},
             "federation": {"num_clients": 4, "clients_per_round": 2, "min_replies": 1},
             "algorithm": {"name": "split-prompt", "local_steps": 2, "batch_size": 4, "lr": 0.5},
             "split": {"layer": 2, "prompt_length": 3, "local_loss_steps": 1, "keep_fraction": 0.5}}
    return parse_config(table, list(overrides))


def _batch(workload, rows=5):
    return workload.encode(workload.examples[0][:rows])


@pytest.mark.parametrize(("model", "head"), MODELS)
@pytest.mark.parametrize("layer", [1, 3, 5])
def test_the_split_forward_is_the_unsplit_forward(model, head, layer):
    workload = Workload(_cfg(model, head))
    split = SplitModel(workload.build_model(), layer)
    batch = _batch(workload)
    prompt = 0.05 * torch.randn(3, split.hidden_size, generator=torch.Generator().manual_seed(0))

    hidden = split.bottom(prompt, batch["input_ids"], batch["attention_mask"])
    split_logits = split.top(hidden, batch["attention_mask"])
    full_logits = split.full(prompt, batch["input_ids"], batch["attention_mask"])

    assert hidden.shape == (5, 3 + batch["input_ids"].shape[1], split.hidden_size)
    # Both halves run the backbone's own forward on the same float32 tensors, so the same kernels
    # see the same operands; 1e-6 (a few float32 ulps at logits of O(1)) only leaves room for a
    # BLAS that blocks the server's call differently from the unsplit one (another reduction order).
    torch.testing.assert_close(split_logits, full_logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("model", "head"), [MODELS[0], MODELS[2]])
def test_the_gradient_a_client_receives_is_autograd_of_the_full_models_loss(task_identity, monkeypatch, model, head):
    from fedtune.client.split import train_split
    from fedtune.lru import LRU
    from fedtune.server.split_strategy import SplitPrompt, _Client
    from fedtune.split import client as split_client
    from fedtune.split.client import client_for

    cfg = _cfg(model, head)
    server = SplitPrompt(cfg)
    context = Context(1, 5, {"partition-id": 1, "num-partitions": 4}, RecordDict(), {})
    first = server._step_message(1, 0, _Client(5, 1, server.prompt))

    reply = train_split(cfg, first, context)  # step 0: local-loss steps, then step 0's forward
    prompt = unpack(reply.content[wire.PROMPT], {PROMPT_NAME: (3, server.split.hidden_size)}, "x")[PROMPT_NAME]
    hidden, mask, labels = server._activations(reply, 3)
    loss, gradient = server.server_step(hidden, mask, labels)
    second = server._step_message(1, 1, _Client(5, 1, prompt, gradient))
    received = unpack(second.content[wire.GRADIENT], {GRADIENT_NAME: tuple(hidden.shape)}, "x")[GRADIENT_NAME]

    # the reference: the whole model on the same batch, the split activations captured by a hook
    client = client_for(cfg)
    batch = client.batch(1, 1, 4, 0)
    captured = {}

    def keep(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output
        captured["hidden"].retain_grad()

    split = server.split
    handle = split.blocks[split.layer - 1].register_forward_hook(keep)
    p = prompt.clone().requires_grad_(True)
    try:
        full_loss = torch.nn.functional.cross_entropy(
            split.full(p, batch["input_ids"], batch["attention_mask"]), batch["labels"])
        full_loss.backward()
    finally:
        handle.remove()

    assert first.metadata.message_type == MessageType.TRAIN and wire.ACTIVATIONS in reply.content
    assert labels.tolist() == batch["labels"].tolist()
    torch.testing.assert_close(hidden, captured["hidden"].detach(), rtol=0, atol=1e-6)  # see the forward test
    assert loss == pytest.approx(float(full_loss.detach()), abs=1e-6)
    # float32 on the wire is exact; autograd through the same graph in two pieces vs one
    # differs by float32 reassociation in the server blocks' backward at most
    torch.testing.assert_close(received, captured["hidden"].grad, rtol=1e-5, atol=1e-7)
    # and the client's step is SGD on the prompt's gradient through its own blocks, from a fresh
    # process's view: nothing kept between the two messages
    monkeypatch.setattr(split_client, "_clients", LRU(1))
    stepped = unpack(train_split(cfg, second, Context(1, 5, {"partition-id": 1, "num-partitions": 4},
                                                      RecordDict(), {})).content[wire.PROMPT],
                     {PROMPT_NAME: tuple(prompt.shape)}, "x")[PROMPT_NAME]
    torch.testing.assert_close(stepped, (prompt - cfg.algorithm.lr * p.grad).float(), rtol=1e-5, atol=1e-6)


def test_pruning_keeps_the_highest_el2n_examples_in_order():
    from fedtune.split.client import SplitClient

    client = SplitClient(_cfg("micro-bert-6", "label-names", "split.keep_fraction=0.3"))
    encoded = _batch(client.workload, rows=10)
    with torch.no_grad():
        hidden = client.split.bottom(client.initial, encoded["input_ids"], encoded["attention_mask"])
        scores = el2n_scores(client.split.local_logits(hidden, encoded["attention_mask"]), encoded["labels"])

    kept = client._prune(encoded)

    expected = sorted(torch.argsort(-scores, stable=True)[:3].tolist())  # ceil(0.3 x 10) = 3 rows
    assert kept["input_ids"].tolist() == encoded["input_ids"][expected].tolist()
    assert el2n_scores(torch.tensor([[0.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(2 ** -0.5)


def test_bad_split_keys_are_refused_by_the_config():
    with pytest.raises(ConfigError) as info:
        _cfg("micro-llama-6", "default", "split.prompt_length=0", "split.layer=0", "split.keep_fraction=0")
    text = str(info.value)
    assert "`split.prompt_length` must be >= 1" in text
    assert "`split.layer` must be in [1, blocks - 1]" in text
    assert "`split.keep_fraction` must be in (0, 1]" in text


SPLIT_CONFIG = """
name = "split"
rounds = 2
output_dir = "{output_dir}"
[model]
config = "micro-llama-6"
task = "seq-cls"
[data]
source = "topics"
num_examples = 160
eval_examples = 32
max_length = 20
[federation]
num_clients = 4
clients_per_round = 3
min_replies = 2
[algorithm]
name = "split-prompt"
local_steps = 3
batch_size = 8
lr = 0.5
[split]
layer = 2
prompt_length = 4
local_loss_steps = 2
keep_fraction = 0.5
[simulation]
num_cpus = 1  # one Ray worker: a second one only imports torch again on a 2-core CI machine
num_cpus_per_client = 1
"""


@pytest.mark.slow
@pytest.mark.parametrize(("override", "says"), [
    ("split.layer=6", "`split.layer` must be in [1, 5] (the model has 6 blocks), got 6"),
    ("split.prompt_length=0", "`split.prompt_length` must be >= 1"),
    ("split.prompt_length=60", "`split.prompt_length` must be in [1, 44]"),
    ("model.config=micro-opt", "split-prompt supports seq-cls models with the heads"),
    ("model.task=causal-lm", "split-prompt supports model.task = 'seq-cls'"),
])
def test_fedtune_run_refuses_a_bad_split_in_one_line_and_writes_nothing(tmp_path, override, says):
    path = tmp_path / "split.toml"
    path.write_text(SPLIT_CONFIG.format(output_dir=tmp_path / "runs"))

    result = run_cli("run", path, "--set", override, timeout=300)

    assert result.returncode == 2, result.stdout + result.stderr
    # one line says it (a config error comes under a line naming the file, as every config error does)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("fedtune: error:") and len(lines) <= 2, result.stderr
    assert sum(says in line for line in lines) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_split_prompt_trains_in_the_simulation_engine(tmp_path):
    path = tmp_path / "split.toml"
    path.write_text(SPLIT_CONFIG.format(output_dir=tmp_path / "runs"))

    result = run_cli("run", path, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = tmp_path / "runs" / "split"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert 0 <= records[0]["eval_accuracy"] <= 1
    for record in records[1:]:
        assert record["replies"] == record["sampled"] == 3
        assert record["failed"] == record["rejected"] == 0
        assert record["exchanges"] == 3 * (3 + 1)  # local_steps + 1 exchanges per client
        up, down = record["bytes_up_by_client"], record["bytes_down_by_client"]
        assert len(up) == len(down) == 3
        # every step but the last sends (8, 4 + T, 64) float32 activations up and their gradient
        # down: at least 8 x 5 x 64 x 4 bytes each (T >= 1), three times a round
        assert all(v > 3 * 8 * 5 * 64 * 4 for v in [*up.values(), *down.values()])
        assert record["bytes_up_per_client"] == pytest.approx(sum(up.values()) / 3)
        assert record["kept_examples_per_client"] < 160 / 4  # EL2N kept half of each partition
        assert record["train_loss"] > 0 and record["local_loss"] > 0
        assert 0 <= record["eval_accuracy"] <= 1
    assert "round 2/2: train loss" in result.stdout + result.stderr
    assert (run_dir / "model" / "prompt.safetensors").is_file()
