"""NumPy references for the exploration samplers: the test oracle and the last fallback.

Every public function here is one backend of a registered op and takes the arguments
``sampling.py`` has already validated (C-contiguous arrays of the stated dtypes):

- ``epsilon_greedy_slate(scores, k, epsilon, seeds, mask, n_threads)``
- ``plackett_luce_slate(scores, k, temperature, seeds, mask, n_threads)``
  with ``scores: float32[B, N]``, ``seeds: uint64[B]``, ``mask: bool[B, N] | None``;
  both return ``(indices: int64[B, k], propensities: float64[B, k])``.
- ``thompson_draw(alpha, beta, k, seeds, mask, n_threads) -> indices: int64[B, k]`` with
  ``alpha, beta: float64[A, N]``, ``A`` either 1 (shared by every row) or ``B``.
- ``thompson_slot_probabilities(alpha, beta, valid, k, n_threads) -> float64[U, k, N]``
  for ``U`` distinct parameter rows ``alpha, beta: float64[U, N]``, ``valid: bool[U, N]``
  (deterministic quadrature, no random numbers: its only backend).

``n_threads`` is accepted for a uniform signature and ignored here. The semantics (which
random numbers decide what) are defined here and repeated exactly by the numba kernels;
see each function. Draws come from ``rng`` (one counter-based stream per row).

A candidate is valid when it is not masked and its score is not NaN; ``-inf`` is a valid
(lowest) score. Slots a row cannot fill get index ``-1`` and propensity ``NaN``.
"""

from __future__ import annotations

import math

import numpy as np

from nudgeserve.kernels import rng
from nudgeserve.kernels._topk_ref import topk as _topk_ref

PAD_INDEX = -1
PAD_PROPENSITY = np.nan

# Plackett-Luce: weights are exp(z - m) for a running maximum m; when the largest
# remaining z falls this far below m, the weights are recomputed from it so that the
# remaining ones do not underflow (exp(-600) is still a normal double).
PL_RESCALE_GAP = 600.0

# Gamma draws (Marsaglia & Tsang 2000): each draw owns GAMMA_BLOCK consecutive counters;
# attempt t uses 3t, 3t+1, 3t+2 (two for the Box-Muller normal, one for acceptance);
# the last counter is the extra uniform of the a < 1 boost. The acceptance probability is
# above 0.95 for every shape, so MAX_ATTEMPTS failures (probability < 1e-80) never happen;
# if they did the draw would be its mode.
GAMMA_BLOCK = 256
MAX_ATTEMPTS = 64
BOOST_COUNTER = GAMMA_BLOCK - 1
# Quadrature of P(arm i at rank s) in logit space (see slot_probabilities).
QUAD_DROP = 36.0  # log-density drop that bounds each arm's support (e^-36 ~ 2e-16)
QUAD_POINTS_PER_SCALE = 8  # grid points per posterior standard deviation (logit space)
QUAD_MAX_POINTS = 1 << 16
QUAD_MAX_CELLS = 1 << 20  # arms x ranks x grid points held at once


def _valid(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    valid = ~np.isnan(scores)
    if mask is not None:
        valid &= ~mask
    return valid


def epsilon_greedy_slate(
    scores: np.ndarray,
    k: int,
    epsilon: float,
    seeds: np.ndarray,
    mask: np.ndarray | None,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: draw 0 < epsilon explores, else the greedy top-k.

    Exploring is a partial Fisher-Yates shuffle of the row's valid indices (ascending):
    slot s swaps position s with position ``s + floor(u_{1+s} * (n_valid - s))``.
    Propensity of slot s: ``(1 - epsilon) * [greedy slot s holds it] + epsilon / n_valid``.
    """
    n_rows, n_cols = scores.shape
    indices = np.full((n_rows, k), PAD_INDEX, dtype=np.int64)
    props = np.full((n_rows, k), PAD_PROPENSITY, dtype=np.float64)
    if n_rows == 0 or k == 0:
        return indices, props
    valid = _valid(scores, mask)
    n_valid = valid.sum(axis=1)
    greedy, _ = _topk_ref(scores, k, mask)
    keys = rng.row_keys(seeds)
    explore = rng.uniforms(keys, 0) < epsilon
    pool = np.argsort(~valid, axis=1, kind="stable")  # valid indices first, ascending
    rows = np.arange(n_rows)
    take = min(k, n_cols)
    for s in range(take):
        remaining = n_valid - s
        active = remaining > 0
        u = rng.uniforms(keys, 1 + s)
        offset = np.minimum(np.floor(u * remaining), remaining - 1)
        j = np.where(active, s + offset.astype(np.int64), s)
        a, b = pool[rows, s].copy(), pool[rows, j].copy()
        pool[rows, s], pool[rows, j] = b, a
    filled = np.arange(take)[None, :] < n_valid[:, None]
    chosen = np.where(explore[:, None], pool[:, :take], greedy[:, :take])
    indices[:, :take] = np.where(filled, chosen, PAD_INDEX)
    with np.errstate(divide="ignore", invalid="ignore"):
        uniform = epsilon / n_valid
    is_greedy = (indices[:, :take] == greedy[:, :take]).astype(np.float64)
    p = (1.0 - epsilon) * is_greedy + uniform[:, None]
    props[:, :take] = np.where(filled, p, PAD_PROPENSITY)
    return indices, props


def plackett_luce_slate(
    scores: np.ndarray,
    k: int,
    temperature: float,
    seeds: np.ndarray,
    mask: np.ndarray | None,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax sampling without replacement, slot by slot.

    With ``z = float64(score) / temperature`` and ``m`` the largest z still remaining,
    slot s weighs each remaining valid item ``exp(z - m)`` (when ``m`` is infinite: 1 for
    the items at ``m``, 0 for the rest, the limit of the softmax), sums the weights in
    index order (cumulative ``c``, total ``S``), and takes the first item with
    ``c > u_s * S``. Its propensity is ``w / S``: the probability of that item at that
    slot given the items above it.
    """
    n_rows, n_cols = scores.shape
    indices = np.full((n_rows, k), PAD_INDEX, dtype=np.int64)
    props = np.full((n_rows, k), PAD_PROPENSITY, dtype=np.float64)
    if n_rows == 0 or k == 0 or n_cols == 0:
        return indices, props
    remaining = _valid(scores, mask)
    z = scores.astype(np.float64) / temperature
    keys = rng.row_keys(seeds)
    rows = np.arange(n_rows)
    for s in range(min(k, n_cols)):
        active = remaining.any(axis=1)
        if not active.any():
            break
        zr = np.where(remaining, z, -np.inf)
        m = zr.max(axis=1)
        finite = np.isfinite(m)
        with np.errstate(invalid="ignore", over="ignore"):
            w = np.where(
                finite[:, None],
                np.exp(zr - np.where(finite, m, 0.0)[:, None]),
                (remaining & (z == m[:, None])).astype(np.float64),
            )
        cum = np.cumsum(w, axis=1)
        total = cum[:, -1]
        u = rng.uniforms(keys, s)
        above = cum > (u * total)[:, None]
        # Rounding can leave u * S == S: then the last item with weight takes the slot.
        last_positive = n_cols - 1 - np.argmax((w > 0)[:, ::-1], axis=1)
        pick = np.where(above.any(axis=1), np.argmax(above, axis=1), last_positive)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = w[rows, pick] / total
        indices[:, s] = np.where(active, pick, PAD_INDEX)
        props[:, s] = np.where(active, p, PAD_PROPENSITY)
        remaining[rows[active], pick[active]] = False
    return indices, props


def gamma_draws(
    keys: np.ndarray, blocks: np.ndarray, shape: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gamma(shape, 1) draws as ``g * exp(log_boost)``; arguments broadcast to one shape.

    keys: uint64[...] stream keys; blocks: uint64[...] which GAMMA_BLOCK of the stream each
    draw uses; shape: float64[...] > 0. Returns ``(g, log_boost)``, both float64[...]:
    ``g > 0`` a Gamma(a) draw with ``a = shape`` (``shape + 1`` when ``shape < 1``) by
    Marsaglia-Tsang with its squeeze, and ``log_boost = log(u) / shape`` for the boost
    of a shape below 1 (0 otherwise). Keeping the boost as a logarithm keeps tiny shapes
    from underflowing to 0.
    """
    keys, blocks, shape = np.broadcast_arrays(
        np.asarray(keys, np.uint64), np.asarray(blocks, np.uint64), np.asarray(shape, np.float64)
    )
    out_shape = shape.shape
    keys, blocks, shape = keys.ravel(), blocks.ravel(), shape.ravel()
    boost = shape < 1.0
    a = np.where(boost, shape + 1.0, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    base = blocks * np.uint64(GAMMA_BLOCK)
    g = d.copy()  # the mode; kept only if every attempt were rejected
    pending = np.arange(shape.size)
    for t in range(MAX_ATTEMPTS):
        if pending.size == 0:
            break
        kp, bp, dp, cp = keys[pending], base[pending], d[pending], c[pending]
        u1 = rng.uniforms(kp, bp + np.uint64(3 * t))
        u2 = rng.uniforms(kp, bp + np.uint64(3 * t + 1))
        u3 = rng.uniforms(kp, bp + np.uint64(3 * t + 2))
        x = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
        v = 1.0 + cp * x
        positive = v > 0.0
        v = np.where(positive, v, 1.0)
        v = v * v * v
        squeeze = u3 < 1.0 - 0.0331 * (x * x) * (x * x)
        accept = positive & (squeeze | (np.log(u3) < 0.5 * x * x + dp - dp * v + dp * np.log(v)))
        g[pending[accept]] = dp[accept] * v[accept]
        pending = pending[~accept]
    log_boost = np.zeros_like(g)
    if boost.any():
        ub = rng.uniforms(keys[boost], base[boost] + np.uint64(BOOST_COUNTER))
        log_boost[boost] = np.log(ub) / shape[boost]
    return g.reshape(out_shape), log_boost.reshape(out_shape)


def thompson_delta(
    keys: np.ndarray, arm_blocks: np.ndarray, alpha: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """delta = log X - log Y for X ~ Gamma(alpha) (block b), Y ~ Gamma(beta) (block b + 1).

    theta = X / (X + Y) ~ Beta(alpha, beta) is increasing in delta, and ranking by delta
    never rounds distinct draws near 1 into ties. Broadcasts; returns float64[...].
    """
    gx, bx = gamma_draws(keys, arm_blocks, alpha)
    gy, by = gamma_draws(keys, arm_blocks + np.uint64(1), beta)
    delta = np.log(gx / gy) + (bx - by)
    return np.where(np.isnan(delta), 0.0, delta)  # both boosts -inf: call it a tie


def _rank(delta: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """Top-k of float64 ``delta[B, N]`` among ``valid``; ties to the lower index; -1 pads."""
    n_rows, n_cols = delta.shape
    out = np.full((n_rows, k), PAD_INDEX, dtype=np.int64)
    take = min(k, n_cols)
    if take == 0:
        return out
    order = np.argsort(np.where(valid, -delta, np.nan), axis=1, kind="stable")[:, :take]
    filled = np.arange(take)[None, :] < valid.sum(axis=1)[:, None]
    out[:, :take] = np.where(filled, order, PAD_INDEX)
    return out


def thompson_draw(
    alpha: np.ndarray,
    beta: np.ndarray,
    k: int,
    seeds: np.ndarray,
    mask: np.ndarray | None,
    n_threads: int = 1,
) -> np.ndarray:
    """Draw theta ~ Beta(alpha, beta) per row and arm; return the top-k arms per row.

    alpha, beta: float64[A, N] with A = 1 (shared) or B; seeds: uint64[B];
    mask: bool[B, N] or None. Arm i of a row draws log X from Gamma block 2i and log Y
    from block 2i + 1 of the row's stream. Returns int64[B, k].
    """
    n_rows = seeds.shape[0]
    n_cols = alpha.shape[1]
    if n_rows == 0 or k == 0:
        return np.full((n_rows, k), PAD_INDEX, dtype=np.int64)
    arm_blocks = 2 * np.arange(n_cols, dtype=np.uint64)[None, :]
    delta = thompson_delta(rng.row_keys(seeds)[:, None], arm_blocks, alpha, beta)
    valid = np.ones((n_rows, n_cols), dtype=bool) if mask is None else ~mask
    return _rank(delta, valid, k)


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return np.minimum(z, 0.0) - np.log1p(np.exp(-np.abs(z)))


def _support(
    a: np.ndarray,
    b: np.ndarray,
    log_norm: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    direction: float,
) -> np.ndarray:
    """Where each arm's logit-space log density has dropped QUAD_DROP below its peak."""

    def log_density(z):
        return a * _log_sigmoid(z) + b * _log_sigmoid(-z) - log_norm

    target = log_density(center) - QUAD_DROP
    # A Gaussian-like arm drops QUAD_DROP at ~8.5 sd; skewed ones (shapes < 1) double on.
    first = 8.0 * scale
    step = first.copy()
    for _ in range(80):  # log-concave: doubling brackets the point, bisection finds it
        short = log_density(center + direction * step) > target
        if not short.any():
            break
        step = np.where(short, 2.0 * step, step)
    near, far = np.where(step > first, 0.5 * step, 0.0), step
    # The bound only truncates a tail below e^-36: 24 halvings are ample.
    for _ in range(24):
        mid = 0.5 * (near + far)
        above = log_density(center + direction * mid) > target
        near = np.where(above, mid, near)
        far = np.where(above, far, mid)
    return center + direction * far


def _grid(
    lo: np.ndarray, hi: np.ndarray, scale: np.ndarray, z_lo: float, z_hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature points ``z`` and Simpson weights on ``[z_lo, z_hi]``.

    The arms' supports cut the range into panels; each panel is uniform with
    QUAD_POINTS_PER_SCALE points per standard deviation of the sharpest arm whose support
    overlaps it (an even number of cells, for Simpson's rule), so a sharp posterior next
    to a flat one is resolved without refining the whole range.
    """
    inside = np.concatenate([lo, hi])
    breaks = np.unique(np.concatenate([[z_lo, z_hi], inside[(inside > z_lo) & (inside < z_hi)]]))
    lefts, rights = breaks[:-1], breaks[1:]
    # Panel p overlaps arm j when lo_j < right_p and hi_j > left_p.
    overlap = (lo[None, :] < rights[:, None]) & (hi[None, :] > lefts[:, None])
    finest = np.where(overlap, scale[None, :], np.inf).min(axis=1)
    spacing = np.where(np.isfinite(finest), finest / QUAD_POINTS_PER_SCALE, rights - lefts)
    cells = 2 * np.maximum(1, np.ceil((rights - lefts) / (2 * spacing))).astype(np.int64)
    if cells.sum() > QUAD_MAX_POINTS:
        # Coarsen every panel alike (posteriors of wildly different widths over a wide
        # range): accuracy degrades, the work stays bounded.
        cells = 2 * np.maximum(1, np.floor(cells * (QUAD_MAX_POINTS / cells.sum()) / 2)).astype(
            np.int64
        )
    points = [np.array([z_lo])]
    weights = np.zeros(int(cells.sum()) + 1)
    at = 0
    simpson = np.ones(0)
    for left, right, m in zip(lefts, rights, cells.tolist(), strict=True):
        points.append(np.linspace(left, right, m + 1)[1:])
        if simpson.size != m + 1:
            simpson = np.ones(m + 1)
            simpson[1:-1:2] = 4.0
            simpson[2:-1:2] = 2.0
        weights[at : at + m + 1] += simpson * ((right - left) / m / 3.0)
        at += m
    return np.concatenate(points), weights


def slot_probabilities(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """P(arm i has the (s+1)-th largest draw) for independent ``Beta(a[i], b[i])``.

    a, b: float64[n] > 0. Returns float64[n, min(k, n)]; column s is the distribution of
    the arm at rank s (each column sums to 1).

    ``P_is = integral of f_i(x) * P(exactly s of the other arms draw above x) dx``: the
    inner probability is a Poisson-binomial over the other arms' ``1 - F_j(x)``, built
    with prefix and suffix convolutions (leave-one-out without division, so no loss of
    precision when some F_j is 0). For s = 0 it is ``prod_{j != i} F_j(x)``.

    The integral is taken in logit space ``z = log(x / (1 - x))``, where each Beta density
    ``g_j(z) = sigmoid(z)^a sigmoid(-z)^b / B(a, b)`` is smooth and log-concave (no endpoint
    singularities, even for a, b < 1): the grid spans where the top min(k, n) draws can
    be, in panels resolving every arm's own width (``_grid``). The CDFs come from
    cumulative trapezoids with the end correction ``h^2/12 (g'(left) - g'(right))``
    (fourth order), summed down from the top so arms mostly below the grid are right too;
    the outer integral is Simpson's rule per panel (fourth order). Agrees with the
    two-arm closed form within 1e-6 (typically 1e-8) in the tests. Beyond
    QUAD_MAX_POINTS grid points (only with extreme mixes of widths) the grid is coarsened
    and accuracy degrades. Cost O(n k^2 G) for G grid points (typically a few thousand).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = a.shape[0]
    ranks = min(k, n)
    if n <= 1 or ranks == 0:
        return np.ones((n, ranks))
    log_norm = np.array(
        [
            math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)
            for x, y in zip(a.tolist(), b.tolist(), strict=True)
        ]
    )
    center = np.log(a) - np.log(b)
    scale = np.sqrt(1.0 / a + 1.0 / b)
    lo = _support(a, b, log_norm, center, scale, -1.0)
    hi = _support(a, b, log_norm, center, scale, +1.0)
    # Below the (ranks+1)-th largest lower bound, at least `ranks` other arms are surely
    # above, so nothing there can take one of the first `ranks` places.
    z_lo = np.sort(lo)[::-1][ranks] if n > ranks else lo.min()
    z_hi = hi.max()
    z, weights = _grid(lo, hi, scale, z_lo, z_hi)
    h = np.diff(z)
    ls_pos, ls_neg = _log_sigmoid(z), _log_sigmoid(-z)
    g = np.exp(a[:, None] * ls_pos + b[:, None] * ls_neg - log_norm[:, None])
    slope = a[:, None] * np.exp(ls_neg) - b[:, None] * np.exp(ls_pos)  # d log g / dz
    dg = g * slope
    cells = 0.5 * h * (g[:, :-1] + g[:, 1:]) + (h * h / 12.0) * (dg[:, :-1] - dg[:, 1:])
    above = np.zeros_like(g)
    above[:, :-1] = np.cumsum(cells[:, ::-1], axis=1)[:, ::-1]
    above = np.clip(above, 0.0, 1.0)  # P(draw > z)
    below = 1.0 - above
    out = np.zeros((n, ranks))
    weighted = g * weights
    # Grid columns are independent from here on: take them in chunks to bound memory.
    step = max(1, QUAD_MAX_CELLS // ((n + 1) * ranks))
    for start in range(0, z.shape[0], step):
        cols = slice(start, start + step)
        up, down = above[:, cols], below[:, cols]
        width = up.shape[1]
        # prefix[i][s] = P(exactly s of arms 0..i-1 are above); suffix[i]: arms i..n-1.
        prefix = np.zeros((n + 1, ranks, width))
        prefix[0, 0] = 1.0
        for i in range(n):
            prefix[i + 1] = prefix[i] * down[i]
            prefix[i + 1, 1:] += prefix[i, :-1] * up[i]
        suffix = np.zeros((n + 1, ranks, width))
        suffix[n, 0] = 1.0
        for i in range(n - 1, -1, -1):
            suffix[i] = suffix[i + 1] * down[i]
            suffix[i, 1:] += suffix[i + 1, :-1] * up[i]
        # The arms other than i: those before it (prefix[i]) and after it (suffix[i+1]).
        others = np.zeros((n, ranks, width))
        for s in range(ranks):
            for a_count in range(s + 1):
                others[:, s] += prefix[:-1, a_count] * suffix[1:, s - a_count]
        out += np.einsum("isg,ig->is", others, weighted[:, cols])
    return np.clip(out, 0.0, 1.0)


def thompson_slot_probabilities(
    alpha: np.ndarray,
    beta: np.ndarray,
    valid: np.ndarray,
    k: int,
    n_threads: int = 1,
) -> np.ndarray:
    """Per distinct parameter row: the probability of each arm at each slot.

    alpha, beta: float64[U, N]; valid: bool[U, N]. Returns float64[U, k, N]:
    ``[u, s, i]`` = P(arm i is at slot s) among the row's valid arms
    (``slot_probabilities``); 0 for invalid arms and for slots beyond the valid count.
    """
    n_rows, n_cols = alpha.shape
    table = np.zeros((n_rows, k, n_cols), dtype=np.float64)
    for u in range(n_rows):
        arms = np.flatnonzero(valid[u])
        if arms.size == 0 or k == 0:
            continue
        probs = slot_probabilities(alpha[u, arms], beta[u, arms], k)
        table[u, : probs.shape[1]][:, arms] = probs.T
    return table
