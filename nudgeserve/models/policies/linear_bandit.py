"""A contextual linear bandit: LinUCB and linear Thompson sampling on context-action features.

Model and choice of features
----------------------------
One parameter vector is shared by every action (a *shared-parameter* linear bandit): the
reward of showing candidate ``n`` in context ``b`` is modelled as ``theta . x[b, n]`` with
``x: float64[B, N, d]``, one feature vector per (context, candidate) pair. Shared rather
than disjoint (one ``theta`` per arm) because the arms are catalog items (80 for OBD) and
new items arrive with inline features: per-arm parameters would need one ``d x d``
matrix per item and could never score an item they have not seen, while a shared
``theta`` generalises through the item's features.

With the OBD click model the features come from its two towers (``interaction_features``):
``x[b, n] = [score[b, n], u[b] * v[n]]``: the model's own click probability and the
elementwise product of the user-tower vector ``u`` (float[B, dim], ``dim`` = 8 for the
shipped model) and the item vector ``v`` (float[N, dim]), so ``d = dim + 1``. With the
prior mean ``e_0`` (weight 1 on the score, 0 elsewhere) the bandit starts out ranking
exactly as the model does and learns a correction in the towers' interaction space,
exploring where that correction is uncertain. Keep ``d`` small (<= 32): scoring costs
O(B N d^2) per batch.

State: ridge regression with prior mean ``theta_0`` and ridge ``lam``
----------------------------------------------------------------------
::

    A = lam I + sum x x^T        float64[d, d]
    b = lam theta_0 + sum r x    float64[d]
    theta_hat = A^-1 b           (the minimiser of sum (r - theta.x)^2 + lam |theta - theta_0|^2)

``A^-1`` is kept up to date by Sherman-Morrison, ``A^-1 <- A^-1 - (A^-1 x)(A^-1 x)^T /
(1 + x^T A^-1 x)``, O(d^2) per observation. A batch of ``m >= d`` observations is cheaper
as one rank-m update of ``A`` followed by one O(d^3) inversion, so ``update`` does that
instead; every ``REFACTOR_EVERY`` rank-1 steps ``A^-1`` is recomputed from ``A`` so that
rounding errors of many rank-1 steps cannot accumulate. Both paths give the same state
to rounding (tested against ``np.linalg.inv``).

Policies and their propensities
-------------------------------
- **LinUCB** (``linucb_slate``): rank by ``theta_hat . x + alpha sqrt(x^T A^-1 x)``. On its
  own it is deterministic: the chosen slate has propensity 1 and every other slate 0, so
  off-policy evaluation of any *other* policy from its logs is impossible (no overlap).
  It is therefore mixed with ``epsilon`` uniform exploration through the kernel
  ``epsilon_greedy_slate``, whose per-slot propensities are exact:
  ``(1 - epsilon) [UCB top-k puts the item at slot s] + epsilon / n_valid``. This is the
  default policy to log with. ``linucb_slot_probabilities`` gives the whole table
  (``[B, k, N]``), e.g. as ``eval_probs`` when evaluating LinUCB offline.
- **Linear Thompson sampling** (``thompson_slate``): per request, draw
  ``theta ~ N(theta_hat, scale^2 A^-1)`` from the request's own seeded stream and take the
  top-k of ``theta . x``. Its propensities have **no closed form** (the probability that a
  Gaussian draw ranks an item at slot s is an integral over a polyhedral cone). They are
  estimated by Monte Carlo: ``propensity_draws`` (M) further independent draws from the
  same request's stream, and ``(count + 1) / (M + 1)`` where ``count`` is how many of them
  put the chosen item at its slot. The ``+ 1`` (the served draw itself) keeps a logged
  propensity above 0, at a bias of at most ``1 / (M + 1)``; the standard error is about
  ``sqrt(p (1 - p) / M)``. Costs O(M N d) per request, so it is not the default.

Randomness: every draw comes from the kernels' counter-based generator keyed by the
request's seed (``seeds: uint64[B]``, as in ``nudgeserve.kernels.sampling``), so a row's
result depends only on its seed and its own inputs, never on its batch-mates.

NumPy only: no torch, no Ray, no HTTP. The learner (``nudgeserve.serve.engine.learning``)
owns the one updating copy; serving replicas hold read-only snapshots of it.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

# ``rng`` is the kernels' counter-based generator: the same per-row streams the kernel
# samplers use, so a decision's seed reproduces a Thompson draw as it reproduces a
# kernel's slate.
from nudgeserve.kernels import epsilon_greedy_slate, rng, topk
from nudgeserve.kernels.sampling import check_epsilon, check_seeds
from nudgeserve.models.errors import InvalidFeatures, InvalidFeatureType

__all__ = [
    "REFACTOR_EVERY",
    "LinearBandit",
    "interaction_features",
]

# Rank-1 Sherman-Morrison steps between two exact re-inversions of A: bounds the drift of
# A^-1 (each step loses a few ulps) at an amortised O(d^3 / 1024) per observation.
REFACTOR_EVERY = 1024
# Largest feature dimension accepted: the O(d^2) per-candidate width makes larger ones
# too slow for serving, and the state is copied to every replica.
MAX_DIM = 256
# Monte Carlo draws per row held in memory at once when estimating TS propensities.
_MC_CHUNK_CELLS = 1 << 22


def _check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    ok = (v >= 0.0 if allow_zero else v > 0.0) and math.isfinite(v)
    if not ok:
        raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {v!r}")
    return v


def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if v < low or (high is not None and v > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {v}")
    return v


def _check_array(value: object, name: str, ndim: int, last: int | None = None) -> np.ndarray:
    """A finite real array of ``ndim`` dims (last dim ``last``) as float64, C-contiguous."""
    if not isinstance(value, np.ndarray):
        raise InvalidFeatureType(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype.kind not in "iuf":
        raise InvalidFeatureType(f"{name} must be a real-valued array, got dtype {value.dtype}")
    if value.ndim != ndim:
        raise InvalidFeatures(f"{name} must have {ndim} dimensions, got shape {value.shape}")
    if last is not None and value.shape[-1] != last:
        raise InvalidFeatures(
            f"{name} must have {last} entries in its last dimension, got shape {value.shape}"
        )
    arr = np.ascontiguousarray(value, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        where = [int(i) for i in np.argwhere(~finite)[0]]
        raise InvalidFeatures(
            f"{name} must be finite; {name}{where} = {float(arr[tuple(where)])!r}"
        )
    return arr


def interaction_features(
    context: np.ndarray, items: np.ndarray, scores: np.ndarray | None = None
) -> np.ndarray:
    """Context-action features from a two-tower model.

    Args:
        context: float[B, m] per-request vectors (the OBD model's user-tower output);
        items: float[N, m] per-candidate vectors (its item vectors, the same space);
        scores: float[B, N] or None: the model's own score per pair (e.g. click
            probability), prepended as feature 0.

    Returns:
        float64[B, N, d] with ``x[b, n] = [scores[b, n], context[b] * items[n]]``
        (``d = m + 1``), or ``context[b] * items[n]`` (``d = m``) without scores. With
        ``theta = [0, 1, ..., 1]`` a linear model on these reproduces the towers' dot
        product; ``LinearBandit(prior_mean=e_0)`` starts from the score instead.
    """
    context = _check_array(context, "context", 2)
    items = _check_array(items, "items", 2, context.shape[1])
    n_rows, n_cols = context.shape[0], items.shape[0]
    product = context[:, None, :] * items[None, :, :]
    if scores is None:
        return product
    scores = _check_array(scores, "scores", 2)
    if scores.shape != (n_rows, n_cols):
        raise InvalidFeatures(
            f"scores must have shape [B, N] = {[n_rows, n_cols]}, got {list(scores.shape)}"
        )
    out = np.empty((n_rows, n_cols, context.shape[1] + 1))
    out[:, :, 0] = scores
    out[:, :, 1:] = product
    return out


class LinearBandit:
    """Ridge-regression state of a shared-parameter linear bandit, and its two policies.

    Args:
        dim: feature dimension d, 1..256 (keep it <= 32 for serving).
        ridge: lam > 0, the prior precision: the weight of ``prior_mean`` in
            observations' worth of evidence.
        prior_mean: float64[d] or None (zeros): where ``theta`` starts.

    Attributes (read-only views; ``update`` replaces them): ``A: float64[d, d]``,
    ``A_inv: float64[d, d]``, ``b: float64[d]``, ``theta: float64[d]`` (= ``A_inv @ b``),
    ``n_updates`` (observations so far).
    """

    def __init__(
        self, dim: int, *, ridge: float = 1.0, prior_mean: np.ndarray | None = None
    ) -> None:
        self.dim = _check_int(dim, "dim", 1, MAX_DIM)
        self.ridge = _check_positive(ridge, "ridge")
        if prior_mean is None:
            prior = np.zeros(self.dim)
        else:
            prior = _check_array(np.asarray(prior_mean), "prior_mean", 1, self.dim)
        self._prior = prior.copy()
        self._A = self.ridge * np.eye(self.dim)
        self._A_inv = np.eye(self.dim) / self.ridge
        self._b = self.ridge * prior
        self._theta = prior.copy()
        self._chol: np.ndarray | None = None
        self.n_updates = 0
        self._since_refactor = 0

    # ------------------------------------------------------------------ state

    @property
    def A(self) -> np.ndarray:
        return _readonly(self._A)

    @property
    def A_inv(self) -> np.ndarray:
        return _readonly(self._A_inv)

    @property
    def b(self) -> np.ndarray:
        return _readonly(self._b)

    @property
    def theta(self) -> np.ndarray:
        return _readonly(self._theta)

    @property
    def prior_mean(self) -> np.ndarray:
        return _readonly(self._prior)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the arrays that define the state (``A``, ``A_inv``, ``b``, ``prior``)
        plus ``meta = float64[3]``: ridge, n_updates, steps since the last re-inversion."""
        meta = np.array([self.ridge, float(self.n_updates), float(self._since_refactor)])
        return {
            "A": self._A.copy(),
            "A_inv": self._A_inv.copy(),
            "b": self._b.copy(),
            "prior": self._prior.copy(),
            "meta": meta,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> LinearBandit:
        """Rebuild from ``state_dict()``; raises ValueError naming a missing or bad array."""
        for key in ("A", "A_inv", "b", "prior", "meta"):
            if key not in state:
                raise ValueError(f"linear bandit state lacks array {key!r}")
        prior = np.asarray(state["prior"], dtype=np.float64)
        meta = np.asarray(state["meta"], dtype=np.float64)
        if prior.ndim != 1 or meta.shape != (3,):
            raise ValueError(
                f"linear bandit state: prior must be 1-D and meta of shape [3], got "
                f"{prior.shape} and {meta.shape}"
            )
        d = prior.shape[0]
        out = cls(d, ridge=float(meta[0]), prior_mean=prior)
        for key, shape in (("A", (d, d)), ("A_inv", (d, d)), ("b", (d,))):
            arr = np.asarray(state[key], dtype=np.float64)
            if arr.shape != shape or not np.isfinite(arr).all():
                raise ValueError(
                    f"linear bandit state: {key} must be finite with shape {list(shape)}, "
                    f"got {list(arr.shape)}"
                )
            setattr(out, f"_{key}", arr.copy())
        out._theta = out._A_inv @ out._b
        out.n_updates = int(meta[1])
        out._since_refactor = int(meta[2])
        return out

    def copy(self) -> LinearBandit:
        return LinearBandit.from_state_dict(self.state_dict())

    # ----------------------------------------------------------------- update

    def update(self, x: np.ndarray, rewards: np.ndarray) -> None:
        """Add observations: ``x: float[M, d]`` (the shown candidates' features),
        ``rewards: float[M]``. M = 0 is a no-op.

        Fewer than d rows: one Sherman-Morrison step each (O(d^2)); d or more: one rank-M
        update of A and an exact re-inversion (O(M d^2 + d^3), cheaper than M steps).
        """
        x = _check_array(x, "x", 2, self.dim)
        rewards = _check_array(rewards, "rewards", 1)
        if rewards.shape[0] != x.shape[0]:
            raise InvalidFeatures(
                f"rewards must have one entry per row of x ({x.shape[0]}), got {rewards.shape[0]}"
            )
        m = x.shape[0]
        if m == 0:
            return
        # New arrays rather than in-place updates: views handed out earlier (snapshots,
        # the properties) must keep the state they were taken from.
        self._A = self._A + x.T @ x
        self._b = self._b + x.T @ rewards
        if m >= self.dim or self._since_refactor + m > REFACTOR_EVERY:
            self._refactor()
        else:
            a_inv = self._A_inv.copy()
            for row in x:
                u = a_inv @ row
                a_inv -= np.outer(u, u) / (1.0 + row @ u)
            self._A_inv = a_inv
            self._since_refactor += m
        self._theta = self._A_inv @ self._b
        self._chol = None
        self.n_updates += m

    def _refactor(self) -> None:
        a_inv = np.linalg.inv(self._A)
        self._A_inv = 0.5 * (a_inv + a_inv.T)  # exactly symmetric, for the Cholesky factor
        self._since_refactor = 0

    # ---------------------------------------------------------------- scoring

    def _check_x(self, x: np.ndarray) -> np.ndarray:
        return _check_array(x, "x", 3, self.dim)

    def mean(self, x: np.ndarray) -> np.ndarray:
        """Posterior mean reward ``theta . x``: x: float[B, N, d] -> float64[B, N]."""
        return self._check_x(x) @ self._theta

    def ucb_scores(self, x: np.ndarray, alpha: float) -> np.ndarray:
        """``theta . x + alpha * sqrt(x^T A^-1 x)``: x: float[B, N, d] -> float64[B, N].

        alpha >= 0: the width multiplier (0 = greedy on the mean).
        """
        alpha = _check_positive(alpha, "alpha", allow_zero=True)
        x = self._check_x(x)
        return self._ucb(x, alpha)

    def _ucb(self, x: np.ndarray, alpha: float) -> np.ndarray:
        mean = x @ self._theta
        if alpha == 0.0:
            return mean
        width = np.einsum("bnd,bnd->bn", x @ self._A_inv, x)
        return mean + alpha * np.sqrt(np.maximum(width, 0.0))

    def linucb_slate(
        self,
        x: np.ndarray,
        k: int,
        *,
        alpha: float,
        epsilon: float,
        seeds: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """LinUCB top-k mixed with ``epsilon`` uniform exploration.

        Args:
            x: float[B, N, d]; k: slate size >= 0; alpha >= 0: UCB width multiplier;
            epsilon in [0, 1]: with this probability the row's slate is uniformly random
            (0 gives pure LinUCB, whose propensities are 1 for the chosen items and 0 for
            every other: unusable for off-policy evaluation of another policy);
            seeds: uint64[B], one per row; mask: bool[B, N] or None (True = excluded).

        Returns:
            ``(indices: int64[B, k], propensities: float64[B, k])`` from
            ``epsilon_greedy_slate`` on the UCB scores (cast to float32; equal float32
            scores tie to the lower index): the exact marginal probability that the
            chosen item is at that slot. Rows with fewer than k valid candidates are
            padded with -1 / NaN.
        """
        x = self._check_x(x)
        alpha = _check_positive(alpha, "alpha", allow_zero=True)
        scores = self._ucb(x, alpha).astype(np.float32)
        return epsilon_greedy_slate(scores, k, epsilon, seeds, mask)

    def linucb_slot_probabilities(
        self,
        x: np.ndarray,
        k: int,
        *,
        alpha: float,
        epsilon: float,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """The whole propensity table of ``linucb_slate``: float64[B, k, N].

        ``[b, s, n]`` = P(candidate n at slot s) = ``(1 - epsilon) [UCB top-k has n at s]
        + epsilon / n_valid`` for valid n and ``s < n_valid``, else 0. Each slot below
        ``n_valid`` sums to 1 over n. Arguments as ``linucb_slate`` (no seeds: exact).
        """
        x = self._check_x(x)
        alpha = _check_positive(alpha, "alpha", allow_zero=True)
        # The same check epsilon_greedy_slate applies, so this table and linucb_slate
        # accept exactly the same epsilons.
        eps = check_epsilon(epsilon)
        scores = self._ucb(x, alpha).astype(np.float32)
        greedy, _ = topk(scores, k, mask)
        n_rows, n_cols = scores.shape
        valid = np.ones((n_rows, n_cols), bool) if mask is None else ~mask
        n_valid = valid.sum(axis=1)
        table = np.zeros((n_rows, k, n_cols))
        filled = np.arange(k)[None, :] < n_valid[:, None]  # [B, k]
        with np.errstate(divide="ignore", invalid="ignore"):
            uniform = np.where(n_valid > 0, eps / n_valid, 0.0)
        table += (filled[:, :, None] & valid[:, None, :]) * uniform[:, None, None]
        rows, slots = np.nonzero(greedy >= 0)
        table[rows, slots, greedy[rows, slots]] += 1.0 - eps
        return table

    # --------------------------------------------------------------- Thompson

    def _cholesky(self) -> np.ndarray:
        if self._chol is None:
            self._chol = np.linalg.cholesky(self._A_inv)
        return self._chol

    def sample_theta(
        self, seeds: np.ndarray, *, scale: float = 1.0, draws: int = 1, first_draw: int = 0
    ) -> np.ndarray:
        """Posterior draws ``theta ~ N(theta_hat, scale^2 A^-1)``: float64[B, draws, d].

        seeds: uint64[B]. Draw j of a row uses counters ``[2 p j, 2 p (j + 1))`` of the
        row's stream, ``p = ceil(d / 2)`` (Box-Muller: each pair of uniforms gives two
        normals), so draw 0 is the served draw and draws 1, 2, ... are independent of
        it. ``first_draw`` offsets j.
        """
        if np.ndim(seeds) != 1:
            raise ValueError(f"seeds must have shape [B], got shape {np.shape(seeds)}")
        seeds = check_seeds(seeds, len(seeds))
        scale = _check_positive(scale, "scale", allow_zero=True)
        draws = _check_int(draws, "draws", 0)
        first_draw = _check_int(first_draw, "first_draw", 0)
        d = self.dim
        pairs = (d + 1) // 2
        keys = rng.row_keys(seeds)[:, None, None]
        j = np.arange(first_draw, first_draw + draws, dtype=np.uint64)[None, :, None]
        q = np.arange(pairs, dtype=np.uint64)[None, None, :]
        base = np.uint64(2 * pairs) * j + np.uint64(2) * q
        radius = np.sqrt(-2.0 * np.log(rng.uniforms(keys, base)))
        angle = (2.0 * np.pi) * rng.uniforms(keys, base + np.uint64(1))
        z = np.empty((seeds.shape[0], draws, 2 * pairs))
        z[:, :, 0::2] = radius * np.cos(angle)
        z[:, :, 1::2] = radius * np.sin(angle)
        return self._theta + scale * (z[:, :, :d] @ self._cholesky().T)

    def thompson_slate(
        self,
        x: np.ndarray,
        k: int,
        *,
        seeds: np.ndarray,
        scale: float = 1.0,
        mask: np.ndarray | None = None,
        propensity_draws: int = 1000,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Linear Thompson sampling: one posterior draw per row, then its top-k.

        Args:
            x: float[B, N, d]; k >= 0; seeds: uint64[B]; scale >= 0: the posterior's
            standard-deviation multiplier (``v``; 0 = greedy on the mean); mask:
            bool[B, N] or None; propensity_draws: M >= 1 Monte Carlo draws per row for
            the propensities, or 0 to skip them (NaN).

        Returns:
            ``(indices: int64[B, k], propensities: float64[B, k])``. Propensities are
            Monte Carlo **estimates**, not exact: ``(c + 1) / (M + 1)`` where c counts
            the M extra draws (draws 1..M of the row's stream) that put the chosen item
            at the same slot; biased up by at most ``1 / (M + 1)``, standard error about
            ``sqrt(p (1 - p) / M)``. Cost O(M N d) per row. Padding: -1 / NaN.
        """
        x = self._check_x(x)
        k = _check_int(k, "k", 0)
        draws = _check_int(propensity_draws, "propensity_draws", 0)
        seeds = check_seeds(seeds, x.shape[0])
        theta = self.sample_theta(seeds, scale=scale)[:, 0, :]
        scores = np.einsum("bnd,bd->bn", x, theta).astype(np.float32)
        indices, _ = topk(scores, k, mask)
        props = np.full(indices.shape, np.nan)
        if draws == 0 or k == 0 or indices.size == 0:
            return indices, props
        counts = self._mc_counts(x, k, seeds, scale, mask, draws, first_draw=1)
        chosen = indices >= 0
        rows, slots = np.nonzero(chosen)
        got = counts[rows, slots, indices[rows, slots]]
        props[rows, slots] = (got + 1.0) / (draws + 1.0)
        return indices, props

    def thompson_slot_probabilities(
        self,
        x: np.ndarray,
        k: int,
        *,
        seeds: np.ndarray,
        scale: float = 1.0,
        mask: np.ndarray | None = None,
        draws: int = 1000,
    ) -> np.ndarray:
        """Monte Carlo estimate of the Thompson slate's propensity table: float64[B, k, N].

        ``[b, s, n]`` = the fraction of ``draws`` posterior draws (draws 1..M of row b's
        stream, as ``thompson_slate`` uses) that rank n at slot s; each slot below the
        row's valid count sums to 1 over n.
        """
        x = self._check_x(x)
        k = _check_int(k, "k", 0)
        draws = _check_int(draws, "draws", 1)
        seeds = check_seeds(seeds, x.shape[0])
        return self._mc_counts(x, k, seeds, scale, mask, draws, first_draw=1) / draws

    def _mc_counts(
        self,
        x: np.ndarray,
        k: int,
        seeds: np.ndarray,
        scale: float,
        mask: np.ndarray | None,
        draws: int,
        first_draw: int,
    ) -> np.ndarray:
        """float64[B, k, N]: how many of the draws put each candidate at each slot."""
        n_rows, n_cols, _ = x.shape
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (n_rows, n_cols):
                raise ValueError(f"mask must be bool[{n_rows}, {n_cols}], got {mask.shape}")
        counts = np.zeros((n_rows, k, n_cols))
        chunk = max(1, _MC_CHUNK_CELLS // max(1, n_cols * draws))
        for start in range(0, n_rows, chunk):
            rows = slice(start, min(n_rows, start + chunk))
            theta = self.sample_theta(
                seeds[rows], scale=scale, draws=draws, first_draw=first_draw
            )  # [b, M, d]
            nb = theta.shape[0]
            scores = np.empty((nb, draws, n_cols), dtype=np.float32)
            # One BLAS product per row: einsum over the batch dimension is ~10x slower.
            for r in range(nb):
                np.matmul(theta[r], x[start + r].T, out=scores[r], casting="same_kind")
            flat_mask = None
            if mask is not None:
                flat_mask = np.repeat(mask[rows], draws, axis=0)
            idx, _ = topk(scores.reshape(nb * draws, n_cols), k, flat_mask)
            idx = idx.reshape(nb, draws, k)
            filled = idx >= 0
            r, _, s = np.nonzero(filled)
            cell = (r * k + s) * n_cols + idx[filled]
            counts[rows] += np.bincount(cell, minlength=nb * k * n_cols).reshape(nb, k, n_cols)
        return counts


def _readonly(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view
