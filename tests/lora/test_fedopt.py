"""FedOpt server optimizers (FedAdam, FedYogi, FedAdagrad): Reddi et al. by hand, and small simulations."""

import math

import pytest
import torch

from fedtune.algorithms.fedopt import FedOptConfig, ServerAdaptive
from tests.lora.conftest import distance, micro_config, run_rounds


def _by_hand(kind, rounds, c):
    """Reddi et al. Algorithm 2 on one scalar weight, in plain Python."""
    w, m, v, out = 1.0, 0.0, c.tau**2, []
    for target in rounds:
        d = target - w
        m = c.beta1 * m + (1 - c.beta1) * d
        if kind == "adagrad":
            v = v + d * d
        elif kind == "yogi":
            v = v - (1 - c.beta2) * d * d * math.copysign(1.0, v - d * d)
        else:
            v = c.beta2 * v + (1 - c.beta2) * d * d
        w = w + c.server_lr * m / (math.sqrt(v) + c.tau)
        out.append(w)
    return out


@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_the_server_optimizers_follow_reddi_et_al_by_hand(kind):
    c = FedOptConfig(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    opt = ServerAdaptive(kind, c)
    rounds = [1.5, 1.2, 0.4]  # the FedIT means the rounds aggregate to
    state = {"w": torch.tensor([1.0], dtype=torch.float64)}

    seen = []
    for target in rounds:
        state = opt.step(state, {"w": torch.tensor([target], dtype=torch.float64)})
        seen.append(state["w"].item())

    assert seen == pytest.approx(_by_hand(kind, rounds, c), rel=1e-12)
    # round 1 written out: d = 0.5, m = 0.1 * 0.5, v from tau^2 = 1e-6
    v1 = {"adam": 0.99e-6 + 0.01 * 0.25, "yogi": 1e-6 + 0.01 * 0.25, "adagrad": 1e-6 + 0.25}[kind]
    assert seen[0] == pytest.approx(1.0 + 0.1 * 0.05 / (math.sqrt(v1) + 1e-3), rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["adam", "yogi", "adagrad"])
def test_a_fedopt_round_is_the_server_optimizer_applied_to_fedits_mean(task_identity, kind):
    start, fedit, _ = run_rounds(micro_config("algorithm.name=fedit"), 1)
    _, fedopt, records = run_rounds(micro_config(f"algorithm.name=fed{kind}", "fedopt.server_lr=0.01"), 1)

    expected = ServerAdaptive(kind, FedOptConfig(server_lr=0.01)).step(start, fedit.state)
    assert all(torch.equal(fedopt.state[n], expected[n].float()) for n in start)
    assert distance(fedopt.state, start) > 0
    assert records[-1]["bias_before"] >= 0
