"""Slot marginals of slate policies: Plackett-Luce against an exhaustive enumeration and
against sampled slates (also where a dominant item makes ``1 - w`` cancel), greedy and
epsilon-greedy distributions, Thompson sampling by simulation, empirical slot frequencies.

Every random draw is seeded; hypothesis prints the failing seed.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nudgeserve.kernels import plackett_luce_slate
from nudgeserve.models.policies.slates import (
    CANDIDATE_POLICIES,
    bernoulli_ts_dist,
    beta_posteriors,
    empirical_slot_dist,
    epsilon_greedy_slate_dist,
    greedy_slate_dist,
    plackett_luce_dist,
    plackett_luce_marginals,
    policy_slot_marginals,
)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 12),
    k=st.integers(1, 3),
    temperature=st.sampled_from([0.01, 0.1, 1.0, 10.0]),
    seed=st.integers(0, 2**32 - 1),
    n_masked=st.integers(0, 3),
)
def test_plackett_luce_marginals_equal_the_exact_position_distribution(
    n, k, temperature, seed, n_masked
):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(4, n)).astype(np.float32)
    mask = np.zeros((4, n), dtype=bool)
    for row in range(4):
        mask[row, rng.choice(n, size=min(n_masked, n - k), replace=False)] = True
    idx, _ = plackett_luce_slate(scores, k, temperature, np.arange(4, dtype=np.uint64), mask)
    got = plackett_luce_marginals(scores, temperature, idx, mask)
    for row in range(4):
        valid = np.flatnonzero(~mask[row])
        want = [exact_marginal(scores[row], valid, temperature, idx[row, :k], s) for s in range(k)]
        np.testing.assert_allclose(got[row], want, rtol=1e-9, atol=1e-300)
        # The evaluation path (every action's marginals over the valid candidates) agrees
        # with the serving path at every temperature: they are one implementation.
        valid_scores = scores[row : row + 1, valid].astype(np.float64)
        dist = plackett_luce_dist(valid_scores, k, temperature)[0]
        where = {int(c): j for j, c in enumerate(valid)}
        ope_want = [dist[where[int(idx[row, s])], s] for s in range(k)]
        np.testing.assert_allclose(got[row], ope_want, rtol=1e-5, atol=1e-7)


def exact_marginal(scores, valid, temperature, chosen, slot):
    """P(chosen[slot] at slot) by enumerating every ordered prefix of the slate; each
    step is a softmax over the remaining items, relative to their own maximum (no
    cancellation, no underflow; infinite scores take the softmax's limit, as the
    sampling kernel does)."""
    logits = (scores[valid].astype(np.float64) / temperature).tolist()
    z = dict(zip(valid.tolist(), logits, strict=True))
    target = int(chosen[slot])

    def step(item, left):
        top = max(z[j] for j in left)
        weight = {j: float(z[j] == top) if math.isinf(top) else math.exp(z[j] - top) for j in left}
        return weight[item] / sum(weight.values())

    total = 0.0
    for prefix in itertools.permutations(z, slot + 1):
        if prefix[-1] != target:
            continue
        p, left = 1.0, set(z)
        for item in prefix:
            p *= step(item, left)
            left.discard(item)
        total += p
    return total


def test_plackett_luce_marginals_survive_a_dominant_item():
    # At a low temperature the best item takes nearly all the first slot; the next slots'
    # probabilities must not cancel to rounding noise.
    scores = np.asarray([[10.0, 9.0, 8.5, 0.0]], dtype=np.float32)
    chosen = np.asarray([[0, 1, 2]])
    got = plackett_luce_marginals(scores, 0.02, chosen, None)
    np.testing.assert_allclose(got, [[1.0, 1.0, 1.0]], atol=1e-9)
    got = plackett_luce_marginals(scores, 0.02, np.asarray([[0, 2, 1]]), None)
    assert got[0, 1] < 1e-9 and got[0, 2] < 1e-9 and got[0, 1] > 0


def test_greedy_slate_puts_the_kth_best_action_at_position_k():
    scores = np.array([[0.1, 0.5, 0.3, 0.5], [3.0, 2.0, 1.0, 0.0]])
    dist = greedy_slate_dist(scores, 3)
    assert dist.shape == (2, 4, 3)
    np.testing.assert_array_equal(dist.argmax(axis=1), [[1, 3, 2], [0, 1, 2]])
    np.testing.assert_array_equal(dist.sum(axis=1), np.ones((2, 3)))
    assert dist.sum(axis=2).max() == 1.0  # an action fills at most one slot


@pytest.mark.parametrize("n_positions", [1, 2, 3])
def test_plackett_luce_marginals_match_sampled_slates(n_positions):
    rng = np.random.default_rng(n_positions)
    scores = rng.normal(size=(2, 7))
    temperature = 0.6
    dist = plackett_luce_dist(scores, n_positions, temperature)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-12)
    z = scores / temperature
    np.testing.assert_allclose(dist[:, :, 0], np.exp(z) / np.exp(z).sum(1, keepdims=True))
    # Gumbel top-k draws exactly Plackett-Luce slates.
    n_draws = 200_000
    keys = z[:, None, :] + rng.gumbel(size=(2, n_draws, 7))
    slates = np.argsort(-keys, axis=2)[:, :, :n_positions]
    for row in range(2):
        for k in range(n_positions):
            freq = np.bincount(slates[row, :, k], minlength=7) / n_draws
            np.testing.assert_allclose(dist[row, :, k], freq, atol=5e-3)


def test_bernoulli_ts_simulation_follows_the_posteriors():
    # Item 2 is clearly best, item 0 clearly second; the others are uncertain and poor.
    succ = np.array([300.0, 1.0, 900.0, 0.0, 2.0])
    fail = np.array([700.0, 99.0, 100.0, 50.0, 98.0])
    dist = bernoulli_ts_dist(succ, fail, 2, n_sim=20_000, seed=1)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0)
    assert dist[2, 0] > 0.999 and dist[0, 1] > 0.999
    again = bernoulli_ts_dist(succ, fail, 2, n_sim=20_000, seed=1)
    np.testing.assert_array_equal(dist, again)
    flat = bernoulli_ts_dist(
        np.zeros(4),
        np.zeros(4),
        1,
        n_sim=40_000,
        seed=2,
        prior_alpha=np.full(4, 5.0),
        prior_beta=5.0,
    )
    np.testing.assert_allclose(flat[:, 0], 0.25, atol=0.01)


def test_empirical_slot_distribution_counts_each_slot():
    actions = np.array([0, 1, 1, 2, 2, 2])
    positions = np.array([0, 0, 0, 1, 1, 0])
    dist = empirical_slot_dist(actions, positions, 3, 2)
    np.testing.assert_allclose(dist[:, 0], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(dist[:, 1], [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="position"):
        empirical_slot_dist(actions, np.zeros(6, np.int64), 3, 2)


def test_evaluation_path_keeps_its_precision_where_one_minus_w_cancels():
    # At temperature 0.02 the best item's softmax weight is 1 - 2e-22: 1 - w rounds to 0,
    # so a closed form over normalized weights loses every later slot (checked below).
    # The tail-sum form keeps them; compared with the exhaustive enumeration, which
    # normalises every step over the items left (no cancellation at all).
    scores = np.array([[10.0, 9.0, 8.5, 0.0, 7.0]])
    temperature = 0.02
    z = scores[0] / temperature
    w = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    with np.errstate(divide="ignore"):
        ratio = np.where(w < 1.0, w / (1.0 - w), 0.0)
    naive_slot1 = w * (ratio.sum() - ratio)
    dist = plackett_luce_dist(scores, 3, temperature)[0]
    replayed = policy_slot_marginals(scores[0], 3, "softmax", temperature=temperature)
    np.testing.assert_array_equal(replayed, dist)
    valid = np.arange(5)
    for slot in range(3):
        want = [exact_marginal(scores[0], valid, temperature, [a] * 3, slot) for a in range(5)]
        # Each marginal is a sum of at most A^2 positive products of a few ratios, each
        # rounded to an ulp or so in both computations: 1e-9 relative is loose by orders
        # of magnitude, yet the cancelling form is off by O(1) (the assertion after).
        np.testing.assert_allclose(dist[:, slot], want, rtol=1e-9, atol=1e-300)
    assert dist[1, 1] == pytest.approx(1.0) and naive_slot1[1] < 0.5
    serving = plackett_luce_marginals(
        scores.astype(np.float32), temperature, np.array([[0, 1, 2]]), None
    )
    np.testing.assert_allclose(serving[0], [dist[0, 0], dist[1, 1], dist[2, 2]], rtol=1e-12)


def test_epsilon_greedy_mixes_the_greedy_slate_with_a_uniform_one():
    scores = np.array([[0.1, 0.5, 0.3, 0.5]])
    dist = epsilon_greedy_slate_dist(scores, 2, 0.2)
    np.testing.assert_allclose(dist, 0.8 * greedy_slate_dist(scores, 2) + 0.05)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="epsilon"):
        epsilon_greedy_slate_dist(scores, 2, 1.5)


def test_replayed_policies_are_distributions_per_slot():
    scores = np.array([0.3, -1.0, 2.0, 0.7])
    for policy in CANDIDATE_POLICIES:
        dist = policy_slot_marginals(scores, 3, policy, epsilon=0.3, temperature=0.5)
        assert dist.shape == (4, 3)
        np.testing.assert_allclose(dist.sum(axis=0), 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="policy must be one of"):
        policy_slot_marginals(scores, 3, "thompson")
    with pytest.raises(ValueError, match="k <= 3"):
        policy_slot_marginals(scores, 4, "softmax")


def test_beta_posteriors_add_counts_to_the_shared_prior():
    alpha, beta = beta_posteriors(4, 1.0, 2.0, np.array([3.0, 0.0]), np.array([1.0, 5.0]))
    np.testing.assert_array_equal(alpha, [4.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(beta, [3.0, 7.0, 2.0, 2.0])
    alpha, beta = beta_posteriors(2, 0.5, 0.5)
    np.testing.assert_array_equal(alpha, [0.5, 0.5])


@pytest.mark.parametrize(
    "scores",
    [
        [-1.41, -0.51, 2.18, -1.42, 0.3],  # at T = 0.005 the weights fall below 1e-300
        [np.inf, 1.0, 0.5, -np.inf, 0.7],  # one +inf takes slot 0; the softmax goes on
        [np.inf, np.inf, 2.0, 1.0, -np.inf],
        [3.0, -np.inf, -np.inf, -np.inf, 2.0],  # the -inf items share what is left
    ],
)
def test_marginals_stay_exact_when_weights_underflow_or_scores_are_infinite(scores):
    scores = np.asarray(scores, dtype=np.float32)  # what serving passes; the oracle reads the same
    temperature = 0.005
    valid = np.arange(5)
    for slot in range(3):
        for a in range(5):
            chosen = np.roll(np.array([a, (a + 1) % 5, (a + 2) % 5]), slot)
            got = plackett_luce_marginals(scores[None, :], temperature, chosen[None, :], None)[
                0, slot
            ]
            want = exact_marginal(scores, valid, temperature, chosen, slot)
            # Same reasoning as above: a handful of rounded products per term.
            assert got == pytest.approx(want, rel=1e-9, abs=1e-300), (slot, a)
