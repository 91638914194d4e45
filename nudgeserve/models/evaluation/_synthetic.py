"""Synthetic logged-bandit data whose policy values are known exactly (tests, benchmarks).

A finite contextual bandit: ``C`` context types drawn with known probabilities, ``A``
actions, ``P`` positions (slots) drawn with known probabilities, and Bernoulli rewards
with known means ``q[c, a, p]``. Because everything is finite, a policy's value (expected
reward per row) is an exact sum,

    V(pi) = sum_p P(p) sum_c P(c) sum_a pi[c, a, p] q[c, a, p],

so an estimator's bias and its intervals' coverage can be checked against the truth.
The logging policy is a tempered softmax with a floor, so it has full support and
bounded importance weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticLogs:
    """One sample of logged rows.

    context, actions, positions: int64[n]; rewards, propensities: float64[n].
    """

    context: np.ndarray
    actions: np.ndarray
    positions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def per_row(self, table: np.ndarray) -> np.ndarray:
        """float64[n, A, P]: a per-context table ``[C, A, P]`` looked up for each row."""
        return table[self.context]


@dataclass(frozen=True)
class SyntheticBandit:
    """A finite bandit with exact policy values.

    context_probs: float64[C]; position_probs: float64[P].
    expected_reward: float64[C, A, P], mean reward q (rewards are Bernoulli(q)).
    logging_policy: float64[C, A, P], sums to 1 over actions, every entry > 0.
    """

    context_probs: np.ndarray
    position_probs: np.ndarray
    expected_reward: np.ndarray
    logging_policy: np.ndarray

    @property
    def n_actions(self) -> int:
        return int(self.expected_reward.shape[1])

    @property
    def n_positions(self) -> int:
        return int(self.expected_reward.shape[2])

    def policy_value(self, policy: np.ndarray) -> float:
        """Exact expected reward per row of ``policy: float64[C, A, P]``."""
        per_cp = np.einsum("cap,cap->cp", policy, self.expected_reward)
        return float(np.einsum("c,p,cp->", self.context_probs, self.position_probs, per_cp))

    def softmax_policy(self, temperature: float, scores: np.ndarray | None = None) -> np.ndarray:
        """float64[C, A, P]: softmax of ``scores`` (default the true q) / temperature."""
        scores = self.expected_reward if scores is None else scores
        z = scores / temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def greedy_policy(self, scores: np.ndarray | None = None) -> np.ndarray:
        """float64[C, A, P]: all mass on the highest-scoring action (default the true q)."""
        scores = self.expected_reward if scores is None else scores
        best = scores.argmax(axis=1)
        out = np.zeros_like(self.expected_reward)
        np.put_along_axis(out, best[:, None, :], 1.0, axis=1)
        return out

    def biased_reward_model(self, shift: float = 0.1) -> np.ndarray:
        """float64[C, A, P]: q shifted by ``shift`` (a misspecified model for DM/DR)."""
        return np.clip(self.expected_reward + shift, 0.0, 1.0)

    def sample(self, n: int, seed: int) -> SyntheticLogs:
        """``n`` logged rows drawn with ``numpy.random.default_rng(seed)``."""
        rng = np.random.default_rng(seed)
        context = rng.choice(self.context_probs.shape[0], size=n, p=self.context_probs)
        positions = rng.choice(self.n_positions, size=n, p=self.position_probs)
        probs = self.logging_policy[context, :, positions]  # [n, A]
        cdf = np.cumsum(probs, axis=1)
        u = rng.random(n)[:, None]
        actions = np.minimum((u >= cdf).sum(axis=1), self.n_actions - 1)
        q = self.expected_reward[context, actions, positions]
        rewards = (rng.random(n) < q).astype(np.float64)
        return SyntheticLogs(
            context=context.astype(np.int64),
            actions=actions.astype(np.int64),
            positions=positions.astype(np.int64),
            rewards=rewards,
            propensities=probs[np.arange(n), actions],
        )


def make_synthetic_bandit(
    n_contexts: int = 20,
    n_actions: int = 5,
    n_positions: int = 1,
    *,
    logging_temperature: float = 0.3,
    logging_floor: float = 0.05,
    seed: int = 0,
) -> SyntheticBandit:
    """A random finite bandit, fixed by ``seed``.

    q[c, a, p] = sigmoid(u_c . v_a + b_a) * bias[p]: a low-rank context-action affinity,
    discounted by position like clicks on lower slots. The logging policy is a softmax of
    a noisy copy of q at ``logging_temperature``, mixed with uniform at ``logging_floor``
    so every propensity is at least ``logging_floor / n_actions``.
    """
    if n_contexts < 1 or n_actions < 2 or n_positions < 1:
        raise ValueError(
            "n_contexts must be >= 1, n_actions >= 2 and n_positions >= 1; got "
            f"{n_contexts}, {n_actions}, {n_positions}"
        )
    if not 0.0 < logging_floor <= 1.0:
        raise ValueError(f"logging_floor must be in (0, 1], got {logging_floor}")
    rng = np.random.default_rng(seed)
    context_probs = rng.dirichlet(np.full(n_contexts, 2.0))
    position_probs = np.full(n_positions, 1.0 / n_positions)
    u = rng.normal(size=(n_contexts, 3))
    v = rng.normal(size=(n_actions, 3))
    base = 1.0 / (1.0 + np.exp(-(u @ v.T + rng.normal(-0.5, 0.5, size=n_actions))))
    position_bias = 1.0 / (1.0 + np.arange(n_positions))
    q = base[:, :, None] * position_bias[None, None, :]
    noisy = q + rng.normal(0.0, 0.1, size=q.shape)
    z = noisy / logging_temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    soft = e / e.sum(axis=1, keepdims=True)
    logging = (1.0 - logging_floor) * soft + logging_floor / n_actions
    return SyntheticBandit(
        context_probs=context_probs,
        position_probs=position_probs,
        expected_reward=q,
        logging_policy=logging,
    )
