"""Compression maths: what top-k keeps, quantisation error bounds, ternary scale, error feedback."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedtune.compress import Compressor, ErrorFeedback, Quantized, Ternary, quantize, top_k

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def test_top_k_keeps_the_largest_magnitudes_in_ascending_positions():
    x = np.array([0.1, -5.0, 0.3, 4.0, -0.2, 0.0], np.float32)

    assert top_k(x, 2 / 6).tolist() == [1, 3]
    assert top_k(x, 0.01).tolist() == [1]  # at least one
    assert top_k(x, 1.0).tolist() == list(range(6))


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=finite), st.sampled_from([2, 4, 8]))
def test_round_to_nearest_is_within_half_a_step(x, bits):
    q = quantize(x, bits)

    assert q.codes.max(initial=0) < 2**bits
    err = np.abs(q.values().astype(np.float64) - x)
    assert err.max() <= q.step / 2 * (1 + 1e-5) + 1e-6 * np.abs(x).max()


def test_stochastic_rounding_is_unbiased():
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    rng = np.random.default_rng(0)

    mean = np.mean([quantize(x, 2, rng).values() for _ in range(4000)], axis=0)

    step = quantize(x, 2).step  # 2/3: one draw is off by up to 0.67
    # 4000 draws: the mean's standard error is <= step/2/sqrt(4000) = 0.0053; 0.03 is > 5 sigma
    assert np.abs(mean - x).max() < 0.03
    assert step == pytest.approx(2 / 3)


def test_a_constant_tensor_quantises_exactly():
    q = quantize(np.full(10, 0.25, np.float32), 4)
    np.testing.assert_array_equal(q.values(), np.full(10, 0.25, np.float32))


def test_ternary_is_sign_times_the_mean_kept_magnitude():
    x = np.array([3.0, -1.0, 0.1, -2.0], np.float32)

    c = Compressor("ternary", topk=0.75)(x)

    assert isinstance(c.values, Ternary)
    assert c.indices.tolist() == [0, 1, 3]
    assert c.values.scale == pytest.approx(2.0)
    np.testing.assert_array_equal(c.decompress(), [2.0, -2.0, 0.0, -2.0])


def test_topk_quantize_quantises_only_the_kept_values():
    x = np.arange(100, dtype=np.float32) - 50

    c = Compressor("topk-quantize", topk=0.1, bits=8)(x)

    assert isinstance(c.values, Quantized) and c.values.codes.size == 10
    kept = c.decompress()[c.indices]
    np.testing.assert_allclose(kept, x[c.indices], atol=c.values.step / 2 + 1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"method": "zip"}, "method must be one of"), ({"method": "topk", "topk": 0.0}, "topk must be in"),
     ({"method": "quantize", "bits": 3}, "bits must be one of")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Compressor(**kwargs)


def test_stochastic_rounding_needs_an_rng():
    with pytest.raises(ValueError, match="needs an rng"):
        Compressor("quantize", stochastic=True)(np.ones(3, np.float32))


@pytest.mark.parametrize("method", ["topk", "topk-quantize", "ternary"])
def test_rescale_sends_the_norm_of_the_update_never_less(method):
    x = np.random.default_rng(8).standard_normal((64, 32)).astype(np.float32)
    plain = Compressor(method, topk=0.1, bits=8)(x).decompress()
    rescaled = Compressor(method, topk=0.1, bits=8, rescale=True)(x)
    values = rescaled.decompress()

    assert np.linalg.norm(plain) < 0.7 * np.linalg.norm(x)  # top-10 % of a Gaussian: 44 % of its energy
    assert np.linalg.norm(values) == pytest.approx(np.linalg.norm(x), rel=1e-5)
    np.testing.assert_array_equal(values != 0, plain != 0)  # the same positions, the same signs
    np.testing.assert_array_equal(np.sign(values), np.sign(plain))
    # a target shorter than what is kept never scales down
    assert np.linalg.norm(Compressor(method, topk=0.1, bits=8, rescale=True)(x, norm=0.1).decompress()) == (
        pytest.approx(np.linalg.norm(plain), rel=1e-5))


def test_rescale_leaves_the_dense_methods_alone():
    x = np.random.default_rng(9).standard_normal(500).astype(np.float32)
    for method in ("none", "quantize"):
        np.testing.assert_array_equal(Compressor(method, rescale=True)(x).decompress(), Compressor(method)(x).decompress())


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("method", ["topk", "quantize", "topk-quantize", "ternary"])
def test_error_feedback_loses_nothing_only_delays_it(method, rescale):
    """After any number of rounds: sum(sent) + residual == sum(updates), rescaled or not."""
    rng = np.random.default_rng(5)
    feedback = ErrorFeedback(Compressor(method, topk=0.05, bits=2, rescale=rescale))
    total_in = {"w": np.zeros((32, 16)), "v": np.zeros(40)}
    total_sent = {"w": np.zeros((32, 16)), "v": np.zeros(40)}
    for _ in range(30):
        update = {"w": rng.standard_normal((32, 16)).astype(np.float32),
                  "v": rng.standard_normal(40).astype(np.float32)}
        sent = feedback(update)
        for name, value in update.items():
            total_in[name] += value
            total_sent[name] += sent[name].decompress()

    for name, value in total_in.items():
        np.testing.assert_allclose(total_sent[name] + feedback.residual[name], value, atol=2e-4)
        # and the residual stays bounded: what is dropped now is sent later
        assert np.abs(feedback.residual[name]).max() < 30


def test_error_feedback_beats_plain_compression_on_the_running_sum():
    rng = np.random.default_rng(6)
    compressor = Compressor("topk", topk=0.05)
    feedback = ErrorFeedback(compressor)
    truth = plain = with_ef = 0.0
    for _ in range(50):
        update = rng.standard_normal(1000).astype(np.float32) + 0.1  # a small common drift
        truth = truth + update
        plain = plain + compressor(update).decompress()
        with_ef = with_ef + feedback({"x": update})["x"].decompress()

    assert np.linalg.norm(with_ef - truth) < 0.5 * np.linalg.norm(plain - truth)


def test_a_residual_of_another_shape_is_refused():
    feedback = ErrorFeedback(Compressor("topk"), {"x": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="residual of 'x' has shape"):
        feedback({"x": np.zeros(4, np.float32)})


def test_ranges_at_float32s_edges_quantise_without_overflow_or_a_zero_step():
    tiny = quantize(np.array([1e-45, 0.0], np.float32), 2)  # the range rounds to a zero step
    np.testing.assert_array_equal(tiny.values(), np.array([1e-45, 0.0], np.float32))
    wide = quantize(np.array([-3e38, 3e38, 0.0], np.float32), 2)  # hi - lo overflows float32
    values = wide.values()
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values, [-3e38, 3e38, 1e38], rtol=1e-6)  # 0 is 1/3 of a step off
