"""The ZO estimators (fedtune.zo.estimators): hand-computed steps, q directions, NaN skips,
torch/numpy agreement, and the (key, scalar) list replaying bit-exactly on every party."""

import math

import numpy as np
import pytest
import torch

from fedtune import rng, wire
from fedtune.zo import aggregate, candidate_seeds, local_train, replay_, replay_coefficient, replay_numpy_
from fedtune.zo.estimators import ESTIMATORS, estimate_step, local_steps
from fedtune.zo.mezo import zo_step as torch_zo_step

# --- hand-computed steps, with explicit directions --------------------------------------
# L(w) = 0.5 |w|^2, w = (1, 3), eps = 0.5, lr = 0.25: every number below is exact in binary.
# z_1 = (1, -1): L(w + eps z_1) = 0.5 (1.5^2 + 2.5^2) = 4.25, L(w - eps z_1) = 0.5 (0.5^2 + 3.5^2) = 6.25
# z_2 = (1, 1):  L(w + eps z_2) = 0.5 (1.5^2 + 3.5^2) = 7.25, L(w - eps z_2) = 0.5 (0.5^2 + 2.5^2) = 3.25
# L(w) = 5.
_Z = {1: np.array([1.0, -1.0]), 2: np.array([1.0, 1.0])}


class _Quadratic:
    """A two-weight model with hand-picked directions: ``perturb`` and ``loss`` as a backend gives them."""

    def __init__(self, w=(1.0, 3.0), losses=None):
        self.w = np.array(w, dtype=np.float64)
        self.calls = 0
        self.losses = losses  # if set, overrides the loss of each call in turn

    def perturb(self, seed, coef):
        self.w += coef * _Z[seed]

    def loss(self):
        self.calls += 1
        if self.losses is not None:
            return self.losses[self.calls - 1]
        return 0.5 * float(self.w @ self.w)


@pytest.mark.parametrize(
    ("estimator", "seeds", "grads", "scalars", "loss", "w_after", "forwards"),
    [
        # g = (4.25 - 6.25) / (2 * 0.5) = -2 = z_1 . w; w - lr g z_1 = (1, 3) + 0.5 (1, -1)
        ("central", [1], [-2.0], [-2.0], 5.25, [1.5, 2.5], 2),
        # g = (4.25 - 5) / 0.5 = -1.5 (z.w + eps/2 |z|^2); w + 0.375 (1, -1)
        ("forward", [1], [-1.5], [-1.5], 5.0, [1.375, 2.625], 2),
        # sign(-2) = -1: each coordinate moves by lr = 0.25
        ("sign", [1], [-2.0], [-1.0], 5.25, [1.25, 2.75], 2),
        # g_2 = (7.25 - 3.25) / 1 = 4; scalars g_i / 2 = (-1, 2); w - 0.25 ((-1, 1) + (2, 2)) = (0.75, 2.25)
        ("central", [1, 2], [-2.0, 4.0], [-1.0, 2.0], 5.25, [0.75, 2.25], 4),
        # g_2 = (7.25 - 5) / 0.5 = 4.5; scalars (-0.75, 2.25); w - 0.25 ((-0.75, 0.75) + (2.25, 2.25)) = (0.625, 2.25)
        ("forward", [1, 2], [-1.5, 4.5], [-0.75, 2.25], 5.0, [0.625, 2.25], 3),  # L(w) once: q + 1 forwards
        # scalars (-1/2, 1/2); w - 0.25 ((-0.5, 0.5) + (0.5, 0.5)) = (1, 2.75)
        ("sign", [1, 2], [-2.0, 4.0], [-0.5, 0.5], 5.25, [1.0, 2.75], 4),
    ],
)
def test_hand_computed_step(estimator, seeds, grads, scalars, loss, w_after, forwards):
    model = _Quadratic()

    result = estimate_step(model.perturb, model.loss, seeds=seeds, eps=0.5, lr=0.25, estimator=estimator)

    assert not result.skipped
    assert result.projected_grad == sum(grads) / len(grads)
    assert result.scalars == tuple(scalars)
    assert result.loss == loss
    assert model.w.tolist() == w_after
    assert model.calls == forwards


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_lr_zero_estimates_without_moving_the_weights(estimator):
    model = _Quadratic()

    estimate_step(model.perturb, model.loss, seeds=[1, 2], eps=0.5, lr=0.0, estimator=estimator)

    assert model.w.tolist() == [1.0, 3.0]


def test_a_zero_estimate_has_sign_zero():
    model = _Quadratic(w=(2.0, 2.0))  # z_1 . w = 0

    result = estimate_step(model.perturb, model.loss, seeds=[1], eps=0.5, lr=0.25, estimator="sign")

    assert result.scalars == (0.0,) and model.w.tolist() == [2.0, 2.0]


# --- q directions are the mean of q single-direction estimates ---------------------------


def _dyadic_arrays():
    """float32 weights on a 1/16 grid and eps = 1/64: w +- eps z is exact, so restoring a
    direction gives back the very same bits and every estimate sees the same weights."""
    gen = np.random.default_rng(3)
    return [("a.weight", (gen.integers(-32, 32, (6, 5)) / 16).astype(np.float32)),
            ("a.bias", (gen.integers(-32, 32, 5) / 16).astype(np.float32))]


def _numpy_backend(arrays):
    def perturb(seed, coef):
        for name, array in arrays:
            rng.add_scaled_(array, seed, name, coef)

    target = {name: np.linspace(-1, 1, a.size).reshape(a.shape) for name, a in arrays}

    def loss():  # 0.5 |w - t|^2 in float64 from the float32 values: smooth, not exactly quadratic in float
        return 0.5 * sum(float(np.sum((a.astype(np.float64) - target[n]) ** 2)) for n, a in arrays)

    return perturb, loss


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_q_directions_are_the_mean_of_q_single_direction_estimates(estimator):
    seeds = [11, 22, 33]
    eps, lr = 2.0**-6, 1e-2
    singles = []
    for seed in seeds:
        arrays = _dyadic_arrays()
        perturb, loss = _numpy_backend(arrays)
        singles.append(estimate_step(perturb, loss, seeds=[seed], eps=eps, lr=0.0, estimator=estimator).scalars[0])
    arrays = _dyadic_arrays()
    perturb, loss = _numpy_backend(arrays)

    result = estimate_step(perturb, loss, seeds=seeds, eps=eps, lr=lr, estimator=estimator)

    assert result.scalars == tuple(s / 3 for s in singles)
    # the update: -lr * sum_i scalar_i z_i, applied direction by direction in float32
    for (name, array), (_, w0) in zip(arrays, _dyadic_arrays()):
        direction = sum(s * rng.rademacher(seed, name, w0.size).astype(np.float64)
                        for seed, s in zip(seeds, result.scalars))
        np.testing.assert_allclose(array.reshape(-1), w0.reshape(-1) - lr * direction, rtol=0, atol=1e-6)


# --- a non-finite loss restores and skips -------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("bad_call", [0, 1, 2, 3])
def test_a_nonfinite_loss_restores_the_weights_and_skips_the_step(estimator, bad_call):
    if estimator == "forward" and bad_call == 3:
        pytest.skip("forward with q = 2 takes q + 1 = 3 forwards")
    losses = [1.0, 2.0, 3.0, 4.0, 5.0]
    losses[bad_call] = math.nan
    model = _Quadratic(losses=losses)

    result = estimate_step(model.perturb, model.loss, seeds=[1, 2], eps=0.5, lr=0.25, estimator=estimator)

    assert result.skipped and result.scalars == () and math.isnan(result.projected_grad) and math.isnan(result.loss)
    assert model.w.tolist() == [1.0, 3.0]


def test_a_skipped_step_drops_all_its_directions_from_the_step_list():
    model = _Quadratic(losses=[1.0, 2.0, 3.0, 4.0, math.inf, 1.0, 1.0, 0.5, 0.25])  # step 1 of 3 fails

    result = local_steps(model.perturb, lambda step: model.loss(), keys=[1, 2, 2, 1, 1, 1], seed_of_key=int,
                         eps=0.5, lr=0.25, estimator="forward", directions=2)

    assert result.keys.tolist() == [1, 2, 1, 1] and result.skipped == 1
    assert result.scalars.dtype == np.float32 and len(result.scalars) == 4


def test_bad_arguments_are_refused_before_any_forward():
    model = _Quadratic()
    with pytest.raises(ValueError, match="estimator"):
        estimate_step(model.perturb, model.loss, seeds=[1], eps=0.5, lr=0.1, estimator="backward")
    with pytest.raises(ValueError, match="seeds"):
        estimate_step(model.perturb, model.loss, seeds=[], eps=0.5, lr=0.1)
    with pytest.raises(ValueError, match="whole steps"):
        local_steps(model.perturb, lambda step: model.loss(), keys=[1, 2, 1], seed_of_key=int,
                    eps=0.5, lr=0.1, directions=2)
    with pytest.raises(ValueError, match="directions"):
        local_steps(model.perturb, lambda step: model.loss(), keys=[1], seed_of_key=int, eps=0.5, lr=0.1,
                    directions=0)
    assert model.calls == 0


# --- torch and numpy: the same scalars on the same weights ------------------------------


def _float32_arrays():
    gen = np.random.default_rng(0)
    return [("layer.weight", gen.standard_normal((7, 5)).astype(np.float32)),
            ("layer.bias", gen.standard_normal(5).astype(np.float32))]


def _quadratic(named):
    return lambda: 0.5 * sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for _, a in named)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("seeds", [[42], [42, 7, 1 << 60]])
def test_torch_and_numpy_give_the_same_scalars_and_weights(estimator, seeds):
    arrays = _float32_arrays()
    tensors = [(n, torch.from_numpy(a.copy())) for n, a in arrays]
    perturb, _ = _numpy_backend(arrays)

    result = estimate_step(perturb, _quadratic(arrays), seeds=seeds, eps=1e-3, lr=0.1, estimator=estimator)
    expected = torch_zo_step(tensors, _quadratic([(n, t.numpy()) for n, t in tensors]), seed=seeds, eps=1e-3,
                             lr=0.1, estimator=estimator)

    assert result.scalars == expected.scalars and len(result.scalars) == len(seeds)
    for (_, a), (_, t) in zip(arrays, tensors):
        assert np.array_equal(a, t.numpy())


# --- end to end: the step lists replay to bit-identical weights everywhere -------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("directions", [1, 3])
def test_step_lists_replay_bit_exactly_on_every_party(estimator, directions):
    # A "server" and two "clients" start from the same weights; clients take local steps on a
    # working copy and upload their (key, scalar) lists through the wire; every party
    # replays the aggregate (torch, and a numpy device party too).
    torch.manual_seed(0)
    base = {"a": torch.randn(300), "b": torch.randn(7, 11)}
    parties = [{k: v.clone() for k, v in base.items()} for _ in range(3)]
    device = [(k, v.numpy().copy()) for k, v in base.items()]
    pool = candidate_seeds(1, 8)
    lr, local = 1e-2, 2
    for r in range(1, 4):
        contributions = []
        for i, party in enumerate(parties[1:]):
            work = [(k, v.clone()) for k, v in party.items()]
            keys = [(r * 5 + i * 3 + j) % 8 for j in range(local * directions)]
            result = local_train(
                work, lambda step, work=work: float(sum((v.double() ** 2).sum() for _, v in work)),
                keys=keys, seed_of_key=lambda k: int(pool[k]), eps=1e-3, lr=lr,
                estimator=estimator, directions=directions,
            )
            assert len(result.keys) == len(result.scalars) == local * directions
            if estimator == "sign":
                assert set(np.abs(result.scalars).tolist()) <= {0.0, float(np.float32(1 / directions))}
            sent = wire.decode_steps(wire.encode_steps(result.keys, result.scalars, 8), max_key=8,
                                     max_steps=local * directions)
            contributions.append((1.0 + i, *sent))
        update = aggregate(contributions, round=r, lr=lr, seed_of_key=lambda k: pool[k.astype(np.int64)])
        for party in parties:
            replay_(list(party.items()), update)
        replay_numpy_(device, update)

    for party in parties[1:]:
        for name in base:
            assert torch.equal(party[name], parties[0][name])
    for name, array in device:
        assert np.array_equal(array, parties[0][name].numpy())
    assert not torch.equal(parties[0]["a"], base["a"])


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_one_clients_step_list_is_what_the_server_replays(estimator):
    # One client, distinct keys: the aggregate is its own list (sorted by key), and replaying it
    # equals adding each direction's canonical coefficient float32(-lr * scalar), one by one.
    w0 = torch.from_numpy(rng.generator(5, "t").standard_normal(500).astype(np.float32))
    pool = candidate_seeds(2, 16)
    work = [("w", w0.clone())]
    result = local_train(work, lambda step: float((work[0][1].double() ** 2).sum()), keys=[3, 9, 14, 1],
                         seed_of_key=lambda k: int(pool[k]), eps=1e-3, lr=1e-2, estimator=estimator, directions=2)
    update = aggregate([(1.0, result.keys, result.scalars)], round=1, lr=1e-2,
                       seed_of_key=lambda k: pool[k.astype(np.int64)])
    server, by_hand = [("w", w0.clone())], w0.numpy().copy()

    replay_(server, update)
    for key, scalar in sorted(zip(result.keys.tolist(), result.scalars.tolist())):
        rng.add_scaled_(by_hand, int(pool[key]), "w", replay_coefficient(1e-2, scalar))

    assert update.keys.tolist() == sorted(result.keys.tolist())
    np.testing.assert_array_equal(update.scalars, result.scalars[np.argsort(result.keys)])
    assert np.array_equal(server[0][1].numpy(), by_hand)


# --- the clients draw q keys per step, and the server takes that many entries -------------


@pytest.mark.parametrize("name", ["fedkseed", "mezo"])
def test_a_client_draws_q_keys_per_step_and_the_server_accepts_them(name, task_identity):
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    from fedtune.config import parse_config
    from fedtune.server.strategy import FedKSeed, SeedRoundStats
    from fedtune.zo.client import ZOClient, state_digest

    def config(**algorithm):
        return parse_config({
            "model": {"config": "micro-llama"}, "data": {"num_examples": 100, "eval_examples": 8},
            "federation": {"num_clients": 4, "clients_per_round": 2},
            "algorithm": {"name": name, "num_candidates": 32, "local_steps": 3, "batch_size": 4, **algorithm},
        })

    one = ZOClient(config()).train(round=1, partition_id=0, num_partitions=4)
    cfg = config(estimator="forward", directions=2)
    report = ZOClient(cfg).train(round=1, partition_id=0, num_partitions=4)

    assert report.skipped_steps == 0 and len(report.keys) == len(report.scalars) == 6
    assert report.keys[:3].tolist() == one.keys.tolist()  # with q = 1, the draws of today
    if name == "mezo":
        assert len(set(report.keys.tolist())) == 6  # fresh seeds for every direction
    server = FedKSeed(cfg)
    request = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
    reply = Message(RecordDict({
        wire.STATE: ConfigRecord({wire.ROUND: 0, wire.DIGEST: state_digest(server.params),
                                  wire.STEP_LIST: wire.encode_steps(report.keys, report.scalars, server.universe)}),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 1.0}),
    }), reply_to=request)

    accepted = server.accept(reply, SeedRoundStats())

    assert accepted is not None and accepted[1].tolist() == report.keys.tolist()


@pytest.mark.parametrize(
    ("algorithm", "error"),
    [
        ({"directions": 0}, "`algorithm.directions` must be >= 1"),
        ({"estimator": "backward"}, "`algorithm.estimator` must be one of"),
        ({"name": "fedit", "estimator": "sign"}, "zeroth-order algorithms"),
        ({"name": "lorafair", "directions": 2}, "zeroth-order algorithms"),
    ],
)
def test_config_refuses_bad_estimators(algorithm, error):
    from fedtune.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=error):
        parse_config({"model": {"config": "micro-llama"}, "algorithm": algorithm})


@pytest.mark.parametrize("name", ["fedkseed", "fedkseed-pro", "mezo"])
def test_config_takes_estimators_for_the_zo_algorithms(name):
    from fedtune.config import parse_config

    a = parse_config({"model": {"config": "micro-llama"},
                      "algorithm": {"name": name, "estimator": "sign", "directions": 4}}).algorithm
    assert (a.estimator, a.directions) == ("sign", 4)


def test_the_estimators_and_the_device_step_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import fedtune.zo.estimators, fedtune.device.mezo; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")

    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- the registry: one module per estimator ------------------------------------------------


def test_an_estimator_is_one_registered_module(monkeypatch):
    from fedtune.zo.estimators import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # registered for this test only

    def probe(perturb, loss, seed, eps, base_loss):  # backward difference: (L(w) - L(w - eps z)) / eps
        perturb(seed, -eps)
        loss_minus = float(loss())
        return (base_loss - loss_minus) / eps, base_loss

    base.register(base.ZOEstimator(name="backward", summary="test", probe=probe, offset=-1.0, base_loss=True))
    model = _Quadratic()

    result = estimate_step(model.perturb, model.loss, seeds=[1], eps=0.5, lr=0.25, estimator="backward")

    # g = (5 - 6.25) / 0.5 = -2.5; w - lr g z_1 = (1, 3) + 0.625 (1, -1)
    assert result.scalars == (-2.5,) and result.loss == 5.0 and model.calls == 2
    np.testing.assert_array_equal(model.w, [1.625, 2.375])
    assert "backward" in base.names()


def test_a_name_registered_twice_is_refused():
    from fedtune.zo.estimators import base, central

    with pytest.raises(ValueError, match="an estimator named 'central' is already registered"):
        base.register(central.CENTRAL)


def test_an_unknown_estimator_is_one_config_line():
    from fedtune.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="`algorithm.estimator` must be one of central, forward, sign, got 'nope'"):
        parse_config({"algorithm": {"estimator": "nope"}}, [])
