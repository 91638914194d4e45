"""Intervention decisions for a batch of customers, and their causal impact from the log.

The serving logic behind an intervention use case (a ``hillstrom`` use case with an
``interventions:`` block): no HTTP, no Ray. ``InterventionEngine.decide`` takes a batch of
raw customer columns and their unit ids and returns, per unit, what ``POST /v1/decide``
and the batch endpoint answer:

- ``baseline_risk``: P(defect) with no intervention (the defect is "no visit": 1 - the
  ensemble members' mean P(visit | no e-mail)); ``baseline``: the predicted objective with
  no intervention;
- per treatment: the predicted uplift of the objective over no intervention, the
  ensemble's standard error and its two-sided interval at ``level``
  (``models.uplift_uncertainty``), the net value ``value_per_unit * uplift - cost`` and its
  one-sided lower bound at the rule's ``confidence``, and whether it is eligible;
- ``severity`` (baseline risk x value at stake), the ``action`` taken (a treatment, or the
  control = no intervention), the ``reason`` (``act``, ``below_threshold``,
  ``budget_exhausted``, ``holdout``, ``explore``), the exact ``propensity`` of that action
  under the design and the rule's own choice ``policy_action``
  (``models.intervention``, whose module docstring states the rule and the propensity).

The ensemble scores the batch in chunks of at most ``chunk_rows`` rows (one stacked
forward per chunk); the rule then runs once over the whole batch, so a ledger of daily
caps sees one ``allocate`` call per batch, however many chunks it took.

What the decision log records for such a decision: ``record_builder`` (``RecordBuilder``
for ``/v1/decide``, ``intervention_records`` for the batch endpoint); its ``features`` are
the replay vector: the raw numeric columns, then the ensemble featurizer's hashed
categorical buckets.

``experiment_impact`` turns the logged decisions of the experiment and their joined
feedback into ``evaluation.impact_logs.impact_from_logs``'s input: the rule's choice per decision
(``eval_probs``, one-hot) and the ensemble's predicted outcomes per action
(``reward_hat_<outcome>``) come from replaying the logged replay vector through the
ensemble (``InterventionEngine.annotate``, also usable as the export's ``annotate``
hook), i.e. the report evaluates the rule as configured now on the logged data. A unit's
outcome is the sum of the joined ``visit`` / ``conversion`` / ``spend`` feedback of its
decision (none joined: 0, unless ``feedback_only`` leaves the decision out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nudgeserve.models.policies.intervention import (
    REASONS,
    InterventionConfig,
    InterventionDecisions,
    Ledger,
    decide_from_ensemble,
)
from nudgeserve.models.specs import HILLSTROM_OUTCOMES
from nudgeserve.serve.engine.policy_labels import intervention_policy_label
from nudgeserve.serve.protocol.decide import InterventionResult, TreatmentUplift

__all__ = [
    "InterventionBatch",
    "InterventionEngine",
    "NoDecisions",
    "experiment_impact",
    "impact_table",
]

# Reasons whose action did not depend on the model: the randomised rows of the log.
RANDOMIZED_REASONS = ("holdout", "explore")


class NoDecisions(ValueError):
    """There are no intervention decisions to analyse (in the window asked for)."""


@dataclass(frozen=True)
class InterventionBatch:
    """The engine's answer for B units (T actions in ``config.treatments`` order).

    decisions: the rule's output (``InterventionDecisions``: action, reason, propensity,
        policy_action, net values, severity, baseline risk, availability).
    uplift, sd, low, high: float32[B, T] the objective's uplift and interval at ``level``.
    baseline: float32[B] the predicted objective with no intervention.
    predicted: {outcome: float32[B, T]} every outcome's predicted value per action (the
        members' mean; what ``reward_hat`` columns hold).
    replay: float32[B, F] the replay vectors the log records.
    """

    config: InterventionConfig
    level: float
    decisions: InterventionDecisions
    uplift: np.ndarray
    sd: np.ndarray
    low: np.ndarray
    high: np.ndarray
    baseline: np.ndarray
    predicted: dict[str, np.ndarray]
    replay: np.ndarray

    def __len__(self) -> int:
        return len(self.decisions)

    def results(self) -> list[InterventionResult]:
        """One ``InterventionResult`` per unit, in batch order (the encode step: the only
        per-unit Python loop)."""
        d = self.decisions
        names = d.treatments
        c = d.control_index
        treated = [t for t in range(len(names)) if t != c]
        cols = [
            (
                names[t],
                self.uplift[:, t].tolist(),
                self.sd[:, t].tolist(),
                self.low[:, t].tolist(),
                self.high[:, t].tolist(),
                d.net_value[:, t].tolist(),
                d.net_lower[:, t].tolist(),
                d.eligible[:, t].tolist(),
            )
            for t in treated
        ]
        objective, level = self.config.objective, self.level
        out = []
        rows = zip(
            d.action.tolist(),
            d.reason.tolist(),
            d.propensity.tolist(),
            d.policy_action.tolist(),
            d.baseline_risk.tolist(),
            self.baseline.tolist(),
            d.severity.tolist(),
            d.expected_net_value.tolist(),
            strict=True,
        )
        for i, (a, r, p, pa, risk, base, sev, env) in enumerate(rows):
            uplifts = [
                TreatmentUplift(name, u[i], s[i], lo[i], hi[i], nv[i], nl[i], el[i])
                for name, u, s, lo, hi, nv, nl, el in cols
            ]
            out.append(
                InterventionResult(
                    action=names[a],
                    intervene=a != c,
                    reason=REASONS[r],
                    propensity=p,
                    policy_action=names[pa],
                    baseline_risk=risk,
                    baseline=base,
                    severity=sev,
                    expected_net_value=env,
                    objective=objective,
                    level=level,
                    uplifts=uplifts,
                )
            )
        return out


def _unit_ids(unit_ids: Any, n: int) -> np.ndarray:
    if isinstance(unit_ids, str | bytes):
        raise TypeError("unit_ids must be a sequence of ids, got a single string")
    ids = np.asarray(unit_ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"unit_ids must hold one id per unit ({n}), got shape {ids.shape}")
    return ids


class InterventionEngine:
    """Scores a batch of customers with the uplift ensemble and decides with the rule.

    config: the rule (``InterventionConfig``; its treatments must be the ensemble's).
    ensemble: a loaded ``UpliftEnsemble``.
    level: coverage of the reported uplift intervals, in (0, 1).
    chunk_rows: most rows one ensemble forward takes (bounds memory for large batches).
    ledger: the daily caps (``models.intervention.Ledger``: a ``BudgetLedger``, or the
        server's shared budget client); None: no caps.
    """

    def __init__(
        self,
        config: InterventionConfig,
        ensemble: Any,
        *,
        level: float = 0.95,
        chunk_rows: int = 1024,
        ledger: Ledger | None = None,
    ) -> None:
        from nudgeserve.models.learn.uplift_ensemble import UpliftEnsemble

        if not isinstance(config, InterventionConfig):
            raise TypeError(f"config must be an InterventionConfig, got {type(config).__name__}")
        if not isinstance(ensemble, UpliftEnsemble):
            raise TypeError(f"ensemble must be an UpliftEnsemble, got {type(ensemble).__name__}")
        if tuple(config.treatments) != tuple(ensemble.treatments):
            raise ValueError(
                f"config.treatments {list(config.treatments)} differ from the ensemble's "
                f"{list(ensemble.treatments)}"
            )
        if config.objective not in HILLSTROM_OUTCOMES:
            raise ValueError(
                f"config.objective must be one of {HILLSTROM_OUTCOMES}, got {config.objective!r}"
            )
        if isinstance(level, bool) or not isinstance(level, int | float):
            raise TypeError(f"level must be a number in (0, 1), got {type(level).__name__}")
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")
        if ledger is not None and not isinstance(ledger, Ledger):
            raise TypeError(
                f"ledger must have allocate(preferences, names), got {type(ledger).__name__}"
            )
        self.config = config
        self.ensemble = ensemble
        self.level = float(level)
        self.chunk_rows = chunk_rows
        self.ledger = ledger
        self.featurizer = ensemble.featurizer
        spec = ensemble.spec
        self.numeric_names = tuple(spec.numeric_names)
        self.categorical_names = tuple(spec.categorical_names)
        self.treatments = tuple(config.treatments)
        self.policy_label = intervention_policy_label(config)

    @property
    def replay_width(self) -> int:
        """F, the length of a replay vector."""
        return len(self.numeric_names) + len(self.categorical_names)

    @property
    def field_names(self) -> tuple[str, ...]:
        """The customer columns a batch must carry."""
        return self.numeric_names + self.categorical_names

    # -- scoring ----------------------------------------------------------------------

    def featurize(self, columns: Mapping[str, Any]) -> tuple[Any, np.ndarray]:
        """``(HillstromFeatures, replay float32[B, F])`` of raw customer columns (the
        featurizer's errors name the bad column)."""
        features = self.featurizer.transform(columns)
        n = features.categorical.shape[0]
        replay = np.empty((n, self.replay_width), dtype=np.float32)
        for j, name in enumerate(self.numeric_names):
            replay[:, j] = np.asarray(columns[name], dtype=np.float32)
        replay[:, len(self.numeric_names) :] = features.categorical
        return features, replay

    def predict(self, features: Any) -> Any:
        """The ensemble's ``EnsemblePrediction`` for ``features``, ``chunk_rows`` at a time."""
        from nudgeserve.models import HillstromFeatures
        from nudgeserve.models.learn.uplift_ensemble import EnsemblePrediction

        n = features.categorical.shape[0]
        if n <= self.chunk_rows:
            return self.ensemble.predict(features)
        parts = [
            self.ensemble.predict(
                HillstromFeatures(
                    features.categorical[start : start + self.chunk_rows],
                    features.numeric[start : start + self.chunk_rows],
                )
            ).members
            for start in range(0, n, self.chunk_rows)
        ]
        first = self.ensemble
        return EnsemblePrediction(
            np.concatenate(parts, axis=1),
            first.treatments,
            first.control_index,
            dict(first.metadata.interval_scale),
        )

    def decide(
        self,
        columns: Mapping[str, Any],
        unit_ids: Any,
        *,
        spend_budget: bool = True,
        value_at_stake: np.ndarray | None = None,
    ) -> InterventionBatch:
        """Decide for a batch of customers.

        columns: ``{field: [B] values}`` (``field_names``); unit_ids: [B] str or int ids,
        the randomisation unit (the same id always lands in the same holdout / exploration
        branch). spend_budget: False scores without touching the daily caps (a planning
        preview: every treatment counts as available and nothing is spent).
        value_at_stake: float[B] >= 0 money the defect puts at risk (default
        ``value_per_unit``).
        """
        features, replay = self.featurize(columns)
        n = replay.shape[0]
        ids = _unit_ids(unit_ids, n)
        prediction = self.predict(features)
        return self.decide_prediction(
            prediction, ids, replay, spend_budget=spend_budget, value_at_stake=value_at_stake
        )

    def decide_prediction(
        self,
        prediction: Any,
        unit_ids: Any,
        replay: np.ndarray,
        *,
        spend_budget: bool = True,
        value_at_stake: np.ndarray | None = None,
    ) -> InterventionBatch:
        """``decide`` after the model (``featurize`` then ``predict`` done by the caller,
        e.g. to time each stage): the rule and the intervals for B units."""
        decisions = decide_from_ensemble(
            self.config,
            unit_ids,
            prediction,
            value_at_stake=value_at_stake,
            ledger=self.ledger if spend_budget else None,
        )
        interval = prediction.uplift(self.config.objective, self.level)
        mean = prediction.mean()
        return InterventionBatch(
            config=self.config,
            level=self.level,
            decisions=decisions,
            uplift=interval.mean,
            sd=interval.sd,
            low=interval.low,
            high=interval.high,
            baseline=interval.baseline,
            predicted={o: mean.outcome(o) for o in HILLSTROM_OUTCOMES},
            replay=replay,
        )

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 64)) -> None:
        """One decision per batch size without spending budget (first-call costs)."""
        self.ensemble.warmup(tuple(min(b, self.chunk_rows) for b in batch_sizes))
        example = {
            "recency": [1.0],
            "history": [100.0],
            "mens": [1.0],
            "womens": [0.0],
            "newbie": [0.0],
            "history_segment": ["2) $100 - $200"],
            "zip_code": ["Urban"],
            "channel": ["Web"],
        }
        for b in batch_sizes:
            self.decide({k: v * b for k, v in example.items()}, np.arange(b), spend_budget=False)

    # -- replaying logged decisions ---------------------------------------------------

    def replay_prediction(self, replay: np.ndarray) -> Any:
        """The ensemble's prediction for logged replay vectors float32[n, F]."""
        from nudgeserve.models import HillstromFeatures

        x = np.asarray(replay, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.replay_width:
            raise ValueError(
                f"replay vectors must have shape [n, {self.replay_width}], got {x.shape}"
            )
        n, n_num = x.shape[0], len(self.numeric_names)
        # The categorical columns are logged hashed; the placeholders only fill the
        # featurizer's string columns, whose buckets are replaced by the logged ones.
        columns: dict[str, Any] = {name: x[:, j] for j, name in enumerate(self.numeric_names)}
        columns.update({name: np.full(n, "", dtype=object) for name in self.categorical_names})
        numeric = self.featurizer.transform(columns).numeric
        return self.predict(HillstromFeatures(x[:, n_num:].astype(np.int64), numeric))

    def _ours(self, record: Any) -> bool:
        return (
            len(record.features) == self.replay_width
            and len(record.candidates) == len(self.treatments)
            and set(record.candidates) == set(self.treatments)
        )

    def annotate(self, records: Sequence[Any]) -> dict[str, list[list[float]]]:
        """The export's ``annotate`` hook (``decisions.export_parquet``): per exported row
        (one per decision slot), over the row's ``candidates``: ``eval_probs`` (the rule's
        choice, one-hot) and ``reward_hat_<outcome>`` (predicted outcome per action).
        Records that are not intervention decisions of these treatments get NaN rows."""
        ours = [i for i, r in enumerate(records) if self._ours(r)]
        per_record: dict[int, dict[str, list[float]]] = {}
        if ours:
            replay = np.asarray([records[i].features for i in ours], dtype=np.float32)
            prediction = self.replay_prediction(replay)
            decisions = decide_from_ensemble(self.config, np.asarray(ours), prediction, ledger=None)
            mean = prediction.mean()
            index = {t: j for j, t in enumerate(self.treatments)}
            for row, i in enumerate(ours):
                order = [index[c] for c in records[i].candidates]
                choice = int(decisions.policy_action[row])
                cols = {"eval_probs": [1.0 if j == choice else 0.0 for j in order]}
                for o in HILLSTROM_OUTCOMES:
                    values = mean.outcome(o)[row]
                    cols[f"reward_hat_{o}"] = [float(values[j]) for j in order]
                per_record[i] = cols
        names = ["eval_probs", *(f"reward_hat_{o}" for o in HILLSTROM_OUTCOMES)]
        out: dict[str, list[list[float]]] = {name: [] for name in names}
        for i, record in enumerate(records):
            cols = per_record.get(i)
            for _ in record.actions:
                for name in names:
                    out[name].append(
                        cols[name] if cols is not None else [math.nan] * len(record.candidates)
                    )
        return out


# ------------------------------------------------------------------------------ impact


def impact_table(logged: Any, engine: InterventionEngine, *, feedback_only: bool) -> Any:
    """The pyarrow Table ``impact_logs.impact_from_logs`` reads, from logged decisions.

    logged: ``decisions.LoggedDecisions`` of one intervention experiment (its records and
    joined feedback). feedback_only: keep only decisions with at least one joined
    ``visit``/``conversion``/``spend`` event (a replay sends feedback only for the
    decisions whose outcome it knows; the others' outcomes are unknown, not zero).
    Decisions that are not intervention decisions of the engine's treatments are left out.
    Raises ValueError when no decision is left.
    """
    import pyarrow as pa

    records = [r for r in logged.records if engine._ours(r)]
    outcomes = {o: logged_totals(logged, records, o) for o in HILLSTROM_OUTCOMES}
    if feedback_only:
        events = sum(counts for counts, _ in outcomes.values())
        keep = np.flatnonzero(events > 0)
    else:
        keep = np.arange(len(records))
    if keep.shape[0] == 0:
        what = "with joined feedback " if feedback_only else ""
        raise NoDecisions(f"no intervention decisions {what}to analyse")
    records = [records[i] for i in keep.tolist()]
    annotations = engine.annotate(records)
    columns: dict[str, Any] = {
        "decision_id": pa.array([r.decision_id for r in records], pa.string()),
        "unit_id": pa.array([r.unit_id for r in records], pa.string()),
        "action": pa.array([r.candidates.index(r.actions[0]) for r in records], pa.int64()),
        "propensity": pa.array([r.propensities[0] for r in records], pa.float64()),
        "candidates": pa.array([list(r.candidates) for r in records], pa.list_(pa.string())),
        "reason": pa.array([r.variant for r in records], pa.string()),
    }
    for o, (_, value) in outcomes.items():
        columns[o] = pa.array(value[keep], pa.float64())
    for name, rows in annotations.items():
        columns[name] = pa.array(rows, pa.list_(pa.float64()))
    return pa.table(columns)


def logged_totals(logged: Any, records: Sequence[Any], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(events int64[n], summed value float64[n]) of ``kind`` per record of ``records``
    (joined feedback of the decision as a whole and of its chosen action)."""
    events = np.zeros(len(records), dtype=np.int64)
    value = np.zeros(len(records))
    for i, rec in enumerate(records):
        for action, k, total, count in logged.feedback.get(rec.decision_id, ()):
            if k == kind and (action is None or action in rec.actions):
                events[i] += count
                value[i] += total
    return events, value


def experiment_impact(
    logged: Any,
    engine: InterventionEngine,
    *,
    experiment: str,
    feedback_only: bool = False,
    n_bootstrap: int = 200,
    qini_resamples: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """The impact report of one intervention experiment from its logged decisions.

    Returns ``{experiment, decisions, analysed, feedback_only, randomized, by_reason,
    config, report, text}``: ``report`` is the ``models.impact.ImpactReport`` (ATE against
    the holdout with 95% intervals, effect on the targeted, the rule against treat-nobody /
    treat-everybody / random targeting by IPS, SNIPS and DR, value lost to missed and to
    unnecessary interventions), ``text`` its tables.
    """
    from nudgeserve.models.evaluation.impact_logs import impact_from_logs

    table = impact_table(logged, engine, feedback_only=feedback_only)
    reasons = table["reason"].to_pylist()
    by_reason = {r: reasons.count(r) for r in REASONS if r in reasons}
    report = impact_from_logs(
        table,
        engine.config,
        n_bootstrap=n_bootstrap,
        qini_resamples=qini_resamples,
        seed=seed,
        title=f"Causal impact of experiment {experiment!r} from the server's decision log",
    )
    return {
        "experiment": experiment,
        "decisions": len(logged.records),
        "analysed": table.num_rows,
        "feedback_only": feedback_only,
        "randomized": sum(by_reason.get(r, 0) for r in RANDOMIZED_REASONS),
        "by_reason": by_reason,
        "config": engine.config,
        "report": report,
        "text": report.to_text(),
    }
