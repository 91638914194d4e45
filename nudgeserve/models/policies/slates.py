"""Slot marginals of slate policies: the probability of each action at each slot.

A slate policy fills slots 0, 1, ... in order. What a decision logs as its propensity,
and what the per-position off-policy estimators read (``evaluation.ope``), is the **slot
marginal** ``P(action a at slot s)`` under the policy. This module is the one
implementation of that math outside the sampling kernels (which return the marginals of
epsilon-greedy and Thompson sampling as they draw), for the policies the server runs and
those a report replays:

- greedy (the k best, ties to the lower index): 1 at its slot;
- epsilon-greedy (with probability epsilon a uniformly random slate of the valid
  actions): ``(1 - epsilon) [greedy puts a at s] + epsilon / n_valid``, the kernel's
  formula, over every action of a replayed decision;
- Plackett-Luce (softmax sampling without replacement at a temperature): exact for
  slots 0..2 (``MAX_EXACT_PLACKETT_LUCE_SLOTS``); ``plackett_luce_dist`` for every action,
  ``plackett_luce_marginals`` for the actions a slate chose (the serving path);
- Bernoulli Thompson sampling: by simulation (``bernoulli_ts_dist``, obp's convention
  for evaluation; serving logs the kernel's exact marginal, ``kernels.sampling``), and
  the Beta posteriors it samples from (``beta_posteriors``);
- a logged policy's empirical slot frequencies (``empirical_slot_dist``).

Distributions over a fixed set of ``A`` actions are ``float64[n, A, P]`` (row, action,
position), the layout of obp's ``action_dist``. Arguments are plain numbers and arrays,
never configuration objects. NumPy only.
"""

from __future__ import annotations

import numbers

import numpy as np

from nudgeserve.models.errors import InvalidPolicyInput, InvalidPolicyInputType

__all__ = [
    "CANDIDATE_POLICIES",
    "MAX_EXACT_PLACKETT_LUCE_SLOTS",
    "bernoulli_ts_dist",
    "beta_posteriors",
    "empirical_slot_dist",
    "epsilon_greedy_slate_dist",
    "greedy_slate_dist",
    "plackett_luce_dist",
    "plackett_luce_marginals",
    "policy_slot_marginals",
]

# Plackett-Luce slot marginals are summed over every ordered prefix of the slot; up to
# three slots that is O(A^2) per row, beyond it the cost grows as A^(slots - 1).
MAX_EXACT_PLACKETT_LUCE_SLOTS = 3
# Policies a report can replay over logged decisions (``policy_slot_marginals``).
CANDIDATE_POLICIES = ("greedy", "epsilon_greedy", "softmax")
# Rows per block times actions (times actions, for the third slot) bounds the arrays
# built at once (~32 MiB each).
_CHUNK_CELLS = 1 << 22


# ---------------------------------------------------------------------------- checks


def _float_array(name: str, x: object, ndim: int | tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise InvalidPolicyInputType(f"{name} must be a numeric array, got dtype {a.dtype}")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in allowed:
        dims = " or ".join(map(str, allowed))
        raise InvalidPolicyInput(f"{name} must have {dims} dimensions, got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise InvalidPolicyInput(f"{name} must be finite (found nan or inf)")
    return a


def _int_array(name: str, x: object) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise InvalidPolicyInputType(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != 1:
        raise InvalidPolicyInput(f"{name} must be 1-D, got shape {a.shape}")
    return a.astype(np.int64, copy=False)


def _scores(name: str, scores: object, n_positions: object) -> tuple[np.ndarray, int]:
    s = _float_array(name, scores, 2)
    if isinstance(n_positions, bool) or not isinstance(n_positions, numbers.Integral):
        raise InvalidPolicyInputType(f"n_positions must be an int, got {n_positions!r}")
    if not 1 <= n_positions <= s.shape[1]:
        raise InvalidPolicyInput(
            f"n_positions must be in [1, {s.shape[1]}] (the number of actions), got {n_positions}"
        )
    return s, int(n_positions)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidPolicyInputType(f"{name} must be a number, got {value!r}")
    return float(value)


# ---------------------------------------------------------------- greedy, epsilon-greedy


def greedy_slate_dist(scores: np.ndarray, n_positions: int) -> np.ndarray:
    """The greedy slate: the k-th highest-scoring action at position k.

    scores: float[n, A]. Returns float64[n, A, P], one-hot over actions per position
    (ties go to the lower action index).
    """
    s, p = _scores("scores", scores, n_positions)
    n = s.shape[0]
    order = np.argsort(-s, axis=1, kind="stable")[:, :p]
    dist = np.zeros((n, s.shape[1], p), dtype=np.float64)
    dist[np.arange(n)[:, None], order, np.arange(p)[None, :]] = 1.0
    return dist


def epsilon_greedy_slate_dist(scores: np.ndarray, n_positions: int, epsilon: float) -> np.ndarray:
    """Epsilon-greedy: the greedy slate, or with probability ``epsilon`` a uniformly random
    slate of all ``A`` actions. scores: float[n, A]; returns float64[n, A, P]:
    ``(1 - epsilon) [greedy puts a at k] + epsilon / A``."""
    eps = _number("epsilon", epsilon)
    if not 0.0 <= eps <= 1.0:
        raise InvalidPolicyInput(f"epsilon must be in [0, 1], got {epsilon!r}")
    greedy = greedy_slate_dist(scores, n_positions)
    return (1.0 - eps) * greedy + eps / greedy.shape[1]


# ---------------------------------------------------------------------- Plackett-Luce


def _scaled_weights(z: np.ndarray, valid: np.ndarray, top: np.ndarray) -> np.ndarray:
    """float64[n, A] softmax weights relative to ``top: float64[n]``, the largest logit of
    the items still to choose from: ``exp(z - top)``, 0 where not valid. An infinite
    ``top`` takes the softmax's limit as the sampling kernel does: the items at ``top``
    share all the mass (every ``+inf``; or every ``-inf`` when only those remain)."""
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = np.exp(z - top[:, None])
    limit = (z == top[:, None]).astype(np.float64)
    return np.where(valid, np.where(np.isinf(top)[:, None], limit, shifted), 0.0)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b where b > 0, else 0 (slots a row cannot fill)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)


def _sum_without(values: np.ndarray, rows: np.ndarray, column: np.ndarray) -> np.ndarray:
    """float64[n]: each row's sum of ``values: float64[n, A]`` leaving out ``column[r]``."""
    rest = values.copy()
    rest[rows, column] = 0.0
    return rest.sum(axis=1)


def _plackett_luce_block(z: np.ndarray, valid: np.ndarray, n_slots: int) -> np.ndarray:
    """float64[n, A, n_slots] slot marginals of logits ``z: float64[n, A]`` (``+-inf``
    allowed) over the ``valid: bool[n, A]`` items.

    P(a at s) sums, over the ordered prefixes (b, c) without a, the product of the steps'
    probabilities, each a softmax over the items left. A step's normaliser is formed at
    the scale of the largest item left: ``E1, E2, E3`` are the weights relative to the
    largest, second and third largest logit (``t1, t2, t3``), and each prefix uses the
    one its removals leave on top. So every normaliser is a sum of weights holding a 1
    (never a difference that cancels, never an underflow to 0/0) however dominant an
    item is, at any temperature. Sums "over every prefix except those holding a" are
    formed as total minus a's terms, except for the few items whose terms dominate the
    total, which are summed directly. Slot 2 groups the prefixes by scale:

    - neither is t1: ``E1_a`` times sum over (b, c) of
      ``p0_b E1_c / ((S1 - E1_b)(S1 - E1_b - E1_c))``;
    - t1 and x (either order, x not t2): ``E2_a`` times sum over x of
      ``(p0_t1 E2_x / R2 + p0_x / (S1 - E1_x)) / (R2 - E2_x)``;
    - t1 and t2 (either order): ``E3_a (p0_t1 / R2 + p0_t2 / (S1 - E1_t2)) / R3``;

    with ``p0 = E1 / S1``, ``S1 = sum E1``, ``R2`` the sum of E2 without t1 and ``R3``
    of E3 without t1 and t2.
    """
    n, a = z.shape
    rows = np.arange(n)
    out = np.zeros((n, a, n_slots), dtype=np.float64)
    # Valid items first, then by decreasing logit (ties: the lower index).
    order = np.lexsort((-np.where(valid, z, 0.0), ~valid), axis=1)
    n_valid = valid.sum(axis=1)
    tops = [order[:, min(j, a - 1)] for j in range(3)]

    def weights(level: int) -> np.ndarray:
        """The weights relative to the level-th largest logit, the larger ones removed."""
        has = n_valid > level
        top = np.where(has, z[rows, tops[level]], 0.0)
        w = _scaled_weights(z, valid & has[:, None], top)
        for above in tops[:level]:
            w[rows, above] = 0.0
        return w

    t1, t2, t3 = tops
    e1 = weights(0)
    s1 = e1.sum(axis=1)
    p0 = _divide(e1, s1[:, None])
    out[:, :, 0] = p0
    if n_slots == 1:
        return np.clip(out, 0.0, 1.0)
    e2 = weights(1)
    r2 = e2.sum(axis=1)
    # A second item other than t1 leaves t1 on top: S1 - E1_b >= 1.
    not_t1 = valid.copy()
    not_t1[rows, t1] = False
    den1 = np.where(not_t1, s1[:, None] - e1, 0.0)
    r = _divide(p0, den1)  # p0_b / (S1 - E1_b), 0 for t1 and invalid b
    after_t1 = p0[rows, t1][:, None] * _divide(e2, r2[:, None])
    slot1 = e1 * (r.sum(axis=1, keepdims=True) - r) + after_t1
    # t2's own term is the largest of the sum: sum the others directly.
    slot1[rows, t2] = e1[rows, t2] * _sum_without(r, rows, t2) + after_t1[rows, t2]
    out[:, :, 1] = slot1
    if n_slots == 2:
        return np.clip(out, 0.0, 1.0)
    e3 = weights(2)
    r3 = e3.sum(axis=1)
    # Prefixes without t1 (scale E1): with t1's weight left out of the pair, every
    # normaliser S1 - E1_b - E1_c (b != c) keeps t1's 1. The diagonal is no prefix (and
    # may divide by 0): it is dropped; so are rows with no valid item (0 / 0).
    e1_rest = e1.copy()
    e1_rest[rows, t1] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        pairs = (r[:, :, None] * e1_rest[:, None, :]) / (
            s1[:, None, None] - e1_rest[:, :, None] - e1_rest[:, None, :]
        )
    diag = np.arange(a)
    pairs[:, diag, diag] = 0.0
    without = pairs.sum(axis=(1, 2))[:, None] - pairs.sum(axis=2) - pairs.sum(axis=1)
    # The pairs of t2 and t3 hold the most mass (a pair's term grows with both weights):
    # for those two, sum the pairs without them directly.
    for top in (t2, t3):
        keep = np.ones((n, a))
        keep[rows, top] = 0.0
        without[rows, top] = np.einsum(
            "rb,rb->r", np.matmul(pairs, keep[:, :, None])[:, :, 0], keep
        )
    slot2 = e1 * without
    # Prefixes of t1 and x, x not t2 (scale E2); the normaliser keeps t2: >= 1.
    x_ok = not_t1.copy()
    x_ok[rows, t2] = False
    den2 = np.where(x_ok, r2[:, None] - e2, 0.0)
    with_x = _divide(p0[rows, t1][:, None] * _divide(e2, r2[:, None]) + r, den2)
    with_x = np.where(x_ok, with_x, 0.0)
    rest = with_x.sum(axis=1, keepdims=True) - with_x
    rest[rows, t3] = _sum_without(with_x, rows, t3)  # t3's term dominates
    slot2 += e2 * rest
    # Prefixes of t1 and t2 (scale E3).
    both = _divide(p0[rows, t1], r2) + _divide(p0[rows, t2], s1 - e1[rows, t2])
    slot2 += e3 * _divide(both, r3)[:, None]
    out[:, :, 2] = slot2
    return np.clip(out, 0.0, 1.0)


def _plackett_luce_slots(z: np.ndarray, valid: np.ndarray, n_slots: int) -> np.ndarray:
    """``_plackett_luce_block`` over row blocks that bound its memory."""
    n, a = z.shape
    cells = a * a if n_slots >= 3 else a
    step = max(1, _CHUNK_CELLS // max(1, cells))
    if n <= step:
        return _plackett_luce_block(z, valid, n_slots)
    out = np.empty((n, a, n_slots), dtype=np.float64)
    for start in range(0, n, step):
        block = slice(start, start + step)
        out[block] = _plackett_luce_block(z[block], valid[block], n_slots)
    return out


def _check_slots(n_slots: int) -> None:
    if n_slots > MAX_EXACT_PLACKETT_LUCE_SLOTS:
        raise InvalidPolicyInput(
            "exact Plackett-Luce slot marginals need k <= "
            f"{MAX_EXACT_PLACKETT_LUCE_SLOTS}, got {n_slots}"
        )


def plackett_luce_dist(scores: np.ndarray, n_positions: int, temperature: float) -> np.ndarray:
    """Exact position marginals of a softmax (Plackett-Luce) slate over every action.

    The slate draws position 0 from ``softmax(scores / temperature)``, then each next
    position from the same weights renormalized over the actions not yet shown.
    scores: float[n, A], finite; n_positions <= 3 (``MAX_EXACT_PLACKETT_LUCE_SLOTS``).
    Returns float64[n, A, P] with P(action a at position k) (formula and precision:
    ``_plackett_luce_block``), O(n A^2) for three positions.
    """
    s, p = _scores("scores", scores, n_positions)
    _check_slots(p)
    t = _number("temperature", temperature)
    if not t > 0:
        raise InvalidPolicyInput(f"temperature must be > 0, got {temperature!r}")
    with np.errstate(over="ignore"):  # a logit beyond float64 is +inf: the kernel's too
        z = s / t
    return _plackett_luce_slots(z, np.ones(s.shape, dtype=bool), p)


def plackett_luce_marginals(
    scores: np.ndarray, temperature: float, chosen: np.ndarray, excluded: np.ndarray | None
) -> np.ndarray:
    """Exact P(chosen[r, s] at slot s) of a Plackett-Luce slate, for slots s < 3.

    scores: float32[B, N] (NaN = excluded, as the sampling kernel reads them; +-inf are
    the softmax's limits); temperature > 0; chosen: int64[B, k] (k <= 3, -1 = padding);
    excluded: bool[B, N] or None. Returns float64[B, k] (NaN for padding): the slate's
    entries of ``plackett_luce_dist`` over the valid candidates.
    """
    n_rows, k = chosen.shape
    _check_slots(k)
    out = np.full((n_rows, k), np.nan)
    if n_rows == 0 or k == 0:
        return out
    s = np.asarray(scores, dtype=np.float64)
    valid = ~np.isnan(s)
    if excluded is not None:
        valid &= ~excluded
    with np.errstate(over="ignore"):  # a logit beyond float64 is +inf: the kernel's too
        z = s / temperature
    marginals = _plackett_luce_slots(z, valid, k)
    filled = chosen >= 0
    picked = marginals[
        np.arange(n_rows)[:, None], np.where(filled, chosen, 0), np.arange(k)[None, :]
    ]
    return np.where(filled, picked, np.nan)


# ------------------------------------------------------------------ Thompson sampling


def beta_posteriors(
    n_arms: int,
    prior_alpha: float,
    prior_beta: float,
    successes: np.ndarray | None = None,
    failures: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Beta(alpha, beta) posteriors of ``n_arms`` Bernoulli arms: ``(alpha, beta)``,
    float64[n_arms] each.

    The prior is shared; successes, failures: float64[m] counts of the first ``m <=
    n_arms`` arms (arms after them have no counts: their posterior is the prior), or None.
    """
    alpha = np.full(n_arms, prior_alpha, dtype=np.float64)
    beta = np.full(n_arms, prior_beta, dtype=np.float64)
    if successes is not None and failures is not None:
        m = len(successes)
        alpha[:m] += successes
        beta[:m] += failures
    return alpha, beta


def bernoulli_ts_dist(
    successes: np.ndarray,
    failures: np.ndarray,
    n_positions: int,
    *,
    n_sim: int = 100_000,
    seed: int = 0,
    prior_alpha: float | np.ndarray = 1.0,
    prior_beta: float | np.ndarray = 1.0,
) -> np.ndarray:
    """Position marginals of Bernoulli Thompson sampling, by Monte-Carlo simulation.

    Each simulated slate draws theta_a ~ Beta(prior_alpha + successes_a, prior_beta +
    failures_a) and shows the actions in decreasing theta (as obp's ``BernoulliTS``
    ``compute_batch_action_dist``). successes, failures: float[A] counts; prior_alpha,
    prior_beta: scalars or float[A] (obp's production prior is per item, with zero
    counts). Returns float64[A, P]: the share of ``n_sim`` slates with action a at
    position k.
    """
    succ = _float_array("successes", successes, 1)
    fail = _float_array("failures", failures, 1)
    if succ.shape != fail.shape:
        raise InvalidPolicyInput(
            f"successes {succ.shape} and failures {fail.shape} differ in shape"
        )
    if succ.size and (succ.min() < 0 or fail.min() < 0):
        raise InvalidPolicyInput("successes and failures must be >= 0")
    _, p = _scores("successes", succ[None, :], n_positions)
    if isinstance(n_sim, bool) or not isinstance(n_sim, int) or n_sim < 1:
        raise InvalidPolicyInput(f"n_sim must be a positive int, got {n_sim!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise InvalidPolicyInput(f"seed must be an int in [0, 2**64), got {seed!r}")
    priors = []
    for name, value in (("prior_alpha", prior_alpha), ("prior_beta", prior_beta)):
        arr = _float_array(name, value, (0, 1))
        if arr.ndim == 1 and arr.shape != succ.shape:
            raise InvalidPolicyInput(f"{name} must be a scalar or have shape {succ.shape}")
        priors.append(np.broadcast_to(arr, succ.shape))
    alpha, beta = priors
    if alpha.size and (alpha.min() <= 0 or beta.min() <= 0):
        raise InvalidPolicyInput("prior_alpha and prior_beta must be > 0")
    rng = np.random.default_rng(int(seed))
    a = succ.shape[0]
    counts = np.zeros((a, p), dtype=np.float64)
    step = max(1, _CHUNK_CELLS // a)
    for start in range(0, n_sim, step):
        m = min(step, n_sim - start)
        theta = rng.beta(alpha + succ, beta + fail, size=(m, a))
        top = np.argsort(-theta, axis=1)[:, :p]
        for k in range(p):
            counts[:, k] += np.bincount(top[:, k], minlength=a)
    return counts / n_sim


# ----------------------------------------------------------------- logged and replayed


def empirical_slot_dist(
    actions: np.ndarray, positions: np.ndarray, n_actions: int, n_positions: int
) -> np.ndarray:
    """float64[A, P]: how often each action was logged at each position (per position).

    The time-average of the logging policy's position marginals (every row counts once):
    a context-free summary of a policy that changed while it logged.
    """
    acts = _int_array("actions", actions)
    pos = _int_array("positions", positions)
    if acts.shape != pos.shape:
        raise InvalidPolicyInput("actions and positions must have the same length")
    if acts.size and (acts.min() < 0 or acts.max() >= n_actions):
        raise InvalidPolicyInput(f"actions must be in [0, {n_actions})")
    if pos.size and (pos.min() < 0 or pos.max() >= n_positions):
        raise InvalidPolicyInput(f"positions must be in [0, {n_positions})")
    counts = np.bincount(pos * n_actions + acts, minlength=n_actions * n_positions)
    counts = counts.reshape(n_positions, n_actions).T.astype(np.float64)
    totals = counts.sum(axis=0, keepdims=True)
    if np.any(totals == 0):
        raise InvalidPolicyInput("every position needs at least one logged row")
    return counts / totals


def policy_slot_marginals(scores: np.ndarray, k: int, policy: str, **params: float) -> np.ndarray:
    """A candidate policy's slot marginals over one decision's candidates (a replay).

    scores: float64[c] the model's scores of the candidates; k: slots (<= c).
    policy: ``greedy`` (the k best), ``epsilon_greedy`` (``epsilon``, default 0.1: a
    uniformly random slate with that probability, else greedy) or ``softmax`` (a
    Plackett-Luce slate at ``temperature``, default 1; k <= 3). Returns float64[c, k],
    each column a distribution.
    """
    s = np.asarray(scores, dtype=np.float64)[None, :]
    if policy == "greedy":
        return greedy_slate_dist(s, k)[0]
    if policy == "epsilon_greedy":
        return epsilon_greedy_slate_dist(s, k, float(params.get("epsilon", 0.1)))[0]
    if policy == "softmax":
        return plackett_luce_dist(s, k, float(params.get("temperature", 1.0)))[0]
    raise InvalidPolicyInput(f"policy must be one of {CANDIDATE_POLICIES}, got {policy!r}")
