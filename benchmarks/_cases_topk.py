"""Benchmark cases for masked top-k and the exploration samplers.

Top-k: every backend of ``topk`` against ``np.argpartition`` + sort of the k (checked to
return the same sorted top-k per row) and ``torch.topk``. Samplers: every backend against
the loop a NumPy user would write (one ``np.random.Generator`` per row, propensities
included). Inputs are built once, outside the timed callables.
"""

from __future__ import annotations

import numpy as np

from benchmarks._timing import Case
from nudgeserve.kernels import REGISTRY, get_num_threads

TOPK_SHAPES = ((256, 1000, 10), (1, 100_000, 10), (4096, 80, 3))
SAMPLER_SHAPE = (4096, 80, 3)  # the serving shape
THOMPSON_ROWS, THOMPSON_ARMS, THOMPSON_K, MC_DRAWS = 1024, 80, 3, 2000


def argpartition_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted top-k per row with NumPy: argpartition, then sort the k (ties by index)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=-1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)


def _topk_cases() -> list[Case]:
    import torch

    rng = np.random.default_rng(0)
    cases = []
    for rows, cols, k in TOPK_SHAPES:
        scores = rng.standard_normal((rows, cols)).astype(np.float32)
        tensor = torch.from_numpy(scores)
        group = f"topk float32[{rows},{cols}] k={k}"
        want_idx, want_val = argpartition_topk(scores, k)
        for backend, impl in REGISTRY.implementations("topk").items():
            got_idx, got_val = impl(scores, k, None, 1)
            if not (np.array_equal(got_idx, want_idx) and np.array_equal(got_val, want_val)):
                raise AssertionError(f"{group}: {backend} disagrees with argpartition+sort")
            cases.append(Case(group, backend, _bind_topk(impl, scores, k)))
        cases.append(
            Case(group, "np.argpartition+sort", lambda s=scores, k=k: argpartition_topk(s, k), True)
        )
        cases.append(Case(group, "torch.topk", lambda t=tensor, k=k: torch.topk(t, k, dim=1), True))
    return cases


def _bind_topk(impl, scores, k):
    # The thread count is read at call time: the harness sets it before each pass.
    return lambda: impl(scores, k, None, get_num_threads())


# -- samplers ------------------------------------------------------------------------------


def epsilon_greedy_loop(scores, k, epsilon, seeds, mask):
    """Row by row, one Generator per row: what the kernels replace."""
    n_rows = scores.shape[0]
    indices = np.full((n_rows, k), -1, dtype=np.int64)
    props = np.full((n_rows, k), np.nan)
    for r in range(n_rows):
        rng = np.random.default_rng(int(seeds[r]))
        valid = np.flatnonzero(~mask[r] & ~np.isnan(scores[r]))
        greedy = valid[np.argsort(-scores[r, valid], kind="stable")[:k]]
        chosen = rng.choice(valid, len(greedy), replace=False) if rng.random() < epsilon else greedy
        indices[r, : len(chosen)] = chosen
        props[r, : len(chosen)] = (1 - epsilon) * (chosen == greedy) + epsilon / len(valid)
    return indices, props


def plackett_luce_loop(scores, k, temperature, seeds, mask):
    n_rows = scores.shape[0]
    indices = np.full((n_rows, k), -1, dtype=np.int64)
    props = np.full((n_rows, k), np.nan)
    for r in range(n_rows):
        rng = np.random.default_rng(int(seeds[r]))
        remaining = list(np.flatnonzero(~mask[r] & ~np.isnan(scores[r])))
        for s in range(min(k, len(remaining))):
            z = scores[r, remaining].astype(np.float64) / temperature
            w = np.exp(z - z.max())
            p = w / w.sum()
            j = rng.choice(len(remaining), p=p)
            indices[r, s] = remaining.pop(j)
            props[r, s] = p[j]
    return indices, props


def thompson_draw_loop(alpha, beta, k, seeds, mask):
    n_rows = seeds.shape[0]
    indices = np.full((n_rows, k), -1, dtype=np.int64)
    for r in range(n_rows):
        rng = np.random.default_rng(int(seeds[r]))
        theta = rng.beta(alpha[0], beta[0])
        theta[mask[r]] = -np.inf
        best = np.argsort(-theta, kind="stable")[:k]
        indices[r, : len(best)] = best
    return indices


def thompson_table_monte_carlo(alpha, beta, k, n_draws):
    """Every slot by Monte Carlo with NumPy's Beta sampler (no quadrature)."""
    rng = np.random.default_rng(0)
    n_arms = alpha.shape[1]
    ranked = np.argsort(-rng.beta(alpha[0], beta[0], (n_draws, n_arms)), axis=1)[:, :k]
    return np.stack([np.bincount(ranked[:, s], minlength=n_arms) / n_draws for s in range(k)])


def _sampler_cases() -> list[Case]:
    rng = np.random.default_rng(1)
    rows, cols, k = SAMPLER_SHAPE
    scores = rng.standard_normal((rows, cols)).astype(np.float32)
    mask = rng.random((rows, cols)) < 0.1
    seeds = np.arange(rows, dtype=np.uint64)
    cases = []
    for op, param, loop in (
        ("epsilon_greedy_slate", 0.1, epsilon_greedy_loop),
        ("plackett_luce_slate", 1.0, plackett_luce_loop),
    ):
        group = f"{op} float32[{rows},{cols}] k={k}"
        for backend, impl in REGISTRY.implementations(op).items():
            cases.append(Case(group, backend, _bind_sampler(impl, scores, k, param, seeds, mask)))
        cases.append(
            Case(
                group,
                "numpy loop (Generator per row)",
                lambda f=loop, p=param: f(scores, k, p, seeds, mask),
                True,
            )
        )

    alpha = 1.0 + rng.poisson(20.0, (1, THOMPSON_ARMS)).astype(np.float64)
    beta = 1.0 + rng.poisson(400.0, (1, THOMPSON_ARMS)).astype(np.float64)
    t_seeds = np.arange(THOMPSON_ROWS, dtype=np.uint64)
    t_mask = rng.random((THOMPSON_ROWS, THOMPSON_ARMS)) < 0.1
    group = f"thompson_draw Beta[{THOMPSON_ROWS},{THOMPSON_ARMS}] shared k={THOMPSON_K}"
    for backend, impl in REGISTRY.implementations("thompson_draw").items():
        cases.append(
            Case(
                group,
                backend,
                lambda f=impl: f(alpha, beta, THOMPSON_K, t_seeds, t_mask, get_num_threads()),
            )
        )
    cases.append(
        Case(
            group,
            "numpy loop (Generator per row)",
            lambda: thompson_draw_loop(alpha, beta, THOMPSON_K, t_seeds, t_mask),
            True,
        )
    )
    # Ours is exact quadrature (~1e-7); the baseline a 2000-draw Monte Carlo estimate
    # (standard error up to 0.011): cheaper per call, far less accurate.
    group = f"thompson propensity table {THOMPSON_ARMS} arms k={THOMPSON_K}"
    valid = np.ones((1, THOMPSON_ARMS), dtype=bool)
    for backend, impl in REGISTRY.implementations("thompson_slot_probabilities").items():
        cases.append(
            Case(
                group,
                f"{backend} (quadrature)",
                lambda f=impl: f(alpha, beta, valid, THOMPSON_K, get_num_threads()),
            )
        )
    cases.append(
        Case(
            group,
            f"numpy Monte Carlo ({MC_DRAWS} draws)",
            lambda: thompson_table_monte_carlo(alpha, beta, THOMPSON_K, MC_DRAWS),
            True,
        )
    )
    return cases


def _bind_sampler(impl, scores, k, param, seeds, mask):
    return lambda: impl(scores, k, param, seeds, mask, get_num_threads())


def cases() -> list[Case]:
    return _topk_cases() + _sampler_cases()
