"""Mergeable sufficient statistics of logged rows, and the estimates they give.

Every estimator is a function of a few column sums over the rows (``_COLUMNS``) and of
the same sums under each bootstrap replicate. ``row_statistics`` forms them (every
evaluation path ends there), ``OPEStatistics`` holds and merges them (across chunks,
processes and Ray blocks: sums of parts are sums of the whole), ``summarize`` turns them
into estimates with percentile intervals, Kish's effective sample size and warnings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from nudgeserve.kernels import poisson_bootstrap_sums
from nudgeserve.models.errors import InvalidLogs
from nudgeserve.models.evaluation.ope._checks import check_settings

ESTIMATORS: tuple[str, ...] = ("ips", "clipped_ips", "snips", "dm", "dr", "sndr")
REQUIRES_REWARD_MODEL: frozenset[str] = frozenset({"dm", "dr", "sndr"})

# A weight of 20 means the evaluation policy takes that action 20x more often than the
# logger did; beyond that one row can dominate the mean. Choose per application.
DEFAULT_MAX_WEIGHT = 20.0
DEFAULT_N_BOOTSTRAP = 1000
# Warn when Kish's ESS is below this many rows, or below this fraction of n: with fewer
# effective rows a handful of decisions decide the estimate.
DEFAULT_MIN_ESS = 100.0
DEFAULT_MIN_ESS_FRACTION = 0.01
# The mean importance weight has expectation exactly 1 under full support and correct
# propensities; a deviation of this many bootstrap standard errors flags one or the other
# (4 sd: a false alarm about once in 16,000 evaluations of sound logs).
_MEAN_WEIGHT_Z = 4.0
# Below this many rows with weight and a nonzero reward (clicks the evaluation policy
# would also have shown), percentile intervals are known to undercover: say so.
_MIN_HITS = 10


class OPEResult(msgspec.Struct, frozen=True, kw_only=True):
    """One estimator's estimate of the evaluation policy's value (mean reward per row).

    ci_low / ci_high: percentile bootstrap interval at ``confidence``.
    ess: Kish's effective sample size of the importance weights the estimator uses
        (``n`` for ``dm`` and ``on_policy``, which weight every row equally).
    max_weight: the largest importance weight it used (after clipping, for clipped IPS).
    warnings: reasons not to trust the number (weak overlap, missing support, ...).
    """

    estimator: str
    estimate: float
    ci_low: float
    ci_high: float
    confidence: float
    ess: float
    n: int
    max_weight: float
    warnings: tuple[str, ...] = ()


# Per-row sufficient statistics. Every estimator is a function of their sums (and of the
# same sums under each bootstrap replicate), which is what lets partial sums merge.
_COLUMNS = ("n", "w", "w2", "wr", "cw", "cw2", "cwr", "dm", "wres", "clipped", "r", "hits")
_C = {name: index for index, name in enumerate(_COLUMNS)}
_K = len(_COLUMNS)
# The columns the interval computations read; the bootstrap (the dominant cost) sums only
# these and leaves the other replicate sums at 0.
_BOOT_COLUMNS = np.array([_C[c] for c in ("n", "w", "wr", "cwr", "dm", "wres", "r")])


@dataclass
class OPEStatistics:
    """Mergeable sums from which ``summarize`` computes every estimate.

    sums: float64[K] column sums of the per-row statistics (see ``_COLUMNS``).
    boot_sums: float64[n_bootstrap, K] the same sums under each bootstrap replicate.
    weight_max: the largest importance weight seen.
    logged_counts / eval_mass: float64[P, A] rows logged per (position, action) and the
        evaluation policy's total probability per (position, action); None when the
        candidate lists differ between rows (then action indices name no fixed catalog).
    unsupported_mass: total evaluation-policy probability on actions the logging
        distribution gives 0 (nan when the logging distribution is unknown).
    has_reward_model / max_weight / n_bootstrap / seed: the settings, which must agree
        for statistics to merge.
    """

    sums: np.ndarray
    boot_sums: np.ndarray
    weight_max: float
    logged_counts: np.ndarray | None
    eval_mass: np.ndarray | None
    unsupported_mass: float
    has_reward_model: bool
    max_weight: float
    n_bootstrap: int
    seed: int

    @property
    def n(self) -> int:
        return int(round(self.sums[_C["n"]]))

    def merge(self, other: OPEStatistics) -> OPEStatistics:
        """Statistics of the union of both row sets (their settings must agree)."""
        for name in ("has_reward_model", "max_weight", "n_bootstrap", "seed"):
            if getattr(self, name) != getattr(other, name):
                raise InvalidLogs(
                    f"cannot merge statistics with different {name}: "
                    f"{getattr(self, name)!r} vs {getattr(other, name)!r}"
                )
        logged = mass = None
        if (
            self.eval_mass is not None
            and other.eval_mass is not None
            and self.eval_mass.shape[1] == other.eval_mass.shape[1]
        ):
            n_pos = max(self.eval_mass.shape[0], other.eval_mass.shape[0])
            logged = _pad_rows(self.logged_counts, n_pos) + _pad_rows(other.logged_counts, n_pos)
            mass = _pad_rows(self.eval_mass, n_pos) + _pad_rows(other.eval_mass, n_pos)
        return OPEStatistics(
            sums=self.sums + other.sums,
            boot_sums=self.boot_sums + other.boot_sums,
            weight_max=max(self.weight_max, other.weight_max),
            logged_counts=logged,
            eval_mass=mass,
            unsupported_mass=self.unsupported_mass + other.unsupported_mass,
            has_reward_model=self.has_reward_model,
            max_weight=self.max_weight,
            n_bootstrap=self.n_bootstrap,
            seed=self.seed,
        )

    def to_bytes(self) -> bytes:
        """A compact msgpack encoding (how partial statistics travel between processes)."""
        payload = {
            "sums": _array_payload(self.sums),
            "boot_sums": _array_payload(self.boot_sums),
            "logged_counts": _array_payload(self.logged_counts),
            "eval_mass": _array_payload(self.eval_mass),
            "weight_max": self.weight_max,
            "unsupported_mass": self.unsupported_mass,
            "has_reward_model": self.has_reward_model,
            "max_weight": self.max_weight,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
        }
        return msgspec.msgpack.encode(payload)

    @classmethod
    def from_bytes(cls, data: bytes) -> OPEStatistics:
        payload = msgspec.msgpack.decode(data)
        return cls(
            sums=_array_from_payload(payload["sums"]),
            boot_sums=_array_from_payload(payload["boot_sums"]),
            logged_counts=_array_from_payload(payload["logged_counts"]),
            eval_mass=_array_from_payload(payload["eval_mass"]),
            weight_max=float(payload["weight_max"]),
            unsupported_mass=float(payload["unsupported_mass"]),
            has_reward_model=bool(payload["has_reward_model"]),
            max_weight=float(payload["max_weight"]),
            n_bootstrap=int(payload["n_bootstrap"]),
            seed=int(payload["seed"]),
        )


def _array_payload(a: np.ndarray | None) -> dict[str, Any] | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a, dtype=np.float64)
    return {"shape": list(a.shape), "data": a.tobytes()}


def _array_from_payload(p: dict[str, Any] | None) -> np.ndarray | None:
    if p is None:
        return None
    return np.frombuffer(p["data"], dtype=np.float64).reshape(p["shape"]).copy()


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, a.shape[1]), dtype=np.float64)
    out[: a.shape[0]] = a
    return out


def row_statistics(
    *,
    rewards: np.ndarray,
    propensities: np.ndarray,
    pi_logged: np.ndarray,
    keys: np.ndarray,
    dm: np.ndarray | None,
    q_logged: np.ndarray | None,
    support: tuple[np.ndarray, np.ndarray] | None,
    unsupported_mass: float,
    max_weight: float,
    n_bootstrap: int,
    seed: int,
) -> OPEStatistics:
    """The one place per-row statistics are formed (every evaluation path ends here).

    rewards, propensities: float64[n]; pi_logged: float64[n] the evaluation policy's
    probability of the logged action; keys: uint64[n]; dm: float64[n] sum_a pi(a) q(a)
    per row and q_logged: float64[n] q of the logged action (both None without a model);
    support: (logged_counts, eval_mass) float64[P, A] or None.
    """
    n = rewards.shape[0]
    w = pi_logged / propensities
    cw = np.minimum(w, max_weight)
    stats = np.zeros((n, _K), dtype=np.float64)
    stats[:, _C["n"]] = 1.0
    stats[:, _C["w"]] = w
    stats[:, _C["w2"]] = w * w
    stats[:, _C["wr"]] = w * rewards
    stats[:, _C["cw"]] = cw
    stats[:, _C["cw2"]] = cw * cw
    stats[:, _C["cwr"]] = cw * rewards
    stats[:, _C["clipped"]] = w > max_weight
    stats[:, _C["r"]] = rewards
    stats[:, _C["hits"]] = (w > 0) & (rewards != 0)
    if dm is not None and q_logged is not None:
        stats[:, _C["dm"]] = dm
        stats[:, _C["wres"]] = w * (rewards - q_logged)
    return OPEStatistics(
        sums=stats.sum(axis=0),
        boot_sums=_replicate_sums(keys, stats, n_bootstrap, seed),
        weight_max=float(w.max()) if n else 0.0,
        logged_counts=None if support is None else support[0],
        eval_mass=None if support is None else support[1],
        unsupported_mass=unsupported_mass,
        has_reward_model=dm is not None,
        max_weight=float(max_weight),
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
    )


def _replicate_sums(keys: np.ndarray, stats: np.ndarray, n_bootstrap: int, seed: int):
    """float64[n_bootstrap, K]: bootstrap sums of the ``_BOOT_COLUMNS`` of ``stats``."""
    out = np.zeros((n_bootstrap, stats.shape[1]), dtype=np.float64)
    out[:, _BOOT_COLUMNS] = poisson_bootstrap_sums(keys, stats[:, _BOOT_COLUMNS], n_bootstrap, seed)
    return out


def support_counts(
    positions: np.ndarray, actions: np.ndarray, eval_probs: np.ndarray, n_positions: int
) -> tuple[np.ndarray, np.ndarray]:
    """(logged_counts, eval_mass) float64[P, A] from eval_probs: float64[n, A]."""
    n_actions = eval_probs.shape[1]
    logged = np.bincount(positions * n_actions + actions, minlength=n_positions * n_actions)
    mass = np.zeros((n_positions, n_actions), dtype=np.float64)
    np.add.at(mass, positions, eval_probs)
    return logged.reshape(n_positions, n_actions).astype(np.float64), mass


def divide_or_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def _estimate(name: str, s: np.ndarray) -> np.ndarray:
    """The estimator ``name`` as a function of sums ``s: float64[..., K]``."""

    def col(c: str) -> np.ndarray:
        return s[..., _C[c]]

    if name == "ips":
        return divide_or_nan(col("wr"), col("n"))
    if name == "clipped_ips":
        return divide_or_nan(col("cwr"), col("n"))
    if name == "snips":
        return divide_or_nan(col("wr"), col("w"))
    if name == "dm":
        return divide_or_nan(col("dm"), col("n"))
    if name == "dr":
        return divide_or_nan(col("dm") + col("wres"), col("n"))
    if name == "sndr":
        return divide_or_nan(col("dm"), col("n")) + divide_or_nan(col("wres"), col("w"))
    if name == "on_policy":
        return divide_or_nan(col("r"), col("n"))
    raise InvalidLogs(f"unknown estimator {name!r}; choose from {ESTIMATORS}")


def _ess(total: float, total_sq: float) -> float:
    return total * total / total_sq if total_sq > 0 else 0.0


def estimator_names(estimators: Sequence[str] | None, has_model: bool) -> tuple[str, ...]:
    if estimators is None:
        return tuple(e for e in ESTIMATORS if has_model or e not in REQUIRES_REWARD_MODEL)
    names = (estimators,) if isinstance(estimators, str) else tuple(estimators)
    unknown = [e for e in names if e not in ESTIMATORS]
    if unknown or not names:
        raise InvalidLogs(f"estimators must be names from {ESTIMATORS}, got {list(names)}")
    needing = [e for e in names if e in REQUIRES_REWARD_MODEL]
    if needing and not has_model:
        raise InvalidLogs(f"reward_hat is required for estimators {needing}")
    return names


def summarize(
    stats: OPEStatistics,
    estimators: Sequence[str] | None = None,
    *,
    confidence: float = 0.95,
    min_ess: float = DEFAULT_MIN_ESS,
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
) -> dict[str, OPEResult]:
    """Estimates, intervals, ESS and warnings from (possibly merged) statistics.

    estimators: names from ``ESTIMATORS`` (default: every one the statistics support;
    the model-based ones need a reward model). Returns {estimator: OPEResult}.
    """
    check_settings(stats.n_bootstrap, stats.max_weight, confidence)
    names = estimator_names(estimators, stats.has_reward_model)
    s, n = stats.sums, stats.n
    if n == 0:
        raise InvalidLogs("there are no rows to evaluate")
    tail = 100.0 * (1.0 - confidence) / 2.0
    shared = _shared_warnings(stats)
    results = {}
    for name in names:
        warns: list[str] = []
        if name == "dm":
            ess, wmax = float(n), 1.0
        elif name == "clipped_ips":
            ess = _ess(s[_C["cw"]], s[_C["cw2"]])
            wmax = min(stats.weight_max, stats.max_weight)
            n_clipped = int(round(s[_C["clipped"]]))
            if n_clipped:
                warns.append(
                    f"{n_clipped} rows ({100.0 * n_clipped / n:.2g}%) had weights above "
                    f"max_weight={stats.max_weight:g} and were clipped: the estimate is "
                    "biased toward 0"
                )
        else:
            ess = _ess(s[_C["w"]], s[_C["w2"]])
            wmax = stats.weight_max
        if name != "dm":
            warns = _overlap_warnings(ess, n, min_ess, min_ess_fraction) + warns + shared
            hits = int(round(s[_C["hits"]]))
            if hits < _MIN_HITS:
                warns.append(
                    f"only {hits} rows carry both weight and a nonzero reward: the estimate "
                    "rests on a handful of events and the bootstrap interval understates "
                    "its uncertainty"
                )
        low, high, undefined = percentile_interval(_estimate(name, stats.boot_sums), tail)
        if undefined:
            warns.append(
                f"{undefined} of {stats.n_bootstrap} bootstrap replicates had no weight: "
                "the interval is unreliable"
            )
        results[name] = OPEResult(
            estimator=name,
            estimate=float(_estimate(name, s)),
            ci_low=low,
            ci_high=high,
            confidence=float(confidence),
            ess=float(ess),
            n=n,
            max_weight=float(wmax),
            warnings=tuple(warns),
        )
    return results


def logging_policy_value(stats: OPEStatistics, *, confidence: float = 0.95) -> OPEResult:
    """The logging policy's own value (mean logged reward) from the same statistics."""
    check_settings(stats.n_bootstrap, stats.max_weight, confidence)
    n = stats.n
    if n == 0:
        raise InvalidLogs("there are no rows to evaluate")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high, _ = percentile_interval(_estimate("on_policy", stats.boot_sums), tail)
    return OPEResult(
        estimator="on_policy",
        estimate=float(_estimate("on_policy", stats.sums)),
        ci_low=low,
        ci_high=high,
        confidence=float(confidence),
        ess=float(n),
        n=n,
        max_weight=1.0,
    )


def percentile_interval(replicates: np.ndarray, tail: float) -> tuple[float, float, int]:
    finite = replicates[np.isfinite(replicates)]
    if not finite.size:
        return math.nan, math.nan, int(replicates.size)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high), int(replicates.size - finite.size)


def _overlap_warnings(ess: float, n: int, min_ess: float, min_fraction: float) -> list[str]:
    if ess < min_ess or ess < min_fraction * n:
        return [
            f"weak overlap: effective sample size {ess:.1f} of {n} rows (warning below "
            f"{min_ess:g} or {100.0 * min_fraction:g}% of rows); a few decisions drive "
            "the estimate"
        ]
    return []


def _shared_warnings(stats: OPEStatistics) -> list[str]:
    """Support and propensity diagnostics that concern every weighted estimator."""
    n = stats.n
    out = []
    if not math.isnan(stats.unsupported_mass) and stats.unsupported_mass > 0:
        share = stats.unsupported_mass / n
        out.append(
            f"missing support: the evaluation policy puts {100.0 * share:.3g}% of its "
            "probability on actions the logging policy never takes; weighted estimates "
            "cannot see their reward"
        )
    if stats.eval_mass is not None:
        never = stats.eval_mass * (stats.logged_counts == 0)
        share = float(never.sum()) / n
        if share > 1e-9:
            out.append(
                f"{100.0 * share:.3g}% of the evaluation policy's probability is on "
                f"{int(np.count_nonzero(never))} (position, action) pair(s) never seen in the logs"
            )
    mean_w = stats.sums[_C["w"]] / n
    replicate_mean_w = divide_or_nan(stats.boot_sums[:, _C["w"]], stats.boot_sums[:, _C["n"]])
    sd = float(np.nanstd(replicate_mean_w))
    if sd > 0 and abs(mean_w - 1.0) > _MEAN_WEIGHT_Z * sd:
        out.append(
            f"mean importance weight is {mean_w:.4g} (bootstrap sd {sd:.2g}), not 1: the "
            "logged propensities may be wrong or the logger lacks support"
        )
    return out
