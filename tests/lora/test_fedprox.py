"""FedProx: a hand-computed local step and small simulations."""

import math
from types import SimpleNamespace

import pytest
import torch

from fedtune.algorithms.fedprox import proximal_term
from fedtune.lora.train import local_train
from tests.lora.conftest import distance, micro_config, run_rounds


class _Linear(torch.nn.Module):
    """loss = w . x: its gradient is x, so a step is easy to compute by hand."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))

    def forward(self, x):
        return SimpleNamespace(loss=(self.w * x).sum())


def test_the_proximal_term_adds_mu_times_the_distance_to_the_global_weights_to_each_step():
    model = _Linear()
    anchors = {"w": torch.zeros(2, dtype=torch.float64)}
    x = torch.ones(2, dtype=torch.float64)

    result = local_train(model, [model.w], lambda step: {"x": x}, 2, optimizer="sgd", lr=0.1, weight_decay=0.0,
                         device=torch.device("cpu"),
                         extra_loss=lambda: proximal_term(0.5, {"w": model.w}, anchors))

    # step 1: grad = x + mu (w - 0) = [1.5, 0]          -> w = [0.85, -2]
    # step 2: grad = [1 + 0.5 * 0.85, 1 - 1]             -> w = [0.85 - 0.1425, -2]
    assert model.w.tolist() == pytest.approx([0.7075, -2.0], abs=1e-12)
    assert result.mean_loss == pytest.approx((-1.0 + -1.15) / 2)  # the model's loss, not the objective


@pytest.mark.slow
def test_fedprox_with_mu_0_is_fedit_and_a_large_mu_keeps_clients_near_the_global_adapter(task_identity):
    start, fedit, _ = run_rounds(micro_config("algorithm.name=fedit"), 2)
    _, plain, _ = run_rounds(micro_config("algorithm.name=fedprox", "fedprox.mu=0"), 2)
    _, held, records = run_rounds(micro_config("algorithm.name=fedprox", "fedprox.mu=100"), 2)

    assert all(torch.equal(plain.state[n], fedit.state[n]) for n in fedit.state)
    moved, held_moved = distance(fedit.state, start), distance(held.state, start)
    assert 0 < held_moved < 0.5 * moved, (held_moved, moved)
    assert math.isfinite(records[-1]["eval_loss"])
