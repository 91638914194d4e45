"""Joined logs: the Parquet schema ``export`` writes and OPE reads, in memory and on disk.

One row per logged decision (per slot for slates) joined with its outcome, plus the
evaluation policy's distribution over that row's candidates (``OPE_LOG_COLUMNS``). List
columns are ragged (``RaggedRows``): candidate lists may differ between rows. Rows are
keyed for the bootstrap by their decision id (``decision_keys``), so a decision's slots
are resampled together and any partition of the rows gives the same result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from nudgeserve.kernels.rng import splitmix64
from nudgeserve.models.errors import InvalidLogs, InvalidLogsType
from nudgeserve.models.evaluation.ope._checks import (
    check_probabilities,
    check_propensities,
    check_seed,
    check_settings,
    float_array,
    int_array,
)
from nudgeserve.models.evaluation.ope._statistics import (
    DEFAULT_MAX_WEIGHT,
    DEFAULT_MIN_ESS,
    DEFAULT_MIN_ESS_FRACTION,
    DEFAULT_N_BOOTSTRAP,
    OPEResult,
    OPEStatistics,
    estimator_names,
    row_statistics,
    summarize,
    support_counts,
)

# 64-bit FNV-1a, which turns a decision id's bytes into a word before SplitMix64 mixes it.
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


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


def decision_keys(ids: Sequence[str] | Sequence[bytes] | np.ndarray) -> np.ndarray:
    """uint64[n] bootstrap keys of decision ids (strings, bytes or integers).

    Strings are hashed (64-bit FNV-1a over their UTF-8 bytes, then SplitMix64); the same
    id always gets the same key, on any machine and in any partition.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise InvalidLogs(f"decision ids must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return splitmix64(arr.astype(np.int64).view(np.uint64))
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
        return splitmix64(np.zeros(arr.shape[0], dtype=np.uint64))
    raw = np.ascontiguousarray(arr).view(np.uint8).reshape(arr.shape[0], width)
    h = np.full(arr.shape[0], _FNV_OFFSET, dtype=np.uint64)
    for j in range(width):
        h = (h ^ raw[:, j].astype(np.uint64)) * _FNV_PRIME
    # NumPy's fixed-width strings drop trailing NULs, so ids differing only in those
    # (never the case for real decision ids) share a key.
    return splitmix64(h)


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


def as_ragged(name: str, x: RaggedRows | np.ndarray | None) -> RaggedRows | None:
    if x is None or isinstance(x, RaggedRows):
        return x
    return RaggedRows.from_dense(float_array(name, x, 2))


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
        ragged = as_ragged(name, x)
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
    check_settings(n_bootstrap, max_weight, 0.95)
    seed = check_seed(seed)
    actions = int_array("action", logs.action)
    n = actions.shape[0]
    positions = int_array("position", logs.position)
    rewards = float_array("reward", logs.reward, 1)
    propensities = float_array("propensity", logs.propensity, 1)
    pi = as_ragged("eval_probs", logs.eval_probs)
    q = as_ragged("reward_hat", logs.reward_hat)
    b = as_ragged("logging_probs", logs.logging_probs)
    for name, arr in (
        ("position", positions),
        ("reward", rewards),
        ("propensity", propensities),
        ("eval_probs", pi),
    ):
        if len(arr) != n:
            raise InvalidLogs(f"column {name!r} has {len(arr)} rows but 'action' has {n}")
    check_propensities("column 'propensity'", propensities)
    lengths = pi.lengths
    if n and lengths.min() < 1:
        raise InvalidLogs("column 'eval_probs' has empty lists; each row needs its candidates")
    if n and (actions.min() < 0 or np.any(actions >= lengths)):
        raise InvalidLogs("column 'action' must index into the row's eval_probs list")
    if n and positions.min() < 0:
        raise InvalidLogs("column 'position' must be >= 0")
    pi_values = float_array("eval_probs", pi.values, 1)
    check_probabilities("column 'eval_probs'", pi_values, pi.row_sums(), 0)
    for name, other in (("reward_hat", q), ("logging_probs", b)):
        if other is not None and not np.array_equal(other.lengths, lengths):
            raise InvalidLogs(f"column {name!r} must have the length of 'eval_probs' per row")
    dm = q_logged = None
    if with_reward_model:
        if q is None:
            raise InvalidLogs("column 'reward_hat' is required for dm, dr and sndr")
        q_values = float_array("reward_hat", q.values, 1)
        dm = pi.row_sums(pi_values * q_values)
        q_logged = q_values[pi.offsets[:-1] + actions]
    unsupported = math.nan
    if b is not None:
        b_values = float_array("logging_probs", b.values, 1)
        check_probabilities("column 'logging_probs'", b_values, b.row_sums(), 0)
        unsupported = float(np.sum(pi_values * (b_values <= 0.0)))
    width = pi.uniform_width()
    support = None
    if width is not None:
        n_positions = int(positions.max()) + 1 if n else 0
        support = support_counts(positions, actions, pi.dense(), n_positions)
    return row_statistics(
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
    check_settings(n_bootstrap, max_weight, confidence)
    with_model = logs.reward_hat is not None
    names = estimator_names(estimators, with_model)
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
