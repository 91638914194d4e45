"""Off-policy evaluation of joined decision logs in Parquet with Ray Data.

The files are those ``nudgeserve export`` writes (schema ``ope.OPE_LOG_COLUMNS``: one
row per decision joined with its outcome and the evaluation policy's probabilities).
Ray Data reads them in parallel (on every node of a cluster), ``map_batches`` turns each
batch into the mergeable sufficient statistics of ``nudgeserve.models.evaluation.ope`` (sums and
per-replicate bootstrap sums, keyed by decision id), the driver adds the partial
statistics up and ``ope.summarize`` computes the estimates. Because the statistics are
the same functions of the same rows and the bootstrap is keyed by decision id, the result
equals the in-memory ``ope.evaluate_logs`` on the same files, whatever the partitioning
(up to floating-point summation order).

The caller owns the Ray runtime: connect or start it before calling (a command uses
``ray_for_evaluation``); Ray Data otherwise starts a default local instance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from nudgeserve.models.evaluation import ope

__all__ = ["evaluate_parquet_ray", "parquet_statistics_ray", "ray_for_evaluation"]

# Rows per map batch: statistics cost O(rows x replicates); 64k rows keep a batch's
# arrays (about 30 floats per row) in tens of MiB while amortizing per-task overhead.
DEFAULT_BATCH_ROWS = 65_536


def _resolve(paths: Sequence[str | Path]) -> list[str]:
    """Local paths are checked and expanded to files; URIs (``s3://...``) pass through."""
    if isinstance(paths, str | Path):
        paths = [paths]
    local = [p for p in paths if "://" not in str(p)]
    remote = [str(p) for p in paths if "://" in str(p)]
    if not paths:
        raise ope.InvalidLogs("paths must name at least one Parquet file or directory")
    return (ope.parquet_files(local) if local else []) + remote


@contextlib.contextmanager
def ray_for_evaluation(address: str | None = None, temp_dir: Path | None = None) -> Iterator[None]:
    """Ray for one evaluation: this process's runtime if it runs one already, else a
    connection to ``address`` (None: a new local instance, its files under ``temp_dir``
    when given), shut down again on exit. Quiet: no dashboard, no worker logs."""
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if address:
        kwargs["address"] = address
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        kwargs["_temp_dir"] = str(temp_dir.resolve())
    ray.init(**kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def _batch_statistics(
    batch: Any,
    *,
    reward_column: str,
    with_reward_model: bool,
    max_weight: float,
    n_bootstrap: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """One pyarrow batch -> one row holding its encoded ``OPEStatistics``."""
    if batch.num_rows == 0:
        return {"statistics": np.array([], dtype=object)}
    stats = ope.logs_statistics(
        ope.logs_from_table(batch, reward_column=reward_column),
        with_reward_model=with_reward_model,
        max_weight=max_weight,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    return {"statistics": np.array([stats.to_bytes()], dtype=object)}


def parquet_statistics_ray(
    paths: Sequence[str | Path],
    *,
    with_reward_model: bool | None = None,
    reward_column: str = "reward",
    max_weight: float = ope.DEFAULT_MAX_WEIGHT,
    n_bootstrap: int = ope.DEFAULT_N_BOOTSTRAP,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ope.OPEStatistics:
    """Merged ``OPEStatistics`` of every row of the Parquet files, computed by Ray Data.

    paths: Parquet files or directories (local, or URIs Ray can read).
    with_reward_model: use the ``reward_hat`` column (default: when the files have it).
    reward_column: the column read as the reward.
    """
    import ray.data  # Ray Data loads pyarrow: only when a Parquet evaluation runs

    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ope.InvalidLogs(f"batch_rows must be a positive int, got {batch_rows!r}")
    # Validate the settings here, on the driver, rather than in the first remote task.
    seed = ope.validate_settings(
        n_bootstrap=n_bootstrap, max_weight=max_weight, confidence=0.95, seed=seed
    )
    files = _resolve(paths)
    schema = ray.data.read_parquet(files).schema()
    columns = ope.parquet_columns(schema.names, reward_column=reward_column)
    if with_reward_model is None:
        with_reward_model = "reward_hat" in columns
    elif with_reward_model and "reward_hat" not in columns:
        raise ope.InvalidLogs("column 'reward_hat' is required for dm, dr and sndr")
    partials = (
        ray.data.read_parquet(files)
        .select_columns(columns)
        .map_batches(
            _batch_statistics,
            batch_format="pyarrow",
            batch_size=batch_rows,
            fn_kwargs={
                "reward_column": reward_column,
                "with_reward_model": bool(with_reward_model),
                "max_weight": float(max_weight),
                "n_bootstrap": int(n_bootstrap),
                "seed": seed,
            },
        )
    )
    total: ope.OPEStatistics | None = None
    for row in partials.iter_rows():
        part = ope.OPEStatistics.from_bytes(row["statistics"])
        total = part if total is None else total.merge(part)
    if total is None:
        raise ope.InvalidLogs(f"the Parquet files {files[:3]} hold no rows")
    return total


def evaluate_parquet_ray(
    paths: Sequence[str | Path],
    estimators: Sequence[str] | None = None,
    *,
    max_weight: float = ope.DEFAULT_MAX_WEIGHT,
    n_bootstrap: int = ope.DEFAULT_N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
    min_ess: float = ope.DEFAULT_MIN_ESS,
    min_ess_fraction: float = ope.DEFAULT_MIN_ESS_FRACTION,
    reward_column: str = "reward",
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict[str, ope.OPEResult]:
    """``ope.evaluate_logs`` over Parquet files, distributed with Ray Data.

    estimators: names from ``ope.ESTIMATORS`` (default: all the columns allow; the
    model-based ones need ``reward_hat``). Returns {estimator: OPEResult} plus
    ``"on_policy"``: the logging policy's own mean reward over the same rows.
    """
    ope.validate_settings(
        n_bootstrap=n_bootstrap, max_weight=max_weight, confidence=confidence, seed=seed
    )
    wanted = None if estimators is None else tuple(estimators)
    needs_model = None if wanted is None else bool(set(wanted) & ope.REQUIRES_REWARD_MODEL)
    stats = parquet_statistics_ray(
        paths,
        with_reward_model=needs_model,
        reward_column=reward_column,
        max_weight=max_weight,
        n_bootstrap=n_bootstrap,
        seed=seed,
        batch_rows=batch_rows,
    )
    results = ope.summarize(
        stats, wanted, confidence=confidence, min_ess=min_ess, min_ess_fraction=min_ess_fraction
    )
    results["on_policy"] = ope.logging_policy_value(stats, confidence=confidence)
    return results
