"""Off-policy evaluation (OPE): what a new policy would earn, estimated from logged decisions.

Logged bandit feedback is one row per decision (per slot, for slates), made by a *logging*
policy that recorded the probability (propensity) of what it chose. Given an *evaluation*
policy's action probabilities for the same rows, the estimators here estimate that
policy's value: its expected reward per row.

Arrays (``n`` rows, ``A`` actions, ``P`` positions):

- ``actions: int64[n]`` the logged action (index into the ``A`` candidates).
- ``rewards: float64[n]`` the observed reward (a click: 0/1).
- ``propensities: float64[n]`` the logging policy's probability of ``actions[i]`` (at
  ``positions[i]``), in ``(0, 1]``.
- ``action_dist: float64[n, A]`` the evaluation policy's distribution over actions per
  row, or ``float64[n, A, P]`` per position (like obp's ``action_dist``); then
  ``positions: int64[n]`` (0-based) says which position each row is.
- ``reward_hat: float64[n, A]`` / ``[n, A, P]`` a reward model's prediction for every
  action (needed by DM, DR and SNDR).
- ``logging_dist`` (optional), shaped like ``action_dist``: the logging policy's full
  distribution, used to detect evaluation-policy mass on actions it never takes.

Estimators (``w = pi(a_i) / propensities[i]``, ``q`` = ``reward_hat``):

- ``ips``: mean(w r). Unbiased when the logger covers the evaluation policy's support.
- ``clipped_ips``: mean(min(w, max_weight) r). Less variance; biased toward 0 (r >= 0).
- ``snips``: sum(w r) / sum(w). Self-normalized: slightly biased, consistent, in range.
- ``dm``: mean over rows of sum_a pi(a) q(a). As good as the reward model.
- ``dr``: dm + mean(w (r - q(a_i))). Unbiased if either the propensities or q are right.
- ``sndr``: dm + sum(w (r - q(a_i))) / sum(w).

Every estimate comes with a percentile bootstrap interval, Kish's effective sample size
``(sum w)^2 / sum w^2`` and warnings when overlap is too weak to trust the number.

The bootstrap is the Poisson bootstrap (each row enters each replicate a Poisson(1)
number of times) with counts drawn from a hash of ``(seed, row key, replicate)`` instead
of a sequential RNG. Every estimator is a function of a few sums over rows, and these
sums (point and per replicate) merge across any partitioning of the rows: the distributed
evaluator (``nudgeserve.serve.ray.ope_data``) reproduces this module's estimates and
intervals when both key the rows by decision id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numba
import numpy as np

from nudgeserve.models.errors import ModelError

__all__ = [
    "ESTIMATORS",
    "OPE_LOG_COLUMNS",
    "REQUIRES_REWARD_MODEL",
    "InvalidLogs",
    "InvalidLogsType",
    "LogColumn",
    "OPELogs",
    "OPEResult",
    "OPEStatistics",
    "RaggedRows",
    "bernoulli_ts_dist",
    "bootstrap_sums",
    "clipped_ips",
    "decision_keys",
    "direct_method",
    "doubly_robust",
    "empirical_slot_dist",
    "evaluate",
    "evaluate_logs",
    "greedy_slate_dist",
    "ips",
    "logs_from_table",
    "logs_statistics",
    "logs_to_table",
    "logging_policy_value",
    "on_policy_value",
    "parquet_columns",
    "parquet_files",
    "plackett_luce_dist",
    "poisson_bootstrap_counts",
    "read_logs_parquet",
    "sn_doubly_robust",
    "snips",
    "summarize",
    "validate_settings",
]

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
_SUM_TOLERANCE = 1e-6
# Below this many rows with weight and a nonzero reward (clicks the evaluation policy
# would also have shown), percentile intervals are known to undercover: say so.
_MIN_HITS = 10
# Rows x replicates below which the bootstrap kernel runs on one thread.
_PARALLEL_MIN_CELLS = 1 << 20
# Rows per chunk times replicates (or actions) bounds the arrays built at once (~32 MiB).
_CHUNK_CELLS = 1 << 22


class InvalidLogs(ModelError, ValueError):
    """Logged data or an evaluation policy has a bad shape or value; the message names it."""


class InvalidLogsType(ModelError, TypeError):
    """Logged data has the wrong type or dtype; the message names the argument."""


class LogColumn(msgspec.Struct, frozen=True):
    """One column of the joined decisions+outcomes Parquet export that OPE reads."""

    name: str
    arrow_type: str
    required: bool
    doc: str


# The Parquet schema ``nudgeserve export`` writes and ``nudgeserve evaluate parquet`` reads:
# one row per logged decision (per slot for slates) joined with its outcome, plus the
# evaluation policy's distribution over that row's candidates at that row's position.
# List columns of one row have the same length (its number of candidates, which may
# differ between rows).
OPE_LOG_COLUMNS: tuple[LogColumn, ...] = (
    LogColumn(
        "decision_id",
        "string",
        True,
        "id of the decision; the slots of one decision share it. Keys the bootstrap, "
        "which therefore resamples whole decisions (a cluster bootstrap)",
    ),
    LogColumn(
        "action", "int64", True, "the logged action: an index into this row's candidate list"
    ),
    LogColumn("position", "int64", True, "0-based slot of the action (0 for single slots)"),
    LogColumn("reward", "float64", True, "the joined outcome (click 0/1, or a value)"),
    LogColumn(
        "propensity",
        "float64",
        True,
        "logging policy's probability of this action at this position, in (0, 1]",
    ),
    LogColumn(
        "eval_probs",
        "list<float64>",
        True,
        "evaluation policy's probability of each candidate at this position",
    ),
    LogColumn(
        "reward_hat",
        "list<float64>",
        False,
        "reward model's prediction for each candidate (needed by dm, dr, sndr)",
    ),
    LogColumn(
        "logging_probs",
        "list<float64>",
        False,
        "logging policy's probability of each candidate (support diagnostics)",
    ),
)


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


# ---------------------------------------------------------------------------------------
# Counter-based Poisson(1) bootstrap counts

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 arrays (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _poisson1_thresholds() -> np.ndarray:
    """uint64 thresholds T_k = 2^64 * P(X <= k), X ~ Poisson(1), for k while the tail > 2^-64.

    A uniform 64-bit word z then maps to the count ``#{k : z >= T_k}``. Tails are summed
    directly (not 1 - cdf) so the thresholds near 2^64 keep their precision.
    """
    pmf = [math.exp(-1.0) / math.factorial(j) for j in range(40)]
    thresholds = []
    for k in range(40):
        tail = sum(pmf[k + 1 :])
        if tail * 2.0**64 < 1.0:
            break
        thresholds.append(2**64 - max(1, round(tail * 2.0**64)))
    return np.array(thresholds, dtype=np.uint64)


_POISSON1 = _poisson1_thresholds()


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
        raise InvalidLogs(f"seed must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


def _row_hashes(keys: np.ndarray, seed: int) -> np.ndarray:
    """uint64[n]: each row key mixed with the seed (the per-row half of the counter)."""
    seed_word = _splitmix64(np.array([_check_seed(seed)], dtype=np.uint64))
    return _splitmix64(np.asarray(keys, dtype=np.uint64) ^ seed_word)


def poisson_bootstrap_counts(keys: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """Poisson(1) bootstrap counts, a pure function of ``(seed, key, replicate)``.

    keys: uint64[n] a stable key per row (row index, or ``decision_keys`` of the ids).
    Returns float64[n_bootstrap, n]: count of row ``i`` in replicate ``b``. This is the
    NumPy reference of the fused kernel ``_bootstrap_sums_numba``.
    """
    row_hash = _row_hashes(keys, seed)
    replicate = np.arange(n_bootstrap, dtype=np.uint64) * _GOLDEN
    words = _splitmix64(row_hash[None, :] + replicate[:, None])
    return np.searchsorted(_POISSON1, words, side="right").astype(np.float64)


def _bootstrap_sums_reference(
    keys: np.ndarray, stats: np.ndarray, n_bootstrap: int, seed: int
) -> np.ndarray:
    """float64[n_bootstrap, K]: sum_i count[b, i] * stats[i, :] (NumPy, chunked)."""
    out = np.zeros((n_bootstrap, stats.shape[1]), dtype=np.float64)
    step = max(1, _CHUNK_CELLS // n_bootstrap)
    for start in range(0, stats.shape[0], step):
        counts = poisson_bootstrap_counts(keys[start : start + step], n_bootstrap, seed)
        out += counts @ stats[start : start + step]
    return out


@numba.njit(
    "float64[:, :](uint64[:], float64[:, :], int64, uint64[:])",
    cache=True,
    nogil=True,
    parallel=True,
)
def _bootstrap_sums_numba(row_hash, stats, n_bootstrap, thresholds):  # pragma: no cover
    # Fused counter -> Poisson count -> weighted sum: no [B, n] count matrix in memory.
    # Rows go in cache-sized blocks; replicates run in parallel, each with its own
    # accumulator. The first four thresholds are compared without branches (the count is
    # below 4 for 98% of draws; data-dependent branches there cost more than the compares).
    n, k = stats.shape
    out = np.zeros((n_bootstrap, k), dtype=np.float64)
    n_thresholds = thresholds.shape[0]
    golden = np.uint64(0x9E3779B97F4A7C15)
    mix1 = np.uint64(0xBF58476D1CE4E5B9)
    mix2 = np.uint64(0x94D049BB133111EB)
    t0, t1, t2, t3 = thresholds[0], thresholds[1], thresholds[2], thresholds[3]
    block = 4096
    for start in range(0, n, block):
        stop = min(n, start + block)
        for b in numba.prange(n_bootstrap):
            acc = np.zeros(k, dtype=np.float64)
            offset = np.uint64(b) * golden + golden
            for i in range(start, stop):
                z = row_hash[i] + offset
                z = (z ^ (z >> np.uint64(30))) * mix1
                z = (z ^ (z >> np.uint64(27))) * mix2
                z = z ^ (z >> np.uint64(31))
                count = (
                    np.int64(z >= t0) + np.int64(z >= t1) + np.int64(z >= t2) + np.int64(z >= t3)
                )
                if count == 4:
                    while count < n_thresholds and z >= thresholds[count]:
                        count += 1
                c = np.float64(count)
                for j in range(k):
                    acc[j] += c * stats[i, j]
            for j in range(k):
                out[b, j] += acc[j]
    return out


def bootstrap_sums(keys: np.ndarray, stats: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """float64[n_bootstrap, K]: per-replicate sums of ``stats: float64[n, K]``.

    Row ``i`` enters replicate ``b`` ``poisson_bootstrap_counts(keys, ...)[b, i]`` times;
    keys: uint64[n]. The compiled kernel and the NumPy reference agree to rounding.
    """
    stats = np.ascontiguousarray(stats, dtype=np.float64)
    row_hash = _row_hashes(keys, seed)
    threads = numba.get_num_threads()
    if threads > 1 and stats.shape[0] * n_bootstrap < _PARALLEL_MIN_CELLS:
        # Small jobs take milliseconds; waking a thread team costs more than it saves
        # (much more on a busy machine). Numba's thread count is thread-local.
        numba.set_num_threads(1)
        try:
            return _bootstrap_sums_numba(row_hash, stats, int(n_bootstrap), _POISSON1)
        finally:
            numba.set_num_threads(threads)
    return _bootstrap_sums_numba(row_hash, stats, int(n_bootstrap), _POISSON1)


def decision_keys(ids: Sequence[str] | Sequence[bytes] | np.ndarray) -> np.ndarray:
    """uint64[n] bootstrap keys of decision ids (strings, bytes or integers).

    Strings are hashed (64-bit FNV-1a over their UTF-8 bytes, then SplitMix64); the same
    id always gets the same key, on any machine and in any partition.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise InvalidLogs(f"decision ids must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return _splitmix64(arr.astype(np.int64).view(np.uint64))
    if arr.dtype == object:
        if all(isinstance(v, bytes) for v in arr):
            arr = np.array(arr.tolist(), dtype=bytes)
        elif all(isinstance(v, str) for v in arr):
            arr = arr.astype(str)
        else:
            raise InvalidLogsType("decision ids must all be strings, all bytes or ints")
    if arr.dtype.kind == "U":
        arr = np.char.encode(arr, "utf-8")
    if arr.dtype.kind != "S":
        raise InvalidLogsType(f"decision ids must be strings, bytes or ints, got {arr.dtype}")
    width = arr.dtype.itemsize
    if arr.size == 0 or width == 0:
        return _splitmix64(np.zeros(arr.shape[0], dtype=np.uint64))
    raw = np.ascontiguousarray(arr).view(np.uint8).reshape(arr.shape[0], width)
    h = np.full(arr.shape[0], _FNV_OFFSET, dtype=np.uint64)
    for j in range(width):
        h = (h ^ raw[:, j].astype(np.uint64)) * _FNV_PRIME
    # NumPy's fixed-width strings drop trailing NULs, so ids differing only in those
    # (never the case for real decision ids) share a key.
    return _splitmix64(h)


# ---------------------------------------------------------------------------------------
# Validation


def _int_array(name: str, x: object) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise InvalidLogsType(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != 1:
        raise InvalidLogs(f"{name} must be 1-D, got shape {a.shape}")
    return a.astype(np.int64, copy=False)


def _float_array(name: str, x: object, ndim: int | tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise InvalidLogsType(f"{name} must be a numeric array, got dtype {a.dtype}")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in allowed:
        dims = " or ".join(map(str, allowed))
        raise InvalidLogs(f"{name} must have {dims} dimensions, got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise InvalidLogs(f"{name} must be finite (found nan or inf)")
    return a


def _check_propensities(name: str, p: np.ndarray) -> None:
    if p.size and (p.min() <= 0.0 or p.max() > 1.0):
        raise InvalidLogs(
            f"{name} must be in (0, 1]; found values in [{p.min():.6g}, {p.max():.6g}]"
        )


def _check_probabilities(name: str, values: np.ndarray, totals: np.ndarray, first_row: int):
    """values: the probabilities (any shape); totals: their sum per row and position."""
    if values.size and (values.min() < 0.0 or values.max() > 1.0 + _SUM_TOLERANCE):
        raise InvalidLogs(f"{name} must hold probabilities in [0, 1]")
    if totals.size:
        error = np.abs(totals - 1.0)
        if error.max() > _SUM_TOLERANCE:
            bad = np.unravel_index(error.argmax(), totals.shape)
            raise InvalidLogs(
                f"{name} must sum to 1 over actions; row {first_row + int(bad[0])} sums to "
                f"{float(totals[bad]):.6g}"
            )


def _check_settings(n_bootstrap: object, max_weight: object, confidence: object) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer):
        raise InvalidLogsType(f"n_bootstrap must be an int, got {n_bootstrap!r}")
    if n_bootstrap < 2:
        raise InvalidLogs(f"n_bootstrap must be >= 2, got {n_bootstrap}")
    if isinstance(max_weight, bool) or not isinstance(max_weight, int | float):
        raise InvalidLogsType(f"max_weight must be a number, got {max_weight!r}")
    if not max_weight > 0:
        raise InvalidLogs(f"max_weight must be > 0, got {max_weight!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise InvalidLogsType(f"confidence must be a number, got {confidence!r}")
    if not 0.0 < confidence < 1.0:
        raise InvalidLogs(f"confidence must be in (0, 1), got {confidence!r}")


def validate_settings(
    *, n_bootstrap: object, max_weight: object, confidence: object, seed: object
) -> int:
    """Check the evaluation settings (raising errors that name them); returns the seed."""
    _check_settings(n_bootstrap, max_weight, confidence)
    return _check_seed(seed)


def _check_keys(keys: object, n: int) -> np.ndarray:
    if keys is None:
        return np.arange(n, dtype=np.uint64)
    a = np.asarray(keys)
    if a.dtype.kind not in "iu" or a.shape != (n,):
        raise InvalidLogs(
            f"bootstrap_keys must be an integer array of shape ({n},), got {a.dtype} {a.shape}"
        )
    return a.astype(np.uint64, copy=False)


# ---------------------------------------------------------------------------------------
# Statistics


def _statistics(
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
    out[:, _BOOT_COLUMNS] = bootstrap_sums(keys, stats[:, _BOOT_COLUMNS], n_bootstrap, seed)
    return out


def _support_dense(
    positions: np.ndarray, actions: np.ndarray, eval_probs: np.ndarray, n_positions: int
) -> tuple[np.ndarray, np.ndarray]:
    """(logged_counts, eval_mass) float64[P, A] from eval_probs: float64[n, A]."""
    n_actions = eval_probs.shape[1]
    logged = np.bincount(positions * n_actions + actions, minlength=n_positions * n_actions)
    mass = np.zeros((n_positions, n_actions), dtype=np.float64)
    np.add.at(mass, positions, eval_probs)
    return logged.reshape(n_positions, n_actions).astype(np.float64), mass


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1.0), np.nan)


def _estimate(name: str, s: np.ndarray) -> np.ndarray:
    """The estimator ``name`` as a function of sums ``s: float64[..., K]``."""

    def col(c: str) -> np.ndarray:
        return s[..., _C[c]]

    if name == "ips":
        return _divide(col("wr"), col("n"))
    if name == "clipped_ips":
        return _divide(col("cwr"), col("n"))
    if name == "snips":
        return _divide(col("wr"), col("w"))
    if name == "dm":
        return _divide(col("dm"), col("n"))
    if name == "dr":
        return _divide(col("dm") + col("wres"), col("n"))
    if name == "sndr":
        return _divide(col("dm"), col("n")) + _divide(col("wres"), col("w"))
    if name == "on_policy":
        return _divide(col("r"), col("n"))
    raise InvalidLogs(f"unknown estimator {name!r}; choose from {ESTIMATORS}")


def _ess(total: float, total_sq: float) -> float:
    return total * total / total_sq if total_sq > 0 else 0.0


def _estimator_names(estimators: Sequence[str] | None, has_model: bool) -> tuple[str, ...]:
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
    _check_settings(stats.n_bootstrap, stats.max_weight, confidence)
    names = _estimator_names(estimators, stats.has_reward_model)
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
        low, high, undefined = _percentile_interval(_estimate(name, stats.boot_sums), tail)
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
    _check_settings(stats.n_bootstrap, stats.max_weight, confidence)
    n = stats.n
    if n == 0:
        raise InvalidLogs("there are no rows to evaluate")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high, _ = _percentile_interval(_estimate("on_policy", stats.boot_sums), tail)
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


def _percentile_interval(replicates: np.ndarray, tail: float) -> tuple[float, float, int]:
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
    replicate_mean_w = _divide(stats.boot_sums[:, _C["w"]], stats.boot_sums[:, _C["n"]])
    sd = float(np.nanstd(replicate_mean_w))
    if sd > 0 and abs(mean_w - 1.0) > _MEAN_WEIGHT_Z * sd:
        out.append(
            f"mean importance weight is {mean_w:.4g} (bootstrap sd {sd:.2g}), not 1: the "
            "logged propensities may be wrong or the logger lacks support"
        )
    return out


# ---------------------------------------------------------------------------------------
# Estimators on arrays


def evaluate(
    actions: np.ndarray,
    rewards: np.ndarray,
    propensities: np.ndarray,
    action_dist: np.ndarray,
    *,
    positions: np.ndarray | None = None,
    reward_hat: np.ndarray | None = None,
    logging_dist: np.ndarray | None = None,
    estimators: Sequence[str] | None = None,
    max_weight: float = DEFAULT_MAX_WEIGHT,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
    bootstrap_keys: np.ndarray | None = None,
    min_ess: float = DEFAULT_MIN_ESS,
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
) -> dict[str, OPEResult]:
    """Estimate the evaluation policy's value with several estimators on one resampling.

    actions: int64[n]; rewards: float64[n]; propensities: float64[n] in (0, 1].
    action_dist: float64[n, A], or float64[n, A, P] with positions: int64[n] (0-based).
        Broadcast views (``np.broadcast_to``) are fine: rows are read in chunks.
    reward_hat: float64 shaped like action_dist (required for dm, dr, sndr).
    logging_dist: float64 shaped like action_dist (optional: support diagnostics, and
        ``propensities`` must then equal its entry at the logged action).
    estimators: names from ``ESTIMATORS``; default every one the inputs allow.
    max_weight: clipped IPS clips importance weights at this value.
    n_bootstrap / confidence / seed: Poisson bootstrap replicates, the interval's
        coverage and the seed; all estimators share the same replicates.
    bootstrap_keys: uint64[n] stable row keys (``decision_keys(ids)``); default row index.
    min_ess / min_ess_fraction: warn when Kish's ESS falls below either.
    Returns {estimator: OPEResult}.
    """
    _check_settings(n_bootstrap, max_weight, confidence)
    seed = _check_seed(seed)
    actions = _int_array("actions", actions)
    n = actions.shape[0]
    if n == 0:
        raise InvalidLogs("actions is empty: there are no rows to evaluate")
    rewards = _float_array("rewards", rewards, 1)
    propensities = _float_array("propensities", propensities, 1)
    for name, arr in (("rewards", rewards), ("propensities", propensities)):
        if arr.shape[0] != n:
            raise InvalidLogs(f"{name} has {arr.shape[0]} rows but actions has {n}")
    _check_propensities("propensities", propensities)
    dist = _float_array("action_dist", action_dist, (2, 3))
    if dist.shape[0] != n:
        raise InvalidLogs(f"action_dist has {dist.shape[0]} rows but actions has {n}")
    if dist.ndim == 2:
        if positions is not None:
            raise InvalidLogs("positions given but action_dist is 2-D [n, A]; pass [n, A, P]")
        dist = dist[:, :, None]
        positions = np.zeros(n, dtype=np.int64)
    else:
        if positions is None:
            raise InvalidLogs("positions is required when action_dist is 3-D [n, A, P]")
        positions = _int_array("positions", positions)
        if positions.shape[0] != n:
            raise InvalidLogs(f"positions has {positions.shape[0]} rows but actions has {n}")
    n_actions, n_positions = dist.shape[1], dist.shape[2]
    if actions.min() < 0 or actions.max() >= n_actions:
        raise InvalidLogs(
            f"actions must be in [0, {n_actions}) (action_dist has {n_actions} actions); "
            f"found [{actions.min()}, {actions.max()}]"
        )
    if positions.min() < 0 or positions.max() >= n_positions:
        raise InvalidLogs(
            f"positions must be in [0, {n_positions}) (action_dist has {n_positions}); "
            f"found [{positions.min()}, {positions.max()}]"
        )

    def like_dist(name: str, x: object) -> np.ndarray | None:
        if x is None:
            return None
        a = _float_array(name, x, (2, 3))
        a = a[:, :, None] if a.ndim == 2 else a
        if a.shape != dist.shape:
            raise InvalidLogs(f"{name} must have action_dist's shape {dist.shape}, got {a.shape}")
        return a

    q_all = like_dist("reward_hat", reward_hat)
    b_all = like_dist("logging_dist", logging_dist)
    names = _estimator_names(estimators, q_all is not None)
    keys = _check_keys(bootstrap_keys, n)
    # Chunks keep broadcast (context-free) distributions from being materialized whole.
    step = max(1024, _CHUNK_CELLS // (n_actions * n_positions))
    total: OPEStatistics | None = None
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        idx = np.arange(rows.start, rows.stop)
        a, pos = actions[rows], positions[rows]
        _check_probabilities("action_dist", dist[rows], dist[rows].sum(axis=1), start)
        pi = dist[idx, :, pos]
        dm = q_logged = None
        if q_all is not None:
            q = q_all[idx, :, pos]
            dm = np.einsum("ij,ij->i", pi, q)
            q_logged = q[np.arange(q.shape[0]), a]
        unsupported = math.nan
        if b_all is not None:
            _check_probabilities("logging_dist", b_all[rows], b_all[rows].sum(axis=1), start)
            b = b_all[idx, :, pos]
            logged_p = b[np.arange(b.shape[0]), a]
            mismatch = np.abs(logged_p - propensities[rows])
            if mismatch.max() > _SUM_TOLERANCE:
                i = int(mismatch.argmax())
                raise InvalidLogs(
                    f"propensities[{start + i}]={propensities[start + i]:.6g} disagrees "
                    f"with logging_dist at the logged action ({logged_p[i]:.6g})"
                )
            unsupported = float(np.sum(pi * (b <= 0.0)))
        part = _statistics(
            rewards=rewards[rows],
            propensities=propensities[rows],
            pi_logged=pi[np.arange(pi.shape[0]), a],
            keys=keys[rows],
            dm=dm,
            q_logged=q_logged,
            support=_support_dense(pos, a, pi, n_positions),
            unsupported_mass=unsupported,
            max_weight=max_weight,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        total = part if total is None else total.merge(part)
    assert total is not None
    return summarize(
        total, names, confidence=confidence, min_ess=min_ess, min_ess_fraction=min_ess_fraction
    )


def ips(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Inverse propensity scoring: mean(w r). Arguments and keywords as ``evaluate``."""
    return evaluate(actions, rewards, propensities, action_dist, estimators=("ips",), **kwargs)[
        "ips"
    ]


def clipped_ips(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """IPS with weights clipped at ``max_weight``: mean(min(w, max_weight) r)."""
    return evaluate(
        actions, rewards, propensities, action_dist, estimators=("clipped_ips",), **kwargs
    )["clipped_ips"]


def snips(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Self-normalized IPS: sum(w r) / sum(w)."""
    return evaluate(actions, rewards, propensities, action_dist, estimators=("snips",), **kwargs)[
        "snips"
    ]


def direct_method(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Direct method: mean_i sum_a pi(a|i) reward_hat(i, a) (``reward_hat=`` required).

    Its interval reflects the sampling of rows only, not the reward model's error.
    """
    return evaluate(actions, rewards, propensities, action_dist, estimators=("dm",), **kwargs)["dm"]


def doubly_robust(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Doubly robust: DM + mean(w (r - reward_hat(i, a_i))) (``reward_hat=`` required)."""
    return evaluate(actions, rewards, propensities, action_dist, estimators=("dr",), **kwargs)["dr"]


def sn_doubly_robust(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Self-normalized DR: DM + sum(w (r - reward_hat(i, a_i))) / sum(w)."""
    return evaluate(actions, rewards, propensities, action_dist, estimators=("sndr",), **kwargs)[
        "sndr"
    ]


def on_policy_value(
    rewards: np.ndarray,
    *,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
    bootstrap_keys: np.ndarray | None = None,
) -> OPEResult:
    """The logging policy's own value: the mean reward, with the same bootstrap interval.

    rewards: float64[n]; bootstrap_keys: uint64[n] (default row index).
    """
    _check_settings(n_bootstrap, 1.0, confidence)
    seed = _check_seed(seed)
    r = _float_array("rewards", rewards, 1)
    n = r.shape[0]
    if n == 0:
        raise InvalidLogs("rewards is empty: there are no rows to evaluate")
    boot = bootstrap_sums(
        _check_keys(bootstrap_keys, n), np.stack([np.ones(n), r], axis=1), n_bootstrap, seed
    )
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high, _ = _percentile_interval(_divide(boot[:, 1], boot[:, 0]), tail)
    return OPEResult(
        estimator="on_policy",
        estimate=float(r.mean()),
        ci_low=low,
        ci_high=high,
        confidence=float(confidence),
        ess=float(n),
        n=n,
        max_weight=1.0,
    )


# ---------------------------------------------------------------------------------------
# Joined logs (schema OPE_LOG_COLUMNS), in memory or Parquet


@dataclass(frozen=True)
class RaggedRows:
    """Per-row lists of floats: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``.

    values: float64[total]; offsets: int64[n + 1], non-decreasing, starting at 0.
    """

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_dense(cls, a: np.ndarray) -> RaggedRows:
        """From float64[n, A] (every row has A entries)."""
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2:
            raise InvalidLogs(f"a dense list column must be 2-D [n, A], got shape {a.shape}")
        offsets = np.arange(a.shape[0] + 1, dtype=np.int64) * a.shape[1]
        return cls(np.ascontiguousarray(a).reshape(-1), offsets)

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def uniform_width(self) -> int | None:
        """A when every row has A entries (a fixed catalog), else None."""
        lengths = self.lengths
        if lengths.size == 0 or lengths.min() != lengths.max():
            return None
        return int(lengths[0])

    def dense(self) -> np.ndarray:
        """float64[n, A]; only when ``uniform_width()`` is not None."""
        width = self.uniform_width()
        if width is None:
            raise InvalidLogs("rows have different lengths; there is no dense form")
        return self.values.reshape(len(self), width)

    def row_sums(self, values: np.ndarray | None = None) -> np.ndarray:
        """float64[n]: per-row sums of ``values`` (default ``self.values``)."""
        values = self.values if values is None else values
        if len(self) == 0:
            return np.zeros(0)
        # Every row is non-empty (checked on read), which ``reduceat`` needs.
        return np.add.reduceat(values, self.offsets[:-1])

    def at(self, index: np.ndarray) -> np.ndarray:
        """float64[n]: entry ``index[i]`` of each row ``i``."""
        return self.values[self.offsets[:-1] + index]


def _as_ragged(name: str, x: RaggedRows | np.ndarray | None) -> RaggedRows | None:
    if x is None or isinstance(x, RaggedRows):
        return x
    return RaggedRows.from_dense(_float_array(name, x, 2))


@dataclass(frozen=True)
class OPELogs:
    """Joined logs in the ``OPE_LOG_COLUMNS`` layout, as arrays.

    decision_id: str[n] (or bytes/int); action, position: int64[n];
    reward, propensity: float64[n]; eval_probs: RaggedRows (or float64[n, A]);
    reward_hat, logging_probs: the same layout as eval_probs, or None.
    """

    decision_id: np.ndarray
    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray
    eval_probs: RaggedRows | np.ndarray
    reward_hat: RaggedRows | np.ndarray | None = None
    logging_probs: RaggedRows | np.ndarray | None = None

    def __len__(self) -> int:
        return int(np.asarray(self.action).shape[0])


def _list_column(table: Any, name: str) -> RaggedRows:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table[name]
    if col.null_count:
        raise InvalidLogs(f"column {name!r} has {col.null_count} null rows")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        col = col.cast(pa.list_(pa.float64()))
    if not pa.types.is_list(col.type):
        raise InvalidLogsType(f"column {name!r} must be a list of floats, got {col.type}")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(col)
    if values.null_count:
        raise InvalidLogs(f"column {name!r} has null entries inside its lists")
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise InvalidLogsType(f"column {name!r} must be a list of floats, got {col.type}")
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = values.to_numpy(zero_copy_only=False).astype(np.float64)
    return RaggedRows(flat, offsets)


def logs_from_table(table: Any, *, reward_column: str = "reward") -> OPELogs:
    """OPELogs from a ``pyarrow.Table`` (or a Ray Data pyarrow batch) in the OPE schema.

    reward_column: the column read as the reward (e.g. ``conversion`` in an export that
    has one column per outcome kind).
    """
    present = set(table.column_names)
    parquet_columns(present, reward_column=reward_column)
    for name in ("decision_id", "action", "position", reward_column, "propensity"):
        if table[name].null_count:
            raise InvalidLogs(f"column {name!r} has {table[name].null_count} null rows")

    def scalar(name: str) -> np.ndarray:
        return table[name].to_numpy()

    return OPELogs(
        decision_id=table["decision_id"].to_numpy(),
        action=scalar("action"),
        position=scalar("position"),
        reward=scalar(reward_column),
        propensity=scalar("propensity"),
        eval_probs=_list_column(table, "eval_probs"),
        reward_hat=_list_column(table, "reward_hat") if "reward_hat" in present else None,
        logging_probs=(
            _list_column(table, "logging_probs") if "logging_probs" in present else None
        ),
    )


def logs_to_table(logs: OPELogs) -> Any:
    """A ``pyarrow.Table`` in the ``OPE_LOG_COLUMNS`` schema (what ``export`` writes)."""
    import pyarrow as pa

    def lists(name: str, x: RaggedRows | np.ndarray) -> pa.Array:
        ragged = _as_ragged(name, x)
        assert ragged is not None
        return pa.ListArray.from_arrays(
            pa.array(ragged.offsets.astype(np.int32)), pa.array(ragged.values, pa.float64())
        )

    columns = {
        "decision_id": pa.array(np.asarray(logs.decision_id).astype(str), pa.string()),
        "action": pa.array(np.asarray(logs.action, dtype=np.int64)),
        "position": pa.array(np.asarray(logs.position, dtype=np.int64)),
        "reward": pa.array(np.asarray(logs.reward, dtype=np.float64)),
        "propensity": pa.array(np.asarray(logs.propensity, dtype=np.float64)),
        "eval_probs": lists("eval_probs", logs.eval_probs),
    }
    if logs.reward_hat is not None:
        columns["reward_hat"] = lists("reward_hat", logs.reward_hat)
    if logs.logging_probs is not None:
        columns["logging_probs"] = lists("logging_probs", logs.logging_probs)
    return pa.table(columns)


def parquet_columns(schema_names: Any, *, reward_column: str = "reward") -> list[str]:
    """The OPE columns present in a schema's ``schema_names`` (the required ones must be).

    reward_column: the column that plays ``reward``.
    """
    names = set(schema_names)
    wanted = [reward_column if c.name == "reward" else c.name for c in OPE_LOG_COLUMNS]
    required = [
        reward_column if c.name == "reward" else c.name for c in OPE_LOG_COLUMNS if c.required
    ]
    missing = [name for name in required if name not in names]
    if missing:
        raise InvalidLogs(
            f"the joined logs lack required columns {missing}; the schema is {wanted}"
        )
    return [name for name in wanted if name in names]


def parquet_files(paths: Sequence[str | Path]) -> list[str]:
    """The Parquet files named by ``paths`` (files, or directories searched recursively)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise InvalidLogs("paths must name at least one Parquet file or directory")
    files: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*.parquet") if f.is_file())
            if not found:
                raise InvalidLogs(f"directory {p} holds no .parquet files")
            files.extend(found)
        elif p.is_file():
            files.append(str(p))
        else:
            raise InvalidLogs(f"no such Parquet file or directory: {p}")
    return files


def read_logs_parquet(paths: Sequence[str | Path], *, reward_column: str = "reward") -> OPELogs:
    """Read joined logs from Parquet files (or directories of them) in the OPE schema."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(parquet_files(paths), format="parquet")
    columns = parquet_columns(dataset.schema.names, reward_column=reward_column)
    return logs_from_table(dataset.to_table(columns=columns), reward_column=reward_column)


def logs_statistics(
    logs: OPELogs,
    *,
    with_reward_model: bool,
    max_weight: float = DEFAULT_MAX_WEIGHT,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
) -> OPEStatistics:
    """Checked statistics of one block of joined logs (what the distributed evaluator maps).

    Rows are keyed for the bootstrap by ``decision_keys(decision_id)``, so the result does
    not depend on how the rows are split into blocks. with_reward_model: use the
    ``reward_hat`` column (an error if absent); all blocks of one evaluation must agree.
    """
    _check_settings(n_bootstrap, max_weight, 0.95)
    seed = _check_seed(seed)
    actions = _int_array("action", logs.action)
    n = actions.shape[0]
    positions = _int_array("position", logs.position)
    rewards = _float_array("reward", logs.reward, 1)
    propensities = _float_array("propensity", logs.propensity, 1)
    pi = _as_ragged("eval_probs", logs.eval_probs)
    q = _as_ragged("reward_hat", logs.reward_hat)
    b = _as_ragged("logging_probs", logs.logging_probs)
    for name, arr in (
        ("position", positions),
        ("reward", rewards),
        ("propensity", propensities),
        ("eval_probs", pi),
    ):
        if len(arr) != n:
            raise InvalidLogs(f"column {name!r} has {len(arr)} rows but 'action' has {n}")
    _check_propensities("column 'propensity'", propensities)
    lengths = pi.lengths
    if n and lengths.min() < 1:
        raise InvalidLogs("column 'eval_probs' has empty lists; each row needs its candidates")
    if n and (actions.min() < 0 or np.any(actions >= lengths)):
        raise InvalidLogs("column 'action' must index into the row's eval_probs list")
    if n and positions.min() < 0:
        raise InvalidLogs("column 'position' must be >= 0")
    pi_values = _float_array("eval_probs", pi.values, 1)
    _check_probabilities("column 'eval_probs'", pi_values, pi.row_sums(), 0)
    for name, other in (("reward_hat", q), ("logging_probs", b)):
        if other is not None and not np.array_equal(other.lengths, lengths):
            raise InvalidLogs(f"column {name!r} must have the length of 'eval_probs' per row")
    dm = q_logged = None
    if with_reward_model:
        if q is None:
            raise InvalidLogs("column 'reward_hat' is required for dm, dr and sndr")
        q_values = _float_array("reward_hat", q.values, 1)
        dm = pi.row_sums(pi_values * q_values)
        q_logged = q_values[pi.offsets[:-1] + actions]
    unsupported = math.nan
    if b is not None:
        b_values = _float_array("logging_probs", b.values, 1)
        _check_probabilities("column 'logging_probs'", b_values, b.row_sums(), 0)
        unsupported = float(np.sum(pi_values * (b_values <= 0.0)))
    width = pi.uniform_width()
    support = None
    if width is not None:
        n_positions = int(positions.max()) + 1 if n else 0
        support = _support_dense(positions, actions, pi.dense(), n_positions)
    return _statistics(
        rewards=rewards,
        propensities=propensities,
        pi_logged=pi.at(actions),
        keys=decision_keys(logs.decision_id),
        dm=dm,
        q_logged=q_logged,
        support=support,
        unsupported_mass=unsupported,
        max_weight=max_weight,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


def evaluate_logs(
    logs: OPELogs,
    estimators: Sequence[str] | None = None,
    *,
    max_weight: float = DEFAULT_MAX_WEIGHT,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
    min_ess: float = DEFAULT_MIN_ESS,
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
) -> dict[str, OPEResult]:
    """``evaluate`` on joined logs in one process (the bootstrap keyed by decision id).

    The model-based estimators run when the logs carry ``reward_hat``.
    """
    _check_settings(n_bootstrap, max_weight, confidence)
    with_model = logs.reward_hat is not None
    names = _estimator_names(estimators, with_model)
    stats = logs_statistics(
        logs,
        with_reward_model=with_model,
        max_weight=max_weight,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    return summarize(
        stats, names, confidence=confidence, min_ess=min_ess, min_ess_fraction=min_ess_fraction
    )


# ---------------------------------------------------------------------------------------
# Evaluation policies as action distributions (slates fill positions 0..P-1 in order)


def _scores(name: str, scores: object, n_positions: object) -> tuple[np.ndarray, int]:
    s = _float_array(name, scores, 2)
    if isinstance(n_positions, bool) or not isinstance(n_positions, int | np.integer):
        raise InvalidLogsType(f"n_positions must be an int, got {n_positions!r}")
    if not 1 <= n_positions <= s.shape[1]:
        raise InvalidLogs(
            f"n_positions must be in [1, {s.shape[1]}] (the number of actions), got {n_positions}"
        )
    return s, int(n_positions)


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


def plackett_luce_dist(scores: np.ndarray, n_positions: int, temperature: float) -> np.ndarray:
    """Exact position marginals of a softmax (Plackett-Luce) slate.

    The slate draws position 0 from softmax(scores / temperature), then each next position
    from the same weights renormalized over the actions not yet shown. Returns
    float64[n, A, P] with P(action a at position k); exact for P <= 3 (sums over the
    earlier positions' choices, O(n A^2)). scores: float[n, A].
    """
    s, p = _scores("scores", scores, n_positions)
    if p > 3:
        raise InvalidLogs(f"plackett_luce_dist is exact for at most 3 positions, got {p}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise InvalidLogsType(f"temperature must be a number, got {temperature!r}")
    if not temperature > 0:
        raise InvalidLogs(f"temperature must be > 0, got {temperature!r}")
    z = s / temperature
    z = z - z.max(axis=1, keepdims=True)
    w = np.exp(z)
    w = w / w.sum(axis=1, keepdims=True)
    n, a = w.shape
    dist = np.zeros((n, a, p), dtype=np.float64)
    dist[:, :, 0] = w
    if p == 1:
        return dist
    with np.errstate(divide="ignore", invalid="ignore"):
        rest1 = np.where(w < 1.0, 1.0 - w, np.inf)  # 1 - w_b: mass left after b is shown
        ratio = w / rest1  # w_b / (1 - w_b)
        # P(a at 1) = w_a * sum_{b != a} w_b / (1 - w_b)
        dist[:, :, 1] = w * (ratio.sum(axis=1, keepdims=True) - ratio)
        if p == 3:
            step = max(1, _CHUNK_CELLS // (a * a))
            for start in range(0, n, step):
                wb = w[start : start + step]
                rb = ratio[start : start + step]
                left = 1.0 - wb[:, :, None] - wb[:, None, :]  # mass left after b, c
                pair = np.where(left > 0, rb[:, :, None] * wb[:, None, :] / left, 0.0)
                idx = np.arange(a)
                pair[:, idx, idx] = 0.0
                # P(a at 2) = w_a * sum over ordered pairs (b, c), both != a, of
                # w_b/(1-w_b) * w_c/(1-w_b-w_c)
                total = pair.sum(axis=(1, 2))[:, None]
                dist[start : start + step, :, 2] = wb * (
                    total - pair.sum(axis=2) - pair.sum(axis=1)
                )
    # Renormalize away rounding so each position sums to 1 exactly enough for validation.
    dist /= dist.sum(axis=1, keepdims=True)
    return dist


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
        raise InvalidLogs(f"successes {succ.shape} and failures {fail.shape} differ in shape")
    if succ.size and (succ.min() < 0 or fail.min() < 0):
        raise InvalidLogs("successes and failures must be >= 0")
    _, p = _scores("successes", succ[None, :], n_positions)
    if isinstance(n_sim, bool) or not isinstance(n_sim, int) or n_sim < 1:
        raise InvalidLogs(f"n_sim must be a positive int, got {n_sim!r}")
    priors = []
    for name, value in (("prior_alpha", prior_alpha), ("prior_beta", prior_beta)):
        arr = _float_array(name, value, (0, 1))
        if arr.ndim == 1 and arr.shape != succ.shape:
            raise InvalidLogs(f"{name} must be a scalar or have shape {succ.shape}")
        priors.append(np.broadcast_to(arr, succ.shape))
    alpha, beta = priors
    if alpha.size and (alpha.min() <= 0 or beta.min() <= 0):
        raise InvalidLogs("prior_alpha and prior_beta must be > 0")
    rng = np.random.default_rng(_check_seed(seed))
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
        raise InvalidLogs("actions and positions must have the same length")
    if acts.size and (acts.min() < 0 or acts.max() >= n_actions):
        raise InvalidLogs(f"actions must be in [0, {n_actions})")
    if pos.size and (pos.min() < 0 or pos.max() >= n_positions):
        raise InvalidLogs(f"positions must be in [0, {n_positions})")
    counts = np.bincount(pos * n_actions + acts, minlength=n_actions * n_positions)
    counts = counts.reshape(n_positions, n_actions).T.astype(np.float64)
    totals = counts.sum(axis=0, keepdims=True)
    if np.any(totals == 0):
        raise InvalidLogs("every position needs at least one logged row")
    return counts / totals
