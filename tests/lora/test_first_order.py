"""First-order fine-tuning of the model's own tensors (``model.trainable`` with FedIT / FedProx).

FedIT over model tensors is FedAvg (McMahan et al. 2017): the round's global tensors are the
example-weighted mean of the clients' locally trained ones, checked here against a round
computed by hand; FedProx adds its proximal term to the same clients (Li et al. 2020).
"""

import math

import pytest
import torch

from fedtune.config import ConfigError, load_config
from fedtune.lora.weights import trained_model
from fedtune.workload import Workload
from tests.conftest import run_cli
from tests.lora.conftest import distance, fedavg_by_hand, micro_config, run_rounds

HEAD_AND_TOP = 'model.trainable=["classifier.*", "bert.encoder.layer.1.*"]'


def test_the_trained_tensors_are_the_selected_model_tensors_and_the_rest_is_frozen():
    cfg = micro_config("algorithm.name=fedit", HEAD_AND_TOP)

    model, params = trained_model(Workload(cfg), cfg)

    assert params and all(n.startswith(("classifier.", "bert.encoder.layer.1.")) for n in params)
    assert not any("lora" in n for n, _ in model.named_parameters())  # no adapter injected
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and not set(frozen) & set(params)
    assert all(p.requires_grad for p in params.values())


def test_a_fedavg_round_is_the_example_weighted_mean_of_the_clients_local_sgd(task_identity):
    cfg = micro_config("algorithm.name=fedit", HEAD_AND_TOP, "algorithm.local_steps=2", "lora.optimizer=sgd",
                       "algorithm.lr=0.5", "federation.clients_per_round=4", "federation.min_replies=4")
    start, strategy, records = run_rounds(cfg, 1)

    # the same round by hand: each of the 4 clients takes 2 SGD steps from the global tensors
    trained, weights = fedavg_by_hand(cfg, start, lr=0.5, steps=2)
    total = sum(weights)
    expected = {n: sum(w / total * t[n].double() for w, t in zip(weights, trained)) for n in start}

    assert records[1]["replies"] == 4
    assert set(strategy.state) == set(start)
    # float32 training on both sides, summed in another order: the round's update is reproduced
    # to 0.1 % of its own largest entry, tensor by tensor
    for name in start:
        update = (expected[name] - start[name].double()).abs().max()
        error = (strategy.state[name].double() - expected[name]).abs().max()
        assert update > 0 and error <= 1e-3 * update, (name, float(error), float(update))


@pytest.mark.slow
def test_fedprox_over_model_tensors_with_mu_0_is_fedavg_and_a_large_mu_holds_clients_near(task_identity):
    start, fedavg, _ = run_rounds(micro_config("algorithm.name=fedit", HEAD_AND_TOP), 2)
    _, plain, _ = run_rounds(micro_config("algorithm.name=fedprox", HEAD_AND_TOP, "fedprox.mu=0"), 2)
    _, held, records = run_rounds(micro_config("algorithm.name=fedprox", HEAD_AND_TOP, "fedprox.mu=100"), 2)

    assert all(torch.equal(plain.state[n], fedavg.state[n]) for n in fedavg.state)
    moved, held_moved = distance(fedavg.state, start), distance(held.state, start)
    assert 0 < held_moved < 0.5 * moved, (held_moved, moved)
    assert math.isfinite(records[-1]["eval_loss"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["algorithm.name=lorafair", HEAD_AND_TOP], "`model.trainable` selects the tensors that"),
        (["algorithm.name=fedit", HEAD_AND_TOP, "privacy.secagg=true"],
         "first-order fine-tuning of model tensors (`model.trainable` with 'fedit') does not support privacy.secagg"),
        (["algorithm.name=fedprox", HEAD_AND_TOP, 'compress.method="topk"'],
         "does not support compress.method yet"),
    ],
)
def test_unsupported_combinations_are_one_config_line(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        micro_config(*overrides)


@pytest.mark.slow
def test_full_fine_tuning_runs_in_the_simulation_engine_and_saves_a_loadable_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    config = tmp_path / "full.toml"
    config.write_text(f"""
name = "full"
rounds = 2
output_dir = "{tmp_path / 'runs'}"
[model]
config = "micro-bert"
task = "seq-cls"
trainable = ["*"]
[data]
source = "topics"
num_examples = 120
eval_examples = 32
max_length = 24
[federation]
num_clients = 3
clients_per_round = 3
min_replies = 3
[simulation]
num_cpus = 1
[algorithm]
name = "fedit"
local_steps = 2
batch_size = 8
lr = 1e-3
""")

    result = run_cli("run", config, timeout=600)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "first-order fine-tuning of" in result.stdout + result.stderr
    saved, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "runs" / "full" / "model",
                                                                     output_loading_info=True)
    assert not any(info.values()), info  # every tensor found, none left over
    initial = Workload(load_config(config)).build_model()
    assert set(saved.state_dict()) == set(initial.state_dict())
    moved = [n for n, t in initial.state_dict().items() if not torch.equal(t, saved.state_dict()[n])]
    assert "classifier.weight" in moved and "bert.encoder.layer.0.attention.self.query.weight" in moved  # all trained
