"""LinUCB and linear Thompson sampling: the ridge state against its closed form, learning
on a synthetic linear bandit, seeded reproducibility and the propensities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nudgeserve.models import InvalidFeatures, InvalidFeatureType
from nudgeserve.models.policies.linear_bandit import (
    REFACTOR_EVERY,
    LinearBandit,
    interaction_features,
)


def closed_form(x: np.ndarray, r: np.ndarray, ridge: float, prior: np.ndarray):
    a = ridge * np.eye(x.shape[1]) + x.T @ x
    b = ridge * prior + x.T @ r
    return a, b, np.linalg.solve(a, b)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.integers(1, 12),
    chunks=st.lists(st.integers(0, 20), min_size=1, max_size=8),
    ridge=st.floats(0.05, 20.0),
)
def test_state_matches_ridge_closed_form_and_inverse(seed, dim, chunks, ridge):
    rng = np.random.default_rng(seed)
    prior = rng.normal(size=dim)
    bandit = LinearBandit(dim, ridge=ridge, prior_mean=prior)
    xs, rs = [], []
    for m in chunks:  # chunks below dim take the Sherman-Morrison path, others re-invert
        x = rng.normal(size=(m, dim)) * rng.uniform(0.1, 3.0)
        r = rng.normal(size=m)
        bandit.update(x, r)
        xs.append(x)
        rs.append(r)
    x, r = np.concatenate(xs), np.concatenate(rs)
    a, b, theta = closed_form(x, r, ridge, prior)
    np.testing.assert_allclose(bandit.A, a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bandit.b, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bandit.A_inv, np.linalg.inv(a), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(bandit.theta, theta, rtol=1e-7, atol=1e-9)
    assert bandit.n_updates == x.shape[0]


def test_sherman_morrison_steps_stay_exact_over_many_single_updates():
    rng = np.random.default_rng(7)
    dim = 9
    bandit = LinearBandit(dim, ridge=0.5)
    x = rng.normal(size=(3 * REFACTOR_EVERY + 17, dim))
    r = rng.random(x.shape[0])
    # A step that is not a refactor: A^-1 must be the rank-1 update of the previous one.
    bandit.update(x[:1], r[:1])
    before = bandit.A_inv.copy()
    bandit.update(x[1:2], r[1:2])
    u = before @ x[1]
    np.testing.assert_allclose(
        bandit.A_inv, before - np.outer(u, u) / (1 + x[1] @ u), rtol=1e-13, atol=1e-15
    )
    for i in range(2, x.shape[0]):
        bandit.update(x[i : i + 1], r[i : i + 1])
    a, _, theta = closed_form(x, r, 0.5, np.zeros(dim))
    np.testing.assert_allclose(bandit.A_inv, np.linalg.inv(a), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bandit.theta, theta, rtol=1e-8, atol=1e-10)


def test_views_taken_before_an_update_keep_their_values():
    bandit = LinearBandit(3)
    a_inv, theta = bandit.A_inv, bandit.theta
    kept = a_inv.copy(), theta.copy()
    bandit.update(np.ones((1, 3)), np.ones(1))
    np.testing.assert_array_equal(a_inv, kept[0])
    np.testing.assert_array_equal(theta, kept[1])
    with pytest.raises(ValueError):
        a_inv[0, 0] = 1.0  # read-only


def test_state_dict_round_trip():
    rng = np.random.default_rng(3)
    bandit = LinearBandit(5, ridge=2.0, prior_mean=np.arange(5.0))
    bandit.update(rng.normal(size=(3, 5)), rng.random(3))
    copy = LinearBandit.from_state_dict(bandit.state_dict())
    for name in ("A", "A_inv", "b", "theta", "prior_mean"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(bandit, name))
    assert (copy.ridge, copy.n_updates) == (2.0, 3)
    x = rng.normal(size=(2, 7, 5))
    seeds = np.array([11, 12], dtype=np.uint64)
    for a, b in zip(
        copy.thompson_slate(x, 2, seeds=seeds, propensity_draws=50),
        bandit.thompson_slate(x, 2, seeds=seeds, propensity_draws=50),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="lacks array 'b'"):
        LinearBandit.from_state_dict({k: v for k, v in bandit.state_dict().items() if k != "b"})


# ------------------------------------------------------------------ learning


class SyntheticLinearBandit:
    """Each round: N candidates with features x ~ N(0, I/d); reward x . theta* + noise."""

    def __init__(self, dim: int, n_candidates: int, noise: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        theta = self.rng.normal(size=dim)
        self.theta = theta / np.linalg.norm(theta)
        self.dim, self.n, self.noise = dim, n_candidates, noise

    def contexts(self, batch: int) -> np.ndarray:
        return self.rng.normal(size=(batch, self.n, self.dim)) / np.sqrt(self.dim)

    def rewards(self, x_chosen: np.ndarray) -> np.ndarray:
        return x_chosen @ self.theta + self.noise * self.rng.normal(size=x_chosen.shape[0])


def run_policy(policy: str, rounds: int = 1500, batch: int = 5, seed: int = 0) -> np.ndarray:
    """Per-round regret (best expected reward minus the chosen one's)."""
    env = SyntheticLinearBandit(dim=6, n_candidates=20, noise=0.3, seed=seed)
    bandit = LinearBandit(6, ridge=1.0)
    regret = []
    for t in range(rounds // batch):
        x = env.contexts(batch)
        seeds = np.arange(t * batch, (t + 1) * batch, dtype=np.uint64)
        if policy == "linucb":
            idx, _ = bandit.linucb_slate(x, 1, alpha=1.0, epsilon=0.0, seeds=seeds)
        elif policy == "thompson":
            idx, _ = bandit.thompson_slate(x, 1, seeds=seeds, scale=0.3, propensity_draws=0)
        else:
            idx = env.rng.integers(0, env.n, size=(batch, 1))
        rows = np.arange(batch)
        chosen = x[rows, idx[:, 0]]
        means = x @ env.theta
        regret.append(means.max(axis=1) - means[rows, idx[:, 0]])
        bandit.update(chosen, env.rewards(chosen))
    return np.concatenate(regret)


@pytest.mark.parametrize("policy", ["linucb", "thompson"])
def test_regret_is_sublinear_and_far_below_random(policy):
    for seed in (0, 1):
        learned = run_policy(policy, seed=seed)
        random = run_policy("random", seed=seed)
        assert learned.sum() < 0.05 * random.sum(), (seed, learned.sum(), random.sum())
        # Sublinear: the last third of the rounds costs far less than the first third.
        third = learned.size // 3
        assert learned[-third:].sum() < 0.25 * learned[:third].sum(), seed


# ------------------------------------------------------------ reproducibility


def test_seeded_rows_do_not_depend_on_their_batch_mates():
    rng = np.random.default_rng(5)
    bandit = LinearBandit(4, ridge=1.0)
    bandit.update(rng.normal(size=(30, 4)), rng.random(30))
    x = rng.normal(size=(6, 15, 4))
    seeds = rng.integers(0, 2**63, size=6).astype(np.uint64)
    mask = rng.random((6, 15)) < 0.2
    whole = bandit.thompson_slate(x, 3, seeds=seeds, mask=mask, propensity_draws=64)
    again = bandit.thompson_slate(x, 3, seeds=seeds, mask=mask, propensity_draws=64)
    ucb = bandit.linucb_slate(x, 3, alpha=0.5, epsilon=0.3, seeds=seeds, mask=mask)
    for a, b in zip(whole, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for r in (0, 4):
        one = bandit.thompson_slate(
            x[r : r + 1], 3, seeds=seeds[r : r + 1], mask=mask[r : r + 1], propensity_draws=64
        )
        np.testing.assert_array_equal(one[0][0], whole[0][r])
        np.testing.assert_array_equal(one[1][0], whole[1][r])
        one_ucb = bandit.linucb_slate(
            x[r : r + 1], 3, alpha=0.5, epsilon=0.3, seeds=seeds[r : r + 1], mask=mask[r : r + 1]
        )
        np.testing.assert_array_equal(one_ucb[0][0], ucb[0][r])
    other = bandit.thompson_slate(x, 3, seeds=seeds + np.uint64(1), mask=mask)
    assert not np.array_equal(other[0], whole[0])
    for r in range(6):
        assert not mask[r, whole[0][r]].any()
        assert not mask[r, ucb[0][r]].any()


def test_thompson_draws_follow_the_posterior():
    rng = np.random.default_rng(9)
    bandit = LinearBandit(3, ridge=1.0)
    bandit.update(rng.normal(size=(20, 3)), rng.random(20))
    draws = bandit.sample_theta(np.array([123], dtype=np.uint64), scale=0.7, draws=40_000)[0]
    np.testing.assert_allclose(draws.mean(axis=0), bandit.theta, atol=0.02)
    np.testing.assert_allclose(np.cov(draws.T), 0.49 * bandit.A_inv, atol=0.01)


# --------------------------------------------------------------- propensities


def empirical_table(slates: np.ndarray, k: int, n: int) -> np.ndarray:
    """float[k, n]: how often each candidate was at each slot over the rows of slates."""
    table = np.zeros((k, n))
    for s in range(k):
        filled = slates[:, s] >= 0
        table[s] = np.bincount(slates[filled, s], minlength=n) / slates.shape[0]
    return table


def within_sampling_error(found: np.ndarray, expected: np.ndarray, n: int, sigmas=5.0):
    sd = np.sqrt(np.maximum(expected * (1 - expected), 1e-6) / n)
    assert (np.abs(found - expected) <= sigmas * sd + 1e-12).all(), np.abs(found - expected).max()


def test_linucb_propensities_are_exact_and_match_frequencies():
    rng = np.random.default_rng(11)
    bandit = LinearBandit(4, ridge=1.0)
    bandit.update(rng.normal(size=(10, 4)), rng.random(10))
    n_rows, n, k, eps = 20_000, 8, 3, 0.4
    x = np.repeat(rng.normal(size=(1, n, 4)), n_rows, axis=0)
    mask = np.zeros((n_rows, n), bool)
    mask[:, 5] = True
    table = bandit.linucb_slot_probabilities(x[:1], k, alpha=1.0, epsilon=eps, mask=mask[:1])[0]
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-12)
    assert (table[:, 5] == 0).all()
    seeds = np.arange(n_rows, dtype=np.uint64)
    idx, prop = bandit.linucb_slate(x, k, alpha=1.0, epsilon=eps, seeds=seeds, mask=mask)
    np.testing.assert_allclose(prop, table[np.arange(k)[None, :], idx], rtol=1e-12)
    within_sampling_error(empirical_table(idx, k, n), table, n_rows)

    # Pure LinUCB: propensity 1 for the chosen slate, the top-k of the UCB scores.
    greedy, p1 = bandit.linucb_slate(x[:3], k, alpha=1.0, epsilon=0.0, seeds=seeds[:3])
    assert (p1 == 1.0).all()
    order = np.argsort(-bandit.ucb_scores(x[:1], 1.0)[0].astype(np.float32), kind="stable")
    np.testing.assert_array_equal(greedy[0], order[:k])


def test_linucb_pads_rows_with_too_few_candidates():
    bandit = LinearBandit(2)
    x = np.ones((1, 4, 2))
    mask = np.array([[True, False, True, True]])
    idx, prop = bandit.linucb_slate(x, 2, alpha=1.0, epsilon=0.5, seeds=[1], mask=mask)
    assert idx.tolist() == [[1, -1]] and prop[0, 0] == 1.0 and np.isnan(prop[0, 1])
    table = bandit.linucb_slot_probabilities(x, 2, alpha=1.0, epsilon=0.5, mask=mask)
    assert table[0].tolist() == [[0, 1, 0, 0], [0, 0, 0, 0]]


def test_thompson_propensities_estimate_the_slate_distribution():
    rng = np.random.default_rng(13)
    bandit = LinearBandit(3, ridge=1.0)
    bandit.update(rng.normal(size=(15, 3)), rng.random(15))
    n_rows, n, k = 20_000, 6, 2
    x = np.repeat(rng.normal(size=(1, n, 3)), n_rows, axis=0)
    seeds = np.arange(n_rows, dtype=np.uint64) + np.uint64(10**6)
    idx, _ = bandit.thompson_slate(x, k, seeds=seeds, scale=1.0, propensity_draws=0)
    # The served draw of many seeds vs the Monte Carlo table of one seed's many draws.
    table = bandit.thompson_slot_probabilities(x[:1], k, seeds=seeds[:1], scale=1.0, draws=n_rows)[
        0
    ]
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-12)
    assert 0.05 < table.max() < 0.95  # a genuinely random policy here
    within_sampling_error(empirical_table(idx, k, n), table, n_rows / 2)

    # Each row's logged estimate: (count + 1) / (M + 1) over draws 1..M of its stream.
    m = 2000
    few = seeds[:4]
    idx4, prop4 = bandit.thompson_slate(x[:4], k, seeds=few, scale=1.0, propensity_draws=m)
    counts = bandit.thompson_slot_probabilities(x[:4], k, seeds=few, scale=1.0, draws=m) * m
    expected = (np.take_along_axis(counts, idx4[:, :, None], axis=2)[:, :, 0] + 1) / (m + 1)
    np.testing.assert_allclose(prop4, expected, rtol=1e-12)
    np.testing.assert_allclose(prop4, table[np.arange(k)[None, :], idx4], atol=0.05)


# ---------------------------------------------------------------- features


def test_interaction_features_start_from_the_model_score():
    rng = np.random.default_rng(17)
    users, items = rng.normal(size=(4, 8)), rng.normal(size=(10, 8))
    scores = rng.random((4, 10))
    x = interaction_features(users, items, scores)
    assert x.shape == (4, 10, 9) and x.dtype == np.float64
    np.testing.assert_allclose(x[2, 3, 1:], users[2] * items[3])
    np.testing.assert_allclose(interaction_features(users, items).sum(-1), users @ items.T)
    bandit = LinearBandit(9, ridge=1.0, prior_mean=np.eye(9)[0])
    np.testing.assert_allclose(bandit.mean(x), scores)
    with pytest.raises(InvalidFeatures, match=r"scores must have shape \[B, N\] = \[4, 10\]"):
        interaction_features(users, items, scores[:, :5])
    with pytest.raises(InvalidFeatures, match="items must have 8 entries"):
        interaction_features(users, items[:, :3])


# ---------------------------------------------------------------- bad input


def test_bad_arguments_name_themselves():
    bandit = LinearBandit(3)
    x = np.zeros((2, 4, 3))
    seeds = np.arange(2, dtype=np.uint64)
    with pytest.raises(ValueError, match="dim must be in"):
        LinearBandit(0)
    with pytest.raises(TypeError, match="dim must be an int"):
        LinearBandit(3.0)
    with pytest.raises(ValueError, match="ridge must be finite and > 0"):
        LinearBandit(3, ridge=0.0)
    with pytest.raises(InvalidFeatures, match="prior_mean must have 3 entries"):
        LinearBandit(3, prior_mean=np.zeros(2))
    with pytest.raises(InvalidFeatures, match="x must have 3 entries in its last dimension"):
        bandit.mean(np.zeros((2, 4, 5)))
    with pytest.raises(InvalidFeatures, match="x must have 3 dimensions"):
        bandit.mean(np.zeros((4, 3)))
    with pytest.raises(InvalidFeatureType, match="x must be a numpy.ndarray"):
        bandit.mean([[[0.0] * 3]])
    bad = x.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(InvalidFeatures, match=r"x must be finite; x\[1, 2, 0\] = nan"):
        bandit.linucb_slate(bad, 1, alpha=1.0, epsilon=0.1, seeds=seeds)
    with pytest.raises(InvalidFeatures, match="rewards must have one entry per row of x"):
        bandit.update(np.zeros((3, 3)), np.zeros(2))
    with pytest.raises(InvalidFeatures, match=r"rewards must be finite; rewards\[0\]"):
        bandit.update(np.zeros((1, 3)), np.array([np.inf]))
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
        bandit.ucb_scores(x, -1.0)
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\]"):
        bandit.linucb_slate(x, 1, alpha=1.0, epsilon=1.5, seeds=seeds)
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\]"):
        bandit.linucb_slot_probabilities(x, 1, alpha=1.0, epsilon=1.5)
    with pytest.raises(ValueError, match="seeds must have shape"):
        bandit.thompson_slate(x, 1, seeds=np.arange(3, dtype=np.uint64))
    with pytest.raises(ValueError, match="propensity_draws must be >= 0"):
        bandit.thompson_slate(x, 1, seeds=seeds, propensity_draws=-1)
    with pytest.raises(ValueError, match="mask must have the shape"):
        bandit.thompson_slate(x, 1, seeds=seeds, mask=np.zeros((2, 5), bool))
    with pytest.raises(ValueError, match="scale must be finite and >= 0"):
        bandit.thompson_slate(x, 1, seeds=seeds, scale=float("nan"))
