"""The compiled replay kernel: the same bits as the pure numpy/torch path, refused when not.

The kernel (fedtune/rng/_replay_kernel.c, built at first use with the machine's compiler)
may only change speed: every update it makes must equal, bit for bit, the pure path's
(``fedtune.rng.pure_path``), for every dtype it takes, any size (tiles of 64 elements, work
items of 512 tiles, ragged tails), any number of directions in any order, and one or two
threads. A build that cannot be made, loaded or trusted falls back with one warning.
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtune import rng
from fedtune.dtypes import to_numpy
from fedtune.rng import _fast, torch_backend

DTYPES = ["float32", "float64", "float16", "bfloat16"]  # bfloat16: ml_dtypes' numpy type


@pytest.fixture(scope="module")
def kernel() -> _fast.Kernel:
    k = rng.fast_kernel()
    if k is None:
        pytest.skip(f"the compiled kernel is unavailable here: {rng.kernel_problem()}")
    return k


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """A process that has not tried the kernel yet, building into an empty cache."""
    monkeypatch.setattr(rng, "_kernel", rng._Unset())
    monkeypatch.setattr(rng, "_kernel_problem", None)
    monkeypatch.setenv(_fast.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(_fast.ENV_MODE, raising=False)
    return tmp_path


def _arrays(gen: np.random.Generator, sizes: list[int], dtype: str) -> list[tuple[str, np.ndarray]]:
    return [(f"layer.{i}.weight", gen.standard_normal(n).astype(_np_dtype(dtype))) for i, n in enumerate(sizes)]


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _torch(a: np.ndarray) -> torch.Tensor:
    """The array as a tensor sharing its bits (torch cannot read ml_dtypes' bfloat16 directly)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _bits(x: np.ndarray | torch.Tensor) -> bytes:
    return to_numpy(x).tobytes() if isinstance(x, torch.Tensor) else x.tobytes()


def _coefs(gen: np.random.Generator, n: int) -> list[float]:
    # Magnitudes from far below to far above the weights': the sums round in every way.
    return [float(c) for c in gen.standard_normal(n) * 10.0 ** gen.integers(-9, 3, n)]


@settings(max_examples=50, deadline=None)
@given(
    backend=st.sampled_from(["numpy", "torch"]),
    dtype=st.sampled_from(DTYPES),
    sizes=st.lists(st.integers(0, 70_000), min_size=1, max_size=4),
    n_seeds=st.integers(1, 12),
    threads=st.sampled_from([1, 2]),
    salt=st.integers(0, 2**32 - 1),
)
def test_kernel_equals_pure_path(kernel, backend, dtype, sizes, n_seeds, threads, salt):
    """numpy arrays through rng.add_scaled_many_, torch tensors through torch_backend.add_scaled_multi_."""
    gen = rng.generator(salt, "kernel-test")
    arrays = _arrays(gen, sizes, dtype)
    seeds = [int(s) for s in gen.integers(0, 2**63, n_seeds)]
    coefs = _coefs(gen, n_seeds)
    if backend == "numpy":
        add, got = rng.add_scaled_many_, arrays
    else:
        add, got = torch_backend.add_scaled_multi_, [(n, _torch(a)) for n, a in arrays]
    expected = [(n, x.copy() if backend == "numpy" else x.clone()) for n, x in got]

    with rng.pure_path():
        add(expected, seeds, coefs)
    add(got, seeds, coefs, threads=threads)

    for (name, have), (_, want) in zip(got, expected):
        assert _bits(have) == _bits(want), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_call_per_round_equals_one_direction_at_a_time(kernel, dtype):
    # The kernel adds every direction to a tile before the next tile; the definition adds
    # one direction to the whole tensor before the next: per element, the same sequence.
    gen = rng.generator(1, "kernel-order")
    (name, base), = _arrays(gen, [64 * 512 * 3 + 37], dtype)
    seeds = [int(s) for s in gen.integers(0, 2**63, 20)]
    coefs = _coefs(gen, 20)
    one_by_one = base.copy()
    with rng.pure_path():
        for seed, coef in zip(seeds, coefs):
            rng.add_scaled_(one_by_one, seed, name, coef)

    rng.add_scaled_many_([(name, base)], seeds, coefs)

    assert base.tobytes() == one_by_one.tobytes()


@pytest.mark.parametrize("coef", [float("inf"), -float("inf"), float("nan"), 1e300, 0.0, -0.0])
def test_special_coefficients_give_the_pure_paths_bits(kernel, coef):
    for dtype in DTYPES:
        base = rng.generator(2, "special").standard_normal(300).astype(_np_dtype(dtype))
        want = base.copy()
        with rng.pure_path(), np.errstate(all="ignore"):
            rng.add_scaled_(want, 5, "w", coef)
            t_want = _torch(base.copy())
            torch_backend.add_scaled_(t_want, 5, "w", coef)
        with np.errstate(all="ignore"):
            got = base.copy()
            rng.add_scaled_(got, 5, "w", coef)
            t_got = _torch(base.copy())
            torch_backend.add_scaled_(t_got, 5, "w", coef)
        assert got.tobytes() == want.tobytes(), dtype
        assert _bits(t_got) == _bits(t_want), dtype


def test_overlapping_and_odd_arrays_take_the_pure_path(kernel):
    # Two names over one buffer (an alias) and a read-only array: the kernel must not race
    # on, or write to, them; the result is the definition's, in the definition's order.
    base = rng.generator(3, "alias").standard_normal(1000).astype(np.float32)
    shared = base.copy()
    pairs = [("a", shared), ("b", shared[:500])]
    expected_shared = base.copy()
    with rng.pure_path():
        rng.add_scaled_many_([("a", expected_shared), ("b", expected_shared[:500])], [1, 2], [0.5, -0.25])
    rng.add_scaled_many_(pairs, [1, 2], [0.5, -0.25])
    assert shared.tobytes() == expected_shared.tobytes()

    frozen = base.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        rng.add_scaled_(frozen, 1, "w", 1.0)


def test_bfloat16_tensors_and_big_endian_arrays_give_the_pure_paths_bits(kernel):
    t = torch.randn(300, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    want = t.clone()
    with rng.pure_path():
        torch_backend.add_scaled_(want, 3, "w", 1e-2)
    torch_backend.add_scaled_(t, 3, "w", 1e-2)
    assert torch.equal(t.view(torch.int16), want.view(torch.int16))

    big = rng.generator(4, "be").standard_normal(130).astype(">f4")
    big_want = big.copy()
    with rng.pure_path():
        rng.add_scaled_(big_want, 3, "w", 1e-2)
    rng.add_scaled_(big, 3, "w", 1e-2)
    assert big.tobytes() == big_want.tobytes()


# --- the fallback: forced, missing compiler, corrupted build --------------------------------


def test_env_var_forces_the_pure_path_without_a_warning(fresh_state, monkeypatch):
    monkeypatch.setenv(_fast.ENV_MODE, "fallback")
    monkeypatch.setattr(_fast, "build", lambda: pytest.fail("the kernel must not be built"))
    a = rng.generator(5, "env").standard_normal(200).astype(np.float32)
    want = a.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rng.fast_kernel() is None
        rng.add_scaled_(a, 9, "w", 0.1)
    rng._add_scaled_fallback_(want, 9, "w", 0.1)
    assert a.tobytes() == want.tobytes()


@pytest.mark.parametrize(("cc", "reason"), [("/nonexistent/cc", "no C compiler"), ("false", "failed")])
def test_a_missing_or_failing_compiler_warns_once_and_falls_back(fresh_state, monkeypatch, cc, reason):
    monkeypatch.setenv(_fast.ENV_CC, cc)
    a = rng.generator(6, "cc").standard_normal(1000).astype(np.float32)
    t = torch.from_numpy(a.copy())
    want = a.copy()
    rng._add_scaled_fallback_(want, 9, "w", 0.1)

    with pytest.warns(RuntimeWarning, match=reason) as record:
        rng.add_scaled_(a, 9, "w", 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, not one per call
        torch_backend.add_scaled_(t, 9, "w", 0.1)

    assert len(record) == 1
    assert "not used" in str(record[0].message)
    assert reason in (rng.kernel_problem() or "")
    assert a.tobytes() == want.tobytes() == t.numpy().tobytes()


def test_a_kernel_with_wrong_stream_bits_is_refused(fresh_state, monkeypatch):
    real = _fast.build()

    def wrong_key(*args):  # every name's key zeroed: the pinned vectors differ
        zeros = np.zeros(args[1], dtype=np.uint64)
        return real.fn(*args[:4], zeros.ctypes.data, *args[5:])

    monkeypatch.setattr(_fast, "build", lambda: _fast.Kernel(real.path, real.simd, wrong_key, real.probe))
    with pytest.warns(RuntimeWarning, match="refused: the kernel's stream differs from the pinned vectors"):
        assert rng.fast_kernel() is None
    a = np.zeros(64, dtype=np.float32)
    rng.add_scaled_(a, 0, "w", 1.0)
    np.testing.assert_array_equal(a, rng.rademacher(0, "w", 64))


def test_a_kernel_that_reorders_the_additions_is_refused(fresh_state, monkeypatch):
    real = _fast.build()

    def reversed_seeds(dtype, ntensors, ptrs, sizes, names, nseeds, seeds, cbits, threads):
        # Right stream, right single additions, wrong order across directions: only the
        # comparison with the pure path on several directions can see it.
        seed_arr = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint64 * nseeds).from_address(seeds))[::-1].copy()
        bits = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint64 * nseeds).from_address(cbits))[::-1].copy()
        return real.fn(dtype, ntensors, ptrs, sizes, names, nseeds, seed_arr.ctypes.data, bits.ctypes.data, threads)

    monkeypatch.setattr(_fast, "build", lambda: _fast.Kernel(real.path, real.simd, reversed_seeds, real.probe))
    with pytest.warns(RuntimeWarning, match="refused: the kernel's float32 update differs from the numpy path"):
        assert rng.fast_kernel() is None


def test_a_corrupted_build_on_disk_is_refused(fresh_state):
    # What a torn copy or a disk error leaves where the build should be.
    _fast.target_path().write_bytes(b"\x7fELF not really a shared object")

    with pytest.warns(RuntimeWarning, match="cannot load"):
        assert rng.fast_kernel() is None


def test_the_build_lands_in_the_cache_dir_not_the_repo(fresh_state):
    built = _fast.build()
    assert built.path.parent == fresh_state
    assert built.path.name.startswith("replay-kernel-") and built.path.suffix == ".so"
    assert not list(_fast.SOURCE.parent.glob("*.so"))
