"""Exploration samplers: backends agree, rows are reproducible and independent of their
batch, and the returned propensities are the probabilities the draws actually follow.

Frequency tests use fixed seeds (0..n-1), so each is deterministic: it passes or fails
the same way every run; tolerances are 5 binomial standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nudgeserve.kernels import (
    REGISTRY,
    epsilon_greedy_slate,
    plackett_luce_slate,
    thompson_bernoulli_slate,
    topk,
)
from nudgeserve.kernels import _sampling_ref as ref
from nudgeserve.kernels.rng import GAMMA, mix64, row_keys, uniforms

# The samplers have a numba kernel and the NumPy reference (no Cython: numba's loops are
# as fast here, and nothing in them needs SIMD).
backend_param = pytest.mark.parametrize("backend", ["numba", "numpy"])
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan]


def _impl(op: str, backend: str):
    impl = REGISTRY.implementations(op).get(backend)
    if impl is None:
        pytest.skip(f"{backend} backend of {op} is not available (numba not installed)")
    return impl


@st.composite
def score_inputs(draw, max_rows=5, max_cols=40):
    n_rows = draw(st.integers(0, max_rows))
    n_cols = draw(st.integers(0, max_cols))
    shape = (n_rows, n_cols)
    if draw(st.booleans()):
        scores = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(SPECIAL)))
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        spread = draw(st.sampled_from([0.01, 1.0, 30.0, 1e4]))
        scores = (np.random.default_rng(seed).standard_normal(shape) * spread).astype(np.float32)
    mask = draw(st.one_of(st.none(), hnp.arrays(np.bool_, shape)))
    seeds = draw(hnp.arrays(np.uint64, (n_rows,), elements=st.integers(0, 2**64 - 1)))
    k = draw(st.integers(0, n_cols + 3))
    return scores, k, seeds, mask


def _check_padding_and_range(indices, props, scores, mask):
    valid = ~np.isnan(scores) & (True if mask is None else ~mask)
    n_valid = valid.sum(axis=1)
    k = indices.shape[1]
    filled = np.arange(k)[None, :] < np.minimum(n_valid, k)[:, None]
    assert ((indices >= 0) == filled).all()
    assert (indices[~filled] == -1).all() and np.isnan(props[~filled]).all()
    assert (props[filled] > 0).all() and (props[filled] <= 1 + 1e-12).all()
    for r in range(indices.shape[0]):
        row = indices[r][filled[r]]
        assert len(set(row.tolist())) == row.size  # without replacement
        assert valid[r, row].all()


# -- the counter-based generator -------------------------------------------------------------


def test_splitmix64_known_answers():
    # SplitMix64 from state 0: the first outputs of the reference implementation.
    state = np.arange(1, 4, dtype=np.uint64) * GAMMA
    np.testing.assert_array_equal(
        mix64(state),
        np.array([0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F], dtype=np.uint64),
    )


def test_uniforms_are_open_unit_and_uniform():
    u = uniforms(row_keys(np.array([12345], dtype=np.uint64)), np.arange(200_000))
    assert u.min() > 0.0 and u.max() < 1.0
    counts = np.bincount((u * 20).astype(int), minlength=20)
    chi2 = ((counts - 10_000) ** 2 / 10_000).sum()
    assert chi2 < 50  # 19 dof: p ~ 1e-4


def test_numba_generator_is_bit_identical():
    nb = pytest.importorskip("nudgeserve.kernels._sampling_numba")
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 2**64 - 1, 50, dtype=np.uint64, endpoint=True)
    counters = rng.integers(0, 2**40, 50).astype(np.uint64)
    keys = row_keys(seeds)
    want = uniforms(keys, counters)
    got = [nb._uniform(nb._row_key(s), c) for s, c in zip(seeds, counters, strict=True)]
    np.testing.assert_array_equal(np.array(got), want)
    shapes = np.linspace(0.05, 300, 50)
    g, log_boost = ref.gamma_draws(keys, counters, shapes)
    got = np.array([nb._gamma(key, c, a) for key, c, a in zip(keys, counters, shapes, strict=True)])
    np.testing.assert_allclose(got[:, 0], g, rtol=1e-12)
    np.testing.assert_allclose(got[:, 1], log_boost, rtol=1e-12)


@pytest.mark.parametrize("shape", [0.05, 0.3, 1.0, 2.5, 40.0, 5e4])
def test_gamma_draws_have_the_right_moments(shape):
    n = 40_000
    g, log_boost = ref.gamma_draws(
        row_keys(np.array([7], dtype=np.uint64)),
        np.arange(n, dtype=np.uint64),
        np.full(n, shape),
    )
    x = g * np.exp(log_boost)
    # Gamma(a, 1): mean a, variance a; the sample mean's error is sqrt(a / n).
    assert abs(x.mean() - shape) < 5 * math.sqrt(shape / n)
    # The sample variance of a very skewed Gamma (tiny shape) converges slowly.
    assert abs(x.var() / shape - 1) < (0.25 if shape < 0.1 else 0.1)


def test_beta_draws_from_thompson_delta_have_the_right_mean():
    n = 40_000
    keys = row_keys(np.array([11], dtype=np.uint64))
    for a, b in [(0.4, 0.7), (3.0, 30.0), (500.0, 20.0)]:
        delta = ref.thompson_delta(keys, 2 * np.arange(n, dtype=np.uint64), a, b)
        theta = 1.0 / (1.0 + np.exp(-delta))
        sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        assert abs(theta.mean() - a / (a + b)) < 5 * sd / math.sqrt(n)
        assert abs(theta.std() / sd - 1) < 0.05


# -- every backend against the reference --------------------------------------------------


@backend_param
@settings(max_examples=60, deadline=None)
@given(data=score_inputs(), epsilon=st.sampled_from([0.0, 0.2, 0.5, 1.0]))
def test_epsilon_greedy_backend_matches_reference(backend, data, epsilon):
    scores, k, seeds, mask = data
    got = _impl("epsilon_greedy_slate", backend)(scores, k, epsilon, seeds, mask, 1)
    want = ref.epsilon_greedy_slate(scores, k, epsilon, seeds, mask)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])  # same float operations: exact
    _check_padding_and_range(*got, scores, mask)


@backend_param
@settings(max_examples=60, deadline=None)
@given(data=score_inputs(), temperature=st.sampled_from([1e-3, 0.5, 1.0, 50.0]))
def test_plackett_luce_backend_matches_reference(backend, data, temperature):
    scores, k, seeds, mask = data
    got = _impl("plackett_luce_slate", backend)(scores, k, temperature, seeds, mask, 1)
    want = ref.plackett_luce_slate(scores, k, temperature, seeds, mask)
    np.testing.assert_array_equal(got[0], want[0])
    # libm's exp and NumPy's SIMD exp may differ in the last bit.
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=0)
    _check_padding_and_range(*got, scores, mask)


@backend_param
@settings(max_examples=40, deadline=None)
@given(
    data=score_inputs(max_cols=25),
    shared=st.booleans(),
    low=st.sampled_from([0.01, 0.5, 1.0, 100.0]),
)
def test_thompson_draw_backend_matches_reference(backend, data, shared, low):
    scores, k, seeds, mask = data
    n_rows, n_cols = scores.shape
    rng = np.random.default_rng(int(seeds[0] % 1000) if n_rows else 0)
    alpha = rng.uniform(low, low * 50, (1 if shared else n_rows, n_cols))
    beta = rng.uniform(low, low * 50, alpha.shape)
    got = _impl("thompson_draw", backend)(alpha, beta, k, seeds, mask, 1)
    np.testing.assert_array_equal(got, ref.thompson_draw(alpha, beta, k, seeds, mask))


@backend_param
@pytest.mark.parametrize("op", ["epsilon_greedy_slate", "plackett_luce_slate"])
def test_parallel_rows_equal_serial(backend, op):
    impl = _impl(op, backend)
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((500, 100)).astype(np.float32)  # above the parallel floor
    mask = rng.random(scores.shape) < 0.2
    seeds = np.arange(500, dtype=np.uint64)
    one = impl(scores, 4, 0.5, seeds, mask, 1)
    two = impl(scores, 4, 0.5, seeds, mask, 2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


@backend_param
@pytest.mark.parametrize(
    "op",
    ["epsilon_greedy_slate", "plackett_luce_slate", "thompson_draw"],
)
def test_backend_runs_its_registered_small_example(backend, op):
    args, kwargs = REGISTRY.example(op, "small")
    got = _impl(op, backend)(*args, **kwargs)
    want = getattr(ref, op)(*args, **kwargs)
    for g, w in zip(
        got if isinstance(got, tuple) else (got,),
        want if isinstance(want, tuple) else (want,),
        strict=True,
    ):
        np.testing.assert_allclose(g, w, rtol=1e-12)


# -- reproducibility and batch independence (public functions) ----------------------------


def _samplers(scores, k, seeds, mask):
    alpha = 1.0 + np.abs(scores.astype(np.float64) * 3).round()
    alpha[~np.isfinite(alpha)] = 1.0
    beta = alpha[:, ::-1] + 2.0  # per row, so a row alone has the same posteriors
    return {
        "epsilon": epsilon_greedy_slate(scores, k, 0.5, seeds, mask),
        "pl": plackett_luce_slate(scores, k, 0.7, seeds, mask),
        "thompson": thompson_bernoulli_slate(alpha, beta, k, seeds, mask),
    }


@settings(max_examples=25, deadline=None)
@given(data=score_inputs(max_rows=6, max_cols=12))
def test_a_row_is_independent_of_its_batch(data):
    scores, k, seeds, mask = data
    batch = _samplers(scores, k, seeds, mask)
    again = _samplers(scores, k, seeds, mask)
    for name in batch:
        np.testing.assert_array_equal(batch[name][0], again[name][0])
        np.testing.assert_array_equal(batch[name][1], again[name][1])
    for r in range(scores.shape[0]):
        alone = _samplers(
            scores[r : r + 1], k, seeds[r : r + 1], None if mask is None else mask[r : r + 1]
        )
        for name in batch:
            np.testing.assert_array_equal(alone[name][0][0], batch[name][0][r], err_msg=name)
            np.testing.assert_allclose(
                alone[name][1][0], batch[name][1][r], rtol=1e-12, err_msg=name
            )


def test_different_seeds_give_different_slates():
    scores = np.zeros((1, 50), dtype=np.float32)
    slates = {tuple(plackett_luce_slate(scores, 5, 1.0, [s])[0][0]) for s in range(20)}
    assert len(slates) == 20


def test_seeds_accept_python_ints_and_signed_arrays():
    scores = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    want = epsilon_greedy_slate(scores, 3, 1.0, np.array([1, 2, 2**63 + 5], dtype=np.uint64))
    got = epsilon_greedy_slate(scores, 3, 1.0, [1, 2, 2**63 + 5])
    np.testing.assert_array_equal(got[0], want[0])
    got = epsilon_greedy_slate(scores[:2], 3, 1.0, np.array([1, 2], dtype=np.int32))
    np.testing.assert_array_equal(got[0], want[0][:2])


# -- semantics and exact probabilities ------------------------------------------------------


def test_epsilon_extremes():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((20, 30)).astype(np.float32)
    mask = rng.random((20, 30)) < 0.3
    seeds = np.arange(20)
    indices, props = epsilon_greedy_slate(scores, 4, 0.0, seeds, mask)
    np.testing.assert_array_equal(indices, topk(scores, 4, mask)[0])
    np.testing.assert_array_equal(props, 1.0)
    indices, props = epsilon_greedy_slate(scores, 4, 1.0, seeds, mask)
    n_valid = (~mask).sum(axis=1)
    np.testing.assert_allclose(props, np.repeat(1.0 / n_valid[:, None], 4, axis=1))


def test_epsilon_greedy_frequencies_match_propensities():
    scores = np.array([[0.3, 2.0, np.nan, 1.0, -1.0, 0.5]], dtype=np.float32)
    mask = np.array([[False, False, False, False, False, True]])
    n, k, eps = 20_000, 3, 0.3
    indices, props = epsilon_greedy_slate(
        np.repeat(scores, n, 0), k, eps, np.arange(n), np.repeat(mask, n, 0)
    )
    greedy = [1, 3, 0]
    for s in range(k):
        for item in (0, 1, 3, 4):
            p = (1 - eps) * (greedy[s] == item) + eps / 4
            freq = (indices[:, s] == item).mean()
            assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (s, item, freq, p)
            assert np.all(props[indices[:, s] == item, s] == p)


def _pl_probability(scores, temperature, slate):
    z = np.asarray(scores, dtype=np.float64) / temperature
    remaining = list(range(len(z)))
    p = 1.0
    for item in slate:
        w = np.exp(z[remaining] - z[remaining].max())
        p *= w[remaining.index(item)] / w.sum()
        remaining.remove(item)
    return p


def test_plackett_luce_frequencies_match_slate_probabilities():
    scores = np.array([[1.0, 0.2, -0.5, 0.9]], dtype=np.float32)
    n, k, t = 24_000, 3, 0.8
    indices, props = plackett_luce_slate(np.repeat(scores, n, 0), k, t, np.arange(n))
    slates, counts = np.unique(indices, axis=0, return_counts=True)
    assert len(slates) == 24  # every ordered 3-of-4 slate occurs
    for slate, count in zip(slates, counts, strict=True):
        p = _pl_probability(scores[0], t, slate)
        assert abs(count / n - p) < 5 * math.sqrt(p * (1 - p) / n), (slate, count / n, p)
        rows = (indices == slate).all(axis=1)
        np.testing.assert_allclose(np.nanprod(props[rows], axis=1), p, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=score_inputs(max_rows=3, max_cols=15), temperature=st.sampled_from([0.05, 1.0, 9.0]))
def test_plackett_luce_propensity_is_the_conditional_softmax(data, temperature):
    scores, k, seeds, mask = data
    indices, props = plackett_luce_slate(scores, k, temperature, seeds, mask)
    for r in range(scores.shape[0]):
        valid = ~np.isnan(scores[r]) & (True if mask is None else ~mask[r])
        remaining = set(np.flatnonzero(valid).tolist())
        for item, p in zip(indices[r], props[r], strict=True):
            if item < 0:
                break
            z = scores[r].astype(np.float64) / temperature
            zs = np.array([z[j] for j in sorted(remaining)])
            top = zs.max()
            if np.isinf(top):
                want = (z[item] == top) / (zs == top).sum()
            else:
                want = math.exp(z[item] - top) / np.exp(zs - top).sum()
            assert p == pytest.approx(want, rel=1e-9)
            remaining.remove(int(item))


def test_plackett_luce_is_stable_for_huge_scores():
    scores = np.array([[3e38, -3e38, 1e30, 0.0]], dtype=np.float32)
    indices, props = plackett_luce_slate(scores, 4, 1e-3, [1])
    np.testing.assert_array_equal(indices, [[0, 2, 3, 1]])
    np.testing.assert_array_equal(props, [[1.0, 1.0, 1.0, 1.0]])


# -- Thompson sampling -------------------------------------------------------------------


def _lbeta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _p_second_beats_first(a1, b1, a2, b2):
    """P(X2 > X1), X_i ~ Beta(a_i, b_i), a2 an integer (closed form, a finite sum)."""
    return sum(
        math.exp(_lbeta(a1 + i, b1 + b2) - math.log(b2 + i) - _lbeta(1 + i, b2) - _lbeta(a1, b1))
        for i in range(int(a2))
    )


@pytest.mark.parametrize(
    "a1,b1,a2,b2",
    [
        (1, 1, 1, 1),
        (1, 1, 2, 1),
        (3, 7, 5, 5),
        (20, 300, 25, 310),
        (2, 1000, 1, 400),
        (200, 9000, 230, 9100),
        (0.3, 0.7, 4, 2),
        (1, 1, 1, 1_000_000),
        (5000, 5000, 7, 3),
    ],
)
def test_top_probability_matches_the_two_arm_closed_form(a1, b1, a2, b2):
    p = ref.slot_probabilities(np.array([a1, a2], float), np.array([b1, b2], float), 2)
    want = _p_second_beats_first(a1, b1, a2, b2)
    assert p[1, 0] == pytest.approx(want, abs=1e-6)
    assert p[0, 1] == pytest.approx(want, abs=1e-6)  # second place is the other arm
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)


def _monte_carlo_ranks(a, b, k, draws, seed):
    rng = np.random.default_rng(seed)
    ranked = np.argsort(-rng.beta(a, b, (draws, a.shape[0])), axis=1)[:, :k]
    return np.stack([np.bincount(ranked[:, s], minlength=a.shape[0]) for s in range(k)], 1) / draws


@pytest.mark.parametrize("n_arms,k", [(3, 3), (12, 4), (60, 3)])
def test_slot_probabilities_match_monte_carlo(n_arms, k):
    rng = np.random.default_rng(n_arms)
    a = rng.uniform(0.2, 40, n_arms)
    b = rng.uniform(0.2, 400, n_arms)
    p = ref.slot_probabilities(a, b, k)
    draws = 200_000
    freq = _monte_carlo_ranks(a, b, k, draws, seed=n_arms)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-6)
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / draws) + 1e-4)


def test_slot_probabilities_with_very_different_widths():
    # A flat arm, two sharp ones and a sub-1 shape: support, grid and tails all stressed.
    a = np.array([1.0, 1e6, 0.2, 50.0, 2900.0, 0.05])
    b = np.array([1.0, 1e6, 0.9, 5.0, 3100.0, 0.05])
    p = ref.slot_probabilities(a, b, 3)
    draws = 400_000
    freq = _monte_carlo_ranks(a, b, 3, draws, seed=4)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=1e-6)
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / draws) + 1e-4)


def test_thompson_frequencies_match_propensities():
    alpha = np.array([3.0, 5.0, 2.0, 8.0, 1.0])
    beta = np.array([30.0, 40.0, 10.0, 90.0, 9.0])
    n, k = 20_000, 3
    mask = np.zeros((n, 5), dtype=bool)
    mask[n // 2 :, 2] = True  # two distinct masks: two propensity tables
    indices, props = thompson_bernoulli_slate(alpha, beta, k, np.arange(n), mask)
    assert not np.any(indices[n // 2 :] == 2)
    for half in (slice(0, n // 2), slice(n // 2, n)):
        idx, pr = indices[half], props[half]
        for s in range(k):
            for arm in np.unique(idx[:, s]):
                chosen = idx[:, s] == arm
                p = pr[chosen, s]
                assert np.all(p == p[0])  # one probability per (slot, arm, mask)
                freq = chosen.mean()
                se = math.sqrt(p[0] * (1 - p[0]) / idx.shape[0])
                assert abs(freq - p[0]) < 5 * se + 1e-6, (s, arm, freq, p[0])


def test_thompson_table_puts_each_slot_and_arm_in_place():
    rng = np.random.default_rng(8)
    alpha, beta = rng.uniform(1, 20, (2, 9)), rng.uniform(1, 200, (2, 9))
    valid = np.ones((2, 9), bool)
    valid[1, [0, 4]] = False
    table = ref.thompson_slot_probabilities(alpha, beta, valid, 4)
    assert table.shape == (2, 4, 9)
    np.testing.assert_allclose(table.sum(axis=2), 1.0, atol=1e-6)
    assert (table[1][:, [0, 4]] == 0).all()
    np.testing.assert_array_equal(
        table[1][:, valid[1]], ref.slot_probabilities(alpha[1, valid[1]], beta[1, valid[1]], 4).T
    )


def test_thompson_per_row_posteriors_and_padding():
    alpha = np.array([[1.0, 1.0, 1.0], [2.0, 50.0, 3.0]])
    beta = np.array([[1.0, 1.0, 1.0], [9.0, 1.0, 9.0]])
    mask = np.array([[False, True, False], [True, True, True]])
    indices, props = thompson_bernoulli_slate(alpha, beta, 3, [4, 5], mask)
    assert set(indices[0, :2].tolist()) == {0, 2} and indices[0, 2] == -1
    np.testing.assert_allclose(props[0, :2], 0.5, atol=1e-9)  # two identical posteriors
    np.testing.assert_array_equal(indices[1], [-1, -1, -1])
    assert np.isnan(props[1]).all() and np.isnan(props[0, 2])


# -- bad input ---------------------------------------------------------------------------

S = np.zeros((2, 3), dtype=np.float32)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (
            lambda: epsilon_greedy_slate(S, 1, 1.5, [0, 1]),
            ValueError,
            r"epsilon must be in \[0, 1\]",
        ),
        (lambda: epsilon_greedy_slate(S, 1, float("nan"), [0, 1]), ValueError, "epsilon"),
        (lambda: epsilon_greedy_slate(S, 1, True, [0, 1]), TypeError, "epsilon"),
        (lambda: epsilon_greedy_slate(S, -1, 0.1, [0, 1]), ValueError, "k must be >= 0"),
        (lambda: epsilon_greedy_slate(S.astype(float), 1, 0.1, [0, 1]), TypeError, "float32"),
        (lambda: epsilon_greedy_slate(S, 1, 0.1, [0]), ValueError, r"seeds must have shape \[2\]"),
        (lambda: epsilon_greedy_slate(S, 1, 0.1, 7), ValueError, "seeds must have shape"),
        (
            lambda: epsilon_greedy_slate(S, 1, 0.1, [0, -1]),
            ValueError,
            r"seeds must be in \[0, 2\*\*64\)",
        ),
        (
            lambda: epsilon_greedy_slate(S, 1, 0.1, np.array([0, -1])),
            ValueError,
            "seeds must be >= 0",
        ),
        (lambda: epsilon_greedy_slate(S, 1, 0.1, [0.5, 1.0]), TypeError, "seeds must be integers"),
        (lambda: epsilon_greedy_slate(S, 1, 0.1, [0, 2**64]), (TypeError, ValueError), "seeds"),
        (
            lambda: epsilon_greedy_slate(S, 1, 0.1, [0, 1], np.ones((2, 2), bool)),
            ValueError,
            "mask",
        ),
        (
            lambda: plackett_luce_slate(S, 1, 0.0, [0, 1]),
            ValueError,
            "temperature must be finite and > 0",
        ),
        (lambda: plackett_luce_slate(S, 1, float("inf"), [0, 1]), ValueError, "temperature"),
        (lambda: plackett_luce_slate(S, 1, "1", [0, 1]), TypeError, "temperature"),
        (
            lambda: thompson_bernoulli_slate([1.0, 0.0], [1.0, 1.0], 1, [0]),
            ValueError,
            r"alpha must be finite and > 0.*alpha\[1\]",
        ),
        (
            lambda: thompson_bernoulli_slate([1.0, 1.0], [1.0, np.inf], 1, [0]),
            ValueError,
            "beta must be finite",
        ),
        (lambda: thompson_bernoulli_slate([1.0, 1.0], [1.0, np.nan], 1, [0]), ValueError, "beta"),
        (
            lambda: thompson_bernoulli_slate([1.0, 1.0], [1.0, 1.0, 1.0], 1, [0]),
            ValueError,
            "same shape",
        ),
        (
            lambda: thompson_bernoulli_slate(np.ones((3, 2)), np.ones((3, 2)), 1, [0, 1]),
            ValueError,
            "B = len",
        ),
        (
            lambda: thompson_bernoulli_slate(np.ones((1, 1, 2)), np.ones((1, 1, 2)), 1, [0]),
            ValueError,
            r"shape \[N\]",
        ),
        (
            lambda: thompson_bernoulli_slate(["a"], ["b"], 1, [0]),
            TypeError,
            "alpha must be a real-valued",
        ),
        (
            lambda: thompson_bernoulli_slate([1.0], [1.0], 1, [0], np.ones((1, 2), bool)),
            ValueError,
            "mask",
        ),
        (lambda: thompson_bernoulli_slate([1.0], [1.0], 1, 3), ValueError, "seeds must have shape"),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_propensity_tables_are_cached_exactly():
    from nudgeserve.kernels import sampling

    alpha, beta = np.array([2.0, 3.0, 4.0]), np.array([20.0, 25.0, 30.0])
    seeds = np.arange(6)
    mask = np.zeros((6, 3), dtype=bool)
    mask[3:, 0] = True
    sampling._TABLES.clear()
    first = thompson_bernoulli_slate(alpha, beta, 2, seeds, mask)
    cached = thompson_bernoulli_slate(alpha, beta, 2, seeds, mask)
    np.testing.assert_array_equal(first[1], cached[1])
    want = ref.thompson_slot_probabilities(
        np.stack([alpha, alpha]), np.stack([beta, beta]), ~mask[[0, 3]], 2
    )
    for r in range(6):
        u = 0 if r < 3 else 1
        np.testing.assert_array_equal(first[1][r], want[u, [0, 1], first[0][r]])
    # Any change to a posterior is a different table, never a stale hit.
    moved = thompson_bernoulli_slate(alpha + [0.0, 1e-9, 0.0], beta, 2, seeds, mask)
    assert not np.array_equal(moved[1], first[1])
