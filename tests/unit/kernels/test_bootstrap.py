"""The Poisson bootstrap: backends agree, counts are Poisson(1) and a pure function of
(seed, key, replicate), the choice of backend follows the environment, warm-up covers it.

Every random input is seeded; hypothesis prints the failing seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nudgeserve.kernels import REGISTRY, poisson_bootstrap_counts, poisson_bootstrap_sums, warmup

OP = "poisson_bootstrap_sums"


def _impl(backend: str):
    impl = REGISTRY.implementations(OP).get(backend)
    if impl is None:
        pytest.skip(f"{backend} backend of {OP} is not available (numba not installed)")
    return impl


def _inputs(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed % 2**32)
    return rng.integers(0, 2**63, n).astype(np.uint64), rng.normal(size=(n, k))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 3000),
    k=st.integers(1, 12),
    b=st.integers(0, 64),
    seed=st.integers(0, 2**64 - 1),
)
def test_numba_matches_the_numpy_reference(n, k, b, seed):
    keys, stats = _inputs(n, k, seed)
    want = _impl("numpy")(keys, stats, b, seed, 1)
    got = _impl("numba")(keys, stats, b, seed, 1)
    # The counts are the same integers; the reference sums them by a matrix product, the
    # kernel row by row, so the float64 sums differ in the last bits only.
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def test_numba_counts_are_exactly_the_reference_counts():
    keys, _ = _inputs(300, 1, 5)
    # With stats = identity, sum_i count[b, i] * stats[i, j] is count[b, j] exactly.
    got = _impl("numba")(keys, np.eye(300), 40, 2**64 - 1, 1)
    np.testing.assert_array_equal(got, poisson_bootstrap_counts(keys, 40, 2**64 - 1))


def test_counts_are_pinned():
    # Reports quote intervals by seed: these counts must never change.
    counts = poisson_bootstrap_counts(np.arange(8, dtype=np.uint64), 3, 2026)
    assert counts.astype(int).tolist() == [
        [1, 3, 1, 0, 1, 1, 1, 1],
        [1, 3, 0, 2, 2, 2, 2, 0],
        [1, 0, 1, 2, 1, 1, 1, 1],
    ]


def test_parallel_and_serial_numba_give_the_same_bits():
    impl = _impl("numba")
    keys, stats = _inputs(40_000, 7, 3)  # 40,000 x 50 cells: above the parallel floor
    np.testing.assert_array_equal(impl(keys, stats, 50, 9, 2), impl(keys, stats, 50, 9, 1))


def test_counts_follow_poisson_one():
    counts = poisson_bootstrap_counts(np.arange(20_000, dtype=np.uint64), 50, seed=11)
    observed = np.bincount(counts.astype(int).ravel(), minlength=6)[:6] / counts.size
    expected = [math.exp(-1) / math.factorial(k) for k in range(6)]
    np.testing.assert_allclose(observed, expected, atol=2e-3)
    assert counts.mean() == pytest.approx(1.0, abs=5e-3)
    assert counts.var() == pytest.approx(1.0, abs=1e-2)


def test_a_rows_counts_depend_on_its_key_not_its_position_or_batch():
    keys, stats = _inputs(1000, 3, 8)
    order = np.random.default_rng(0).permutation(1000)
    counts = poisson_bootstrap_counts(keys, 20, 4)
    np.testing.assert_array_equal(poisson_bootstrap_counts(keys[order], 20, 4), counts[:, order])
    parts = poisson_bootstrap_sums(keys[:400], stats[:400], 20, 4) + poisson_bootstrap_sums(
        keys[400:], stats[400:], 20, 4
    )
    np.testing.assert_allclose(parts, poisson_bootstrap_sums(keys, stats, 20, 4), rtol=1e-12)
    assert not np.array_equal(poisson_bootstrap_counts(keys, 20, 5), counts)  # the seed matters


def test_environment_forces_the_reference(monkeypatch):
    keys, stats = _inputs(500, 4, 1)
    monkeypatch.setenv("NUDGESERVE_KERNELS", "numpy")
    REGISTRY.reset()
    try:
        assert REGISTRY.backend(OP) == "numpy"
        got = poisson_bootstrap_sums(keys, stats, 30, 2)
    finally:
        # Choices made under the forced setting must not outlive this test (the
        # environment itself is restored by monkeypatch before the next choice).
        REGISTRY.reset()
    np.testing.assert_array_equal(got, _impl("numpy")(keys, stats, 30, 2, 1))


def test_warmup_runs_the_op():
    assert OP in warmup()


@pytest.mark.parametrize(
    ("call", "error", "word"),
    [
        (lambda k, s: poisson_bootstrap_sums(k, s, 10, -1), ValueError, "seed"),
        (lambda k, s: poisson_bootstrap_sums(k, s, 10, 2**64), ValueError, "seed"),
        (lambda k, s: poisson_bootstrap_sums(k, s, 10, 1.5), TypeError, "seed"),
        (lambda k, s: poisson_bootstrap_sums(k, s, -1, 0), ValueError, "n_bootstrap"),
        (lambda k, s: poisson_bootstrap_sums(k[:-1], s, 10, 0), ValueError, "keys"),
        (lambda k, s: poisson_bootstrap_sums(k.astype(float), s, 10, 0), TypeError, "keys"),
        (lambda k, s: poisson_bootstrap_sums(k, s[:, 0], 10, 0), ValueError, "stats"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(call, error, word):
    keys, stats = _inputs(20, 2, 0)
    with pytest.raises(error, match=word):
        call(keys, stats)
