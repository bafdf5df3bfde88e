"""The server rules on tiny matrices with hand-computed results, and the rule registry."""

import math

import pytest
import torch

from fedtune import algorithms
from fedtune.config import LoraConfig
from fedtune.lora import (
    aggregation_bias,
    correct,
    factor_pairs,
    project,
    register_rule,
    rule_class,
    rule_names,
    solve_correction,
    weighted_mean,
)
from fedtune.lora.fedit import FedIT

A, B, HEAD = "m.lora_A.weight", "m.lora_B.weight", "head.weight"


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# Two clients, one module with d = k = 2, r = 1, equal weights:
#   A_1 = [1 0], B_1 = [1 0]^T;  A_2 = [1 2], B_2 = [0 1]^T
#   Ā = [1 1], B̄ = [.5 .5]^T, ΔW = ½(B_1 A_1 + B_2 A_2) = [[.5 0] [.5 1]]
#   G = ĀĀᵀ = 2, P = ΔW Āᵀ = [.5 1.5]^T, P − B̄G = [−.5 .5]^T
#   λ = 0: ΔB = [−.25 .25]^T;  λ = 1: ΔB = [−1/6 1/6]^T
#   ‖ΔW‖² = 1.5, ‖ΔW − B̄Ā‖² = .5, ‖ΔW − (B̄+ΔB)Ā‖² = .25 (λ = 0)
TWO = [
    (1.0, {A: _t([[1, 0]]), B: _t([[1], [0]]), HEAD: _t([[2.0]])}),
    (1.0, {A: _t([[1, 2]]), B: _t([[0], [1]]), HEAD: _t([[4.0]])}),
]
CURRENT = {A: _t([[0, 0]]), B: _t([[0], [0]]), HEAD: _t([[0.0]])}


def _rule(name, **lora):
    return rule_class(name)(LoraConfig(**lora))


def test_fedit_is_the_weighted_mean_of_every_tensor():
    updates = [(1.0, {A: _t([[1, 2]]), B: _t([[4], [0]]), HEAD: _t([[1.0]])}),
               (3.0, {A: _t([[3, 4]]), B: _t([[0], [8]]), HEAD: _t([[5.0]])})]

    result = _rule("fedit").aggregate(updates, CURRENT)

    # p = (1/4, 3/4)
    assert torch.equal(result.state[A], _t([[2.5, 3.5]]))
    assert torch.equal(result.state[B], _t([[1], [6]]))
    assert torch.equal(result.state[HEAD], _t([[4.0]]))
    assert result.bias_before == result.bias_after > 0


def test_ffa_lora_keeps_a_and_averages_b():
    shared_a = _t([[0.5, -1.0]])
    current = {**CURRENT, A: shared_a}
    rule = _rule("ffa-lora")
    updates = [(1.0, {B: _t([[1], [0]]), HEAD: _t([[2.0]])}), (1.0, {B: _t([[0], [3]]), HEAD: _t([[4.0]])})]

    result = rule.aggregate(updates, current)

    assert rule.uplink_names(current) == [B, HEAD]  # clients never send A
    assert torch.equal(result.state[A], shared_a)
    assert torch.equal(result.state[B], _t([[0.5], [1.5]]))
    assert torch.equal(result.state[HEAD], _t([[3.0]]))
    assert result.bias_before == result.bias_after == 0.0  # one shared A: averaging is exact


def test_lorafair_matches_the_hand_computed_correction_and_bias():
    result = _rule("lorafair", fair_lambda=0.0).aggregate(TWO, CURRENT)

    assert torch.equal(result.state[A], _t([[1, 1]]))
    assert torch.allclose(result.state[B], _t([[0.25], [0.75]]), atol=1e-7)  # B̄ + ΔB; float32 rounding
    assert torch.equal(result.state[HEAD], _t([[3.0]]))
    assert result.bias_before == pytest.approx(math.sqrt(0.5 / 1.5), rel=1e-12)
    assert result.bias_after == pytest.approx(math.sqrt(0.25 / 1.5), rel=1e-12)
    fedit = FedIT(LoraConfig()).aggregate(TWO, CURRENT)
    assert fedit.bias_after == pytest.approx(result.bias_before, rel=1e-12)


def test_lambda_shrinks_the_correction_as_the_closed_form_says():
    delta = solve_correction(_t([[1, 1]]), _t([[0.5], [0.5]]), _t([[0.5], [1.5]]), lam=1.0, steps=0)

    # (P − B̄G) / (G + λ) = [−.5 .5]^T / 3
    assert torch.allclose(delta, torch.tensor([[-1 / 6], [1 / 6]], dtype=torch.float64), atol=1e-15)


def _objective(delta, a_mean, b_mean, ideal, lam):
    return float(torch.linalg.matrix_norm((b_mean + delta) @ a_mean - ideal) ** 2 + lam * delta.square().sum())


def _random_updates(num, d=6, k=5, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (float(w), {A: torch.randn(r, k, generator=g), B: torch.randn(d, r, generator=g)})
        for w in torch.randint(1, 10, (num,), generator=g)
    ]


def test_closed_form_is_the_minimum_and_gradient_descent_converges_to_it():
    updates = _random_updates(4)
    means = weighted_mean(updates, [A, B])
    p = [w / sum(w for w, _ in updates) for w, _ in updates]
    ideal = sum(pk * (s[B].double() @ s[A].double()) for pk, (_, s) in zip(p, updates))
    projection = ideal @ means[A].double().T
    a_mean, b_mean, lam = means[A].double(), means[B].double(), 0.05

    exact = solve_correction(means[A], means[B], projection, lam, steps=0)
    iterative = solve_correction(means[A], means[B], projection, lam, steps=3000)

    best = _objective(exact, a_mean, b_mean, ideal, lam)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):  # every nearby point is worse: a minimum (f is convex, so the minimum)
        nudge = 1e-3 * torch.randn(exact.shape, generator=g, dtype=torch.float64)
        assert _objective(exact + nudge, a_mean, b_mean, ideal, lam) > best
    # Gradient descent at step 1/L contracts the error by (1 − μ/L) a step; 3000 steps
    # bring it to float64 noise for this conditioning.
    assert torch.allclose(iterative, exact, atol=1e-9)
    assert _objective(iterative, a_mean, b_mean, ideal, lam) <= _objective(0 * exact, a_mean, b_mean, ideal, lam)


@pytest.mark.parametrize("steps", [0, 5])
def test_lorafair_never_has_more_bias_than_fedit(steps):
    for seed in range(5):
        updates = _random_updates(5, seed=seed)
        current = {A: torch.zeros(3, 5), B: torch.zeros(6, 3)}

        fair = _rule("lorafair", fair_lambda=0.01, fair_steps=steps).aggregate(updates, current)
        fedit = _rule("fedit").aggregate(updates, current)

        assert fair.bias_before == pytest.approx(fedit.bias_after, rel=1e-12)
        assert fair.bias_after < fedit.bias_after
        assert torch.equal(fair.state[A], fedit.state[A])  # only B is corrected


def test_two_phase_sums_give_the_clear_text_correction():
    updates = _random_updates(5, d=16, k=12, r=4, seed=7)
    current = {A: torch.zeros(4, 12), B: torch.zeros(16, 4)}
    clear = _rule("lorafair", fair_lambda=0.01).aggregate(updates, current)

    # Phase 1: the secure sum of the factors. Phase 2: each client projects onto Ā itself
    # (float32 on the wire), the server sums those.
    means = weighted_mean(updates, [A, B])
    projections = [(w, {"m": project(s[A], s[B], means[A]).float()}) for w, s in updates]
    two_phase = correct(means, weighted_mean(projections, ["m"]), lam=0.01, steps=0)

    assert torch.equal(two_phase[A], clear.state[A])
    # The clear-text path sums float64 projections, the two-phase one float32 ones rounded
    # per client: both differ from the exact ΔB by float32 rounding (~1e-7 relative).
    assert torch.allclose(two_phase[B], clear.state[B], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(two_phase[B], means[B], rtol=1e-3)  # the correction is not trivial


def test_aggregation_bias_is_relative_frobenius_error():
    updates = [(1.0, {A: _t([[1, 0]]), B: _t([[2], [0]])})]
    pairs = factor_pairs([A, B])

    assert aggregation_bias(updates, updates[0][1], pairs) == 0.0
    assert aggregation_bias(updates, {A: _t([[1, 0]]), B: _t([[1], [0]])}, pairs) == pytest.approx(0.5)


def test_registry_holds_every_lora_algorithms_rule_and_refuses_duplicates():
    assert set(rule_names()) == {algorithms.get(name).rule for name in algorithms.names("lora")}
    with pytest.raises(ValueError, match="'fedit' is already registered"):
        register_rule("fedit")
    with pytest.raises(ValueError, match="unknown LoRA rule 'fedavg'; known rules"):
        rule_class("fedavg")
