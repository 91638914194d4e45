"""The impact report from an exported decision log: what the server's impact endpoint and
``nudgeserve impact logs`` run.

``logs_arrays`` turns the export's columns into ``impact_report``'s arrays (candidates in
any order mapped to the configuration's treatments; randomised rows from the logged
reason, or recomputed from the unit ids through the rule's salt), ``impact_from_logs``
runs the report. NumPy; pyarrow for the table, imported where a table is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from nudgeserve.models.evaluation.impact import ImpactReport, impact_report, int_array
from nudgeserve.models.evaluation.ope import decision_keys, parquet_files
from nudgeserve.models.policies.intervention import (
    EXPLORE,
    HOLDOUT,
    REASONS,
    InterventionConfig,
    assign_branches,
)
from nudgeserve.models.specs import HILLSTROM_OUTCOMES

__all__ = ["LogArrays", "impact_from_logs", "logs_arrays", "read_decision_logs"]


def _list_matrix(table: Any, name: str, width: int) -> np.ndarray:
    import pyarrow.compute as pc

    col = table[name]
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if lengths.size and (lengths.min() != width or lengths.max() != width):
        raise ValueError(f"column {name!r} must hold {width} values per row (one per candidate)")
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64)
    return flat.reshape(-1, width)


@dataclass(frozen=True)
class LogArrays:
    """An exported decision log as ``impact_report`` inputs (actions in config order).

    action, policy_action: int64[n]; propensity: float64[n]; outcomes: {name: float64[n]};
    predicted: {name: float64[n, T]} (may be empty); randomized: bool[n];
    bootstrap_keys: uint64[n] or None; notes: how the inputs were derived.
    """

    action: np.ndarray
    propensity: np.ndarray
    outcomes: dict[str, np.ndarray]
    policy_action: np.ndarray
    predicted: dict[str, np.ndarray]
    randomized: np.ndarray
    bootstrap_keys: np.ndarray | None
    notes: tuple[str, ...]


def read_decision_logs(source: Any) -> Any:
    """A pyarrow Table from Parquet paths (files or folders), or ``source`` if a Table."""
    import pyarrow as pa

    if isinstance(source, pa.Table):
        return source
    import pyarrow.dataset as ds

    paths = [source] if isinstance(source, str | Path) else list(source)
    return ds.dataset(parquet_files(paths), format="parquet").to_table()


def logs_arrays(table: Any, config: InterventionConfig) -> LogArrays:
    """Columns of an exported decision log -> ``LogArrays`` (see ``impact_from_logs``)."""
    present = set(table.column_names)
    required = ["unit_id", "action", "propensity", "candidates", "eval_probs", config.objective]
    missing = [c for c in required if c not in present]
    if missing:
        hint = (
            " ('eval_probs' is the rule's own choice per decision: export it with an "
            "annotate hook that replays the rule)"
            if "eval_probs" in missing
            else ""
        )
        raise ValueError(f"the decision log lacks required columns {missing}{hint}")
    if "position" in present:
        position = table["position"].to_numpy()
        if position.size and position.max() > 0:
            raise ValueError("column 'position': intervention decisions have one slot (0)")
    names = tuple(config.treatments)
    n_actions = len(names)
    n = table.num_rows
    if n == 0:
        raise ValueError("the decision log has no rows")
    # Each row's candidate order -> config.treatments order.
    order_of: dict[tuple[str, ...], np.ndarray] = {}
    mapping = np.empty((n, n_actions), dtype=np.int64)
    for i, cands in enumerate(table["candidates"].to_pylist()):
        key = tuple(cands)
        if key not in order_of:
            if sorted(key) != sorted(names):
                raise ValueError(
                    f"column 'candidates', row {i}: {list(key)} are not config.treatments "
                    f"{list(names)}"
                )
            order_of[key] = np.array([names.index(x) for x in key])
        mapping[i] = order_of[key]
    rows = np.arange(n)
    local_action = int_array("column 'action'", table["action"].to_numpy())
    if local_action.min() < 0 or local_action.max() >= n_actions:
        raise ValueError(f"column 'action' must index the candidates [0, {n_actions})")
    action = mapping[rows, local_action]

    def to_global(m: np.ndarray) -> np.ndarray:
        out = np.empty_like(m)
        out[rows[:, None], mapping] = m
        return out

    notes = []
    probs = to_global(_list_matrix(table, "eval_probs", n_actions))
    if not np.allclose(probs.max(axis=1), 1.0):
        notes.append("eval_probs is not one-hot: the rule's choice is taken as its argmax")
    outcome_names = list(
        dict.fromkeys(o for o in (*HILLSTROM_OUTCOMES, config.objective) if o in present)
    )
    outcomes = {o: table[o].to_numpy().astype(np.float64) for o in outcome_names}
    # An export has a column for every configured outcome kind; one that no feedback
    # ever filled says nothing about effects (it is all zeros), so it is left out.
    for o in list(outcomes):
        if o != config.objective and not np.any(outcomes[o]):
            del outcomes[o]
            notes.append(f"column {o!r} is all zeros (no {o} feedback logged): not analysed")
    predicted = {
        o: to_global(_list_matrix(table, f"reward_hat_{o}", n_actions))
        for o in outcomes
        if f"reward_hat_{o}" in present
    }
    randomized = None
    for col in ("reason", "variant"):
        if col in present:
            values = np.asarray(table[col].to_pylist(), dtype=object)
            if set(values.tolist()) <= set(REASONS):
                randomized = np.isin(values, ["holdout", "explore"])
                notes.append(f"randomised rows: reason holdout or explore (column {col!r})")
                break
    if randomized is None:
        branch, drawn = assign_branches(np.asarray(table["unit_id"].to_pylist(), dtype=str), config)
        # An exploring unit whose drawn action had no budget left was not randomised.
        randomized = (branch == HOLDOUT) | ((branch == EXPLORE) & (drawn == action))
        notes.append("randomised rows recomputed from unit_id with the config's salt and shares")
    keys = (
        decision_keys(np.asarray(table["decision_id"].to_pylist(), dtype=str))
        if "decision_id" in present
        else None
    )
    return LogArrays(
        action=action,
        propensity=table["propensity"].to_numpy().astype(np.float64),
        outcomes=outcomes,
        policy_action=probs.argmax(axis=1).astype(np.int64),
        predicted=predicted,
        randomized=randomized,
        bootstrap_keys=keys,
        notes=tuple(notes),
    )


def impact_from_logs(
    source: Any,
    config: InterventionConfig,
    *,
    n_bootstrap: int = 1000,
    qini_resamples: int = 200,
    seed: int = 0,
    title: str = "Causal impact from decision logs",
) -> ImpactReport:
    """``impact_report`` from an exported decision log (Parquet paths or a pyarrow Table).

    One row per decision of the intervention deployment (one slot). Columns: required
    ``unit_id``, ``action`` (index into ``candidates``), ``propensity`` (logged),
    ``candidates`` (the action names: ``config.treatments`` in any order), the objective's
    outcome column (``visit``, ``conversion`` and ``spend`` are used when present) and
    ``eval_probs`` (list per candidate: the rule's own choice, one-hot, for every decision
    including held-out and explored ones); optional ``reward_hat_<outcome>`` (list per
    candidate: the model's predicted outcome per action; enables DR, losses, Qini) and
    ``decision_id`` (bootstrap keys). The randomised rows come from a string column
    ``reason`` (or ``variant``) holding ``REASONS`` names, else from ``unit_id`` through
    the config's salt and shares (the hash the rule used).
    """
    arrays = logs_arrays(read_decision_logs(source), config)
    report = impact_report(
        config,
        action=arrays.action,
        propensity=arrays.propensity,
        outcomes=arrays.outcomes,
        policy_action=arrays.policy_action,
        predicted=arrays.predicted or None,
        randomized=arrays.randomized,
        bootstrap_keys=arrays.bootstrap_keys,
        n_bootstrap=n_bootstrap,
        qini_resamples=qini_resamples,
        seed=seed,
        title=title,
    )
    return msgspec.structs.replace(report, notes=report.notes + arrays.notes)
