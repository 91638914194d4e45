"""Causal impact of interventions, from randomised data and logged decisions.

Inputs are arrays over ``n`` units (customers or sessions), ``T`` actions (one of them the
control = no intervention):

- ``action: int64[n]`` what each unit got; ``propensity: float64[n]`` the design's
  probability of that action (the logged one; ``1/T`` for a uniform experiment);
- ``outcomes: {name: float64[n]}`` the observed outcomes (visit, conversion, spend);
- ``policy_action: int64[n]`` what the decision rule chooses for the unit (for every
  unit, also those held out or explored);
- ``predicted: {name: float64[n, T]}`` the model's predicted outcome under each action
  (optional: enables doubly robust estimates and model-based losses);
- ``randomized: bool[n]`` the units whose action did not depend on the model (the
  holdout and exploration branches; all of a randomised experiment).

The report (``impact_report``):

- ATE of each treatment against the control: difference in means on the randomised
  units (``evaluation.ate_difference_in_means``, Neyman 95% interval);
- effect on the targeted (ATT): the same, restricted to the units the rule targets with
  that treatment (a subgroup defined by covariates, randomised within);
- the rule's value against "treat nobody", "treat everybody with t" and random targeting
  at the rule's own treatment rates: IPS, SNIPS and DR (``ope.evaluate``) on each outcome
  and on the net value ``value_per_unit * objective - cost``; and the paired differences
  rule minus each baseline, with intervals from the same Poisson bootstrap;
- value lost to missed interventions (units the rule declined whose best predicted net
  value is positive) and to unnecessary ones (treated units whose predicted net value of
  what they got is <= 0): by the model, and by IPS/DR over the randomised actions;
- Qini of the model's uplift against random rankings (``evaluation.qini_report``).

Paired differences and losses average per-unit AIPW scores
``G_i(a) = q_i(a) + [a_i = a] (y_i - q_i(a)) / p_i`` (``q = 0`` without a model: IPS):
the value of a policy ``pi`` is ``mean_i sum_a pi_i(a) G_i(a)``, which is exactly
``ope``'s DR (IPS) estimate, so differences are differences of the reported values; their
intervals use ``ope.bootstrap_sums`` with the same keys and seed, hence the same resamples.

``hillstrom_impact`` runs it on the Hillstrom experiment (uniform 1/3 propensities) and
adds the experiment's own difference in means on all 64,000 customers and on the held-out
test split, Qini curves with bands, effects by segment and the uplift intervals'
calibration. ``impact_from_logs`` builds the inputs from an exported decision log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from nudgeserve.models.evaluation.metrics import ate_difference_in_means, qini_curve, qini_report
from nudgeserve.models.evaluation.ope import bootstrap_sums, decision_keys, evaluate
from nudgeserve.models.learn.datasets import (
    HillstromData,
    hillstrom_strata,
    load_hillstrom,
    stratified_split,
)
from nudgeserve.models.learn.training import _format_table
from nudgeserve.models.learn.uplift_ensemble import (
    CalibrationSummary,
    UpliftEnsemble,
    calibration_summary,
    calibration_table,
    load_uplift_ensemble,
)
from nudgeserve.models.policies.intervention import (
    EXPLORE,
    HOLDOUT,
    REASONS,
    InterventionConfig,
    _float_array,
    assign_branches,
    decide_from_ensemble,
)
from nudgeserve.models.specs import HILLSTROM_OUTCOMES

__all__ = [
    "Effect",
    "HillstromImpactReport",
    "ImpactReport",
    "LogArrays",
    "PolicyDifference",
    "PolicyValue",
    "QiniBand",
    "QiniResult",
    "SegmentEffect",
    "ValueLoss",
    "aipw_scores",
    "hillstrom_impact",
    "impact_from_logs",
    "impact_report",
    "logs_arrays",
    "qini_band",
    "read_decision_logs",
    "segment_effects",
]

NET_VALUE = "net value"
ESTIMATORS = ("ips", "snips", "dr")
_Z95 = 1.959964


class Effect(msgspec.Struct, frozen=True, kw_only=True):
    """Difference in means of ``outcome`` between ``treatment`` and the control arm in
    ``population``; ``low``/``high`` is the 95% Neyman interval."""

    treatment: str
    outcome: str
    population: str
    estimate: float
    se: float
    low: float
    high: float
    n_treated: int
    n_control: int
    mean_treated: float
    mean_control: float


class PolicyValue(msgspec.Struct, frozen=True, kw_only=True):
    """One policy's value (mean reward per unit) by one estimator, with its interval."""

    policy: str
    outcome: str
    estimator: str
    estimate: float
    low: float
    high: float
    ess: float
    treated_share: float
    warnings: tuple[str, ...] = ()


class PolicyDifference(msgspec.Struct, frozen=True, kw_only=True):
    """The rule's value minus ``baseline``'s (paired, per unit), with its interval."""

    baseline: str
    outcome: str
    estimator: str
    estimate: float
    low: float
    high: float


class ValueLoss(msgspec.Struct, frozen=True, kw_only=True):
    """Net value lost per unit of the population to ``kind`` decisions.

    kind: ``missed`` (declined, best predicted net value > 0) or ``unnecessary``
        (treated, predicted net value of the action taken <= 0).
    n_units / share: units in that category and their share of all units.
    model_estimate: by the model's predicted uplift (money per unit of population).
    estimate / low / high: by DR (IPS without a model) over the randomised actions: the
        net value treating (missed) or not treating (unnecessary) those units would have
        added; negative = the decision was right on average.
    """

    kind: str
    estimator: str
    n_units: int
    share: float
    model_estimate: float
    estimate: float
    low: float
    high: float


class QiniResult(msgspec.Struct, frozen=True, kw_only=True):
    """Targeting ``treatment`` by the model's predicted uplift vs random rankings.

    qini / low / high: the model's Qini coefficient with a bootstrap interval;
    random_low / random_high: the 95% range of random rankings' Qini;
    p_random_ge_model: share of random rankings at least as good as the model.
    """

    treatment: str
    outcome: str
    population: str
    n: int
    qini: float
    low: float
    high: float
    random_mean: float
    random_low: float
    random_high: float
    qini_normalized: float
    p_random_ge_model: float


class QiniBand(msgspec.Struct, frozen=True, kw_only=True):
    """A Qini curve on a fixed grid of fractions targeted, for plotting.

    fraction: float[G]; model: the model's curve; model_low/high: its bootstrap 95% band;
    random_low/high: the 95% band of random rankings' curves; random_line: the straight
    line of random targeting (fraction x incremental outcome of targeting everyone).
    """

    treatment: str
    outcome: str
    fraction: list[float]
    model: list[float]
    model_low: list[float]
    model_high: list[float]
    random_line: list[float]
    random_low: list[float]
    random_high: list[float]


class SegmentEffect(msgspec.Struct, frozen=True, kw_only=True):
    """Observed and predicted effect of ``treatment`` in one segment of customers."""

    feature: str
    segment: str
    treatment: str
    outcome: str
    estimate: float
    low: float
    high: float
    n_treated: int
    n_control: int
    predicted: float


def _fmt(x: float, digits: int) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.{digits}f}"


def _digits(outcome: str) -> int:
    return 2 if outcome == "spend" else 4


class ImpactReport(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``impact_report`` measured; ``to_text()`` renders it as tables."""

    title: str
    treatments: tuple[str, ...]
    control: str
    objective: str
    value_per_unit: float
    costs: dict[str, float]
    n: int
    n_randomized: int
    policy_shares: dict[str, float]
    ate: tuple[Effect, ...]
    att: tuple[Effect, ...]
    policy_values: tuple[PolicyValue, ...]
    differences: tuple[PolicyDifference, ...]
    losses: tuple[ValueLoss, ...]
    qini: tuple[QiniResult, ...]
    notes: tuple[str, ...] = ()

    def to_text(self) -> str:
        costs = ", ".join(f"{t} {self.costs.get(t, 0.0):g}" for t in self.treatments)
        shares = ", ".join(f"{t} {s:.1%}" for t, s in self.policy_shares.items())
        lines = [
            f"== {self.title} ==",
            f"{self.n} units, {self.n_randomized} randomised; objective {self.objective} "
            f"valued {self.value_per_unit:g} per unit; costs: {costs}",
            f"the rule's choices: {shares}",
        ]
        if self.ate:
            lines += ["", "Average treatment effect vs control (difference in means, 95% CI)"]
            lines.append(_effect_table(self.ate))
        if self.att:
            lines += [
                "",
                "Effect on the targeted: units the rule targets with that treatment "
                "(difference in means on their randomised rows, 95% CI)",
            ]
            lines.append(_effect_table(self.att))
        if self.policy_values:
            lines += ["", "Policy values per unit (95% bootstrap CI)"]
            by_row: dict[tuple[str, str], dict[str, PolicyValue]] = {}
            for v in self.policy_values:
                by_row.setdefault((v.policy, v.outcome), {})[v.estimator] = v
            estimators = [e for e in ESTIMATORS if any(e in r for r in by_row.values())]
            rows = []
            for (policy, outcome), found in by_row.items():
                d = _digits(outcome)
                first = next(iter(found.values()))
                rows.append(
                    [policy, outcome, f"{first.treated_share:.1%}"]
                    + [
                        f"{_fmt(found[e].estimate, d)} [{_fmt(found[e].low, d)}, "
                        f"{_fmt(found[e].high, d)}]"
                        if e in found
                        else "-"
                        for e in estimators
                    ]
                    + [f"{first.ess:.0f}"]
                )
            lines.append(
                _format_table(
                    ["policy", "outcome", "treated", *(e.upper() for e in estimators), "ESS"], rows
                )
            )
            warned = sorted({w for v in self.policy_values for w in v.warnings})
            lines += [f"warning: {w}" for w in warned]
        if self.differences:
            lines += ["", "The rule minus each baseline (paired, 95% bootstrap CI)"]
            rows = [
                [
                    d.baseline,
                    d.outcome,
                    d.estimator,
                    f"{_fmt(d.estimate, _digits(d.outcome))} [{_fmt(d.low, _digits(d.outcome))}, "
                    f"{_fmt(d.high, _digits(d.outcome))}]",
                    "better" if d.low > 0 else "worse" if d.high < 0 else "no evidence",
                ]
                for d in self.differences
            ]
            lines.append(
                _format_table(
                    ["baseline", "outcome", "estimator", "rule - baseline", "rule is"], rows
                )
            )
        if self.losses:
            lines += [
                "",
                "Value at stake in the rule's mistakes (net value per unit of population; "
                "randomised estimate > 0 means the decision lost value)",
            ]
            rows = [
                [
                    loss.kind,
                    f"{loss.n_units} ({loss.share:.1%})",
                    _fmt(loss.model_estimate, 4),
                    loss.estimator,
                    f"{_fmt(loss.estimate, 4)} [{_fmt(loss.low, 4)}, {_fmt(loss.high, 4)}]",
                ]
                for loss in self.losses
            ]
            lines.append(
                _format_table(
                    ["kind", "units", "model estimate", "estimator", "randomised estimate"], rows
                )
            )
        if self.qini:
            lines += ["", "Targeting by predicted uplift vs random rankings (Qini, per unit)"]
            lines.append(_qini_table(self.qini))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _effect_table(effects: Sequence[Effect]) -> str:
    rows = []
    for e in effects:
        d = _digits(e.outcome)
        rows.append(
            [
                e.population,
                e.treatment,
                e.outcome,
                f"{_fmt(e.estimate, d)} [{_fmt(e.low, d)}, {_fmt(e.high, d)}]",
                f"{_fmt(e.mean_treated, d)} vs {_fmt(e.mean_control, d)}",
                f"{e.n_treated} / {e.n_control}",
            ]
        )
    return _format_table(
        ["population", "treatment", "outcome", "effect [95% CI]", "treated vs control", "n t / c"],
        rows,
    )


def _qini_table(results: Sequence[QiniResult]) -> str:
    rows = []
    for q in results:
        d = _digits(q.outcome) + 1
        rows.append(
            [
                q.treatment,
                q.outcome,
                f"{_fmt(q.qini, d)} [{_fmt(q.low, d)}, {_fmt(q.high, d)}]",
                f"[{_fmt(q.random_low, d)}, {_fmt(q.random_high, d)}]",
                f"{q.qini_normalized:.3f}",
                f"{q.p_random_ge_model:.3f}",
                "yes" if q.p_random_ge_model < 0.05 else "no",
            ]
        )
    return _format_table(
        [
            "treatment",
            "outcome",
            "model Qini [95% CI]",
            "random rankings 95% range",
            "Qini/perfect",
            "P(random >= model)",
            "beats random (P < 0.05)",
        ],
        rows,
    )


# ---------------------------------------------------------------------------- helpers


def _as_int(name: str, x: Any, n: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        raise ValueError(f"{name} must have shape ({n if n is not None else 'n'},), got {a.shape}")
    return a.astype(np.int64)


def aipw_scores(
    action: np.ndarray, propensity: np.ndarray, y: np.ndarray, q: np.ndarray | None, n_actions: int
) -> np.ndarray:
    """float64[n, T] AIPW scores G_i(a) = q_i(a) + [a_i = a] (y_i - q_i(a)) / p_i.

    q: float64[n, T] predicted outcome per action, or None (then IPS: y_i [a_i = a] / p_i).
    ``mean_i sum_a pi_i(a) G_i(a)`` is the DR (IPS) value of the policy ``pi``.
    """
    n = action.shape[0]
    base = np.zeros((n, n_actions)) if q is None else np.array(q, dtype=np.float64)
    rows = np.arange(n)
    base[rows, action] += (y - base[rows, action]) / propensity
    return base


def _bootstrap(
    stats: np.ndarray,
    combine: Callable[[np.ndarray], np.ndarray],
    keys: np.ndarray,
    n_bootstrap: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """A statistic of column sums with a Poisson-bootstrap percentile interval.

    stats: float64[n, k] per-row columns; combine(sums: float64[m, k]) -> float64[m].
    The replicates are ``ope.bootstrap_sums`` of the same keys and seed as the values.
    """
    point = float(combine(stats.sum(axis=0)[None, :])[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = combine(bootstrap_sums(keys, stats, n_bootstrap, seed))
    draws = draws[np.isfinite(draws)]
    if not draws.size:
        return point, math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return point, float(low), float(high)


def _paired_mean(
    per_row: np.ndarray, keys: np.ndarray, n_bootstrap: int, seed: int
) -> tuple[float, float, float]:
    """Mean of ``per_row`` over all rows, with its bootstrap interval."""
    stats = np.stack([np.ones(per_row.shape[0]), per_row], axis=1)
    return _bootstrap(stats, lambda s: s[:, 1] / s[:, 0], keys, n_bootstrap, seed)


def _effect(
    y: np.ndarray, action: np.ndarray, t: int, c: int, names: Sequence[str], outcome: str, pop: str
) -> Effect | None:
    if np.count_nonzero(action == t) < 2 or np.count_nonzero(action == c) < 2:
        return None
    e = ate_difference_in_means(y, action, t, c)
    return Effect(
        treatment=names[t],
        outcome=outcome,
        population=pop,
        estimate=e.ate,
        se=e.se,
        low=e.low,
        high=e.high,
        n_treated=e.n_treated,
        n_control=e.n_control,
        mean_treated=e.mean_treated,
        mean_control=e.mean_control,
    )


def _one_hot(index: np.ndarray, n_actions: int) -> np.ndarray:
    out = np.zeros((index.shape[0], n_actions))
    out[np.arange(index.shape[0]), index] = 1.0
    return out


# ----------------------------------------------------------------------------- report


def impact_report(
    config: InterventionConfig,
    *,
    action: np.ndarray,
    propensity: np.ndarray,
    outcomes: Mapping[str, np.ndarray],
    policy_action: np.ndarray,
    predicted: Mapping[str, np.ndarray] | None = None,
    randomized: np.ndarray | None = None,
    bootstrap_keys: np.ndarray | None = None,
    n_bootstrap: int = 1000,
    qini_resamples: int = 200,
    seed: int = 0,
    title: str = "Causal impact",
) -> ImpactReport:
    """The impact report (module docstring) of the rule configured by ``config``.

    action, policy_action: int64[n] indices into ``config.treatments``;
    propensity: float64[n] in (0, 1]; outcomes: {name: float64[n]}, must include
    ``config.objective``; predicted: {name: float64[n, T]} (optional);
    randomized: bool[n] (default: every unit); bootstrap_keys: uint64[n] stable row keys
    (``ope.decision_keys`` of decision ids; default the row index).
    """
    if not isinstance(config, InterventionConfig):
        raise TypeError(f"config must be an InterventionConfig, got {type(config).__name__}")
    names = tuple(config.treatments)
    n_actions, c = len(names), config.control_index
    action = _as_int("action", action)
    n = action.shape[0]
    if n == 0:
        raise ValueError("action is empty: there are no units to analyse")
    if action.min() < 0 or action.max() >= n_actions:
        raise ValueError(f"action must index config.treatments [0, {n_actions})")
    policy_action = _as_int("policy_action", policy_action, n)
    if policy_action.min() < 0 or policy_action.max() >= n_actions:
        raise ValueError(f"policy_action must index config.treatments [0, {n_actions})")
    propensity = _float_array("propensity", propensity, (n,))
    if propensity.min() <= 0 or propensity.max() > 1:
        raise ValueError("propensity must be in (0, 1]")
    if not isinstance(outcomes, Mapping) or not outcomes:
        raise TypeError("outcomes must be a non-empty mapping of name -> float[n]")
    ys = {name: _float_array(f"outcomes[{name!r}]", y, (n,)) for name, y in outcomes.items()}
    if config.objective not in ys:
        raise ValueError(
            f"outcomes must include the objective {config.objective!r}; got {sorted(ys)}"
        )
    qs: dict[str, np.ndarray] = {}
    if predicted is not None:
        for name, q in predicted.items():
            if name in ys:
                qs[name] = _float_array(f"predicted[{name!r}]", q, (n, n_actions))
    rand = np.ones(n, dtype=bool) if randomized is None else np.asarray(randomized)
    if rand.dtype != bool or rand.shape != (n,):
        raise ValueError(f"randomized must be bool[{n}], got {rand.dtype} {rand.shape}")
    keys = (
        np.arange(n, dtype=np.uint64)
        if bootstrap_keys is None
        else np.asarray(bootstrap_keys).astype(np.uint64)
    )
    if keys.shape != (n,):
        raise ValueError(f"bootstrap_keys must have shape ({n},), got {keys.shape}")
    notes: list[str] = []

    # Net value: the objective in money minus what the intervention cost.
    cost = config.cost_vector()
    v = config.value_per_unit
    ys[NET_VALUE] = v * ys[config.objective] - cost[action]
    if config.objective in qs:
        qs[NET_VALUE] = v * qs[config.objective] - cost[None, :]
    outcome_names = [o for o in ys if o != NET_VALUE] + [NET_VALUE]

    # --- effects on randomised units
    ate, att = [], []
    ra = action[rand]
    for t in range(n_actions):
        if t == c:
            continue
        for o in outcome_names:
            if o == NET_VALUE:
                continue
            e = _effect(ys[o][rand], ra, t, c, names, o, "randomised")
            if e is not None:
                ate.append(e)
            targeted = rand & (policy_action == t)
            e = _effect(ys[o][targeted], action[targeted], t, c, names, o, "targeted by rule")
            if e is not None:
                att.append(e)
    if not ate:
        notes.append("no randomised unit pairs of a treatment and the control: no ATE")

    # --- policy values
    shares = np.bincount(policy_action, minlength=n_actions) / n
    policies: dict[str, np.ndarray] = {"rule": _one_hot(policy_action, n_actions)}
    policies["treat nobody"] = _one_hot(np.full(n, c), n_actions)
    for t in range(n_actions):
        if t != c:
            policies[f"treat all: {names[t]}"] = _one_hot(np.full(n, t), n_actions)
    policies["random at rule's rates"] = np.broadcast_to(shares, (n, n_actions))
    values: list[PolicyValue] = []
    differences: list[PolicyDifference] = []
    for o in outcome_names:
        q = qs.get(o)
        estimators = ESTIMATORS if q is not None else ("ips", "snips")
        for name, dist in policies.items():
            res = evaluate(
                action,
                ys[o],
                propensity,
                dist,
                reward_hat=q,
                estimators=estimators,
                n_bootstrap=n_bootstrap,
                seed=seed,
                bootstrap_keys=keys,
            )
            treated = float(1.0 - dist[:, c].mean())
            for est, r in res.items():
                values.append(
                    PolicyValue(
                        policy=name,
                        outcome=o,
                        estimator=est,
                        estimate=r.estimate,
                        low=r.ci_low,
                        high=r.ci_high,
                        ess=r.ess,
                        treated_share=treated,
                        warnings=r.warnings,
                    )
                )
        scores = aipw_scores(action, propensity, ys[o], q, n_actions)
        estimator = "dr" if q is not None else "ips"
        rule_terms = (policies["rule"] * scores).sum(axis=1)
        for name, dist in policies.items():
            if name == "rule":
                continue
            diff = rule_terms - (dist * scores).sum(axis=1)
            est, low, high = _paired_mean(diff, keys, n_bootstrap, seed)
            differences.append(
                PolicyDifference(
                    baseline=name, outcome=o, estimator=estimator, estimate=est, low=low, high=high
                )
            )

    # --- losses: missed and unnecessary interventions, in net value
    losses: list[ValueLoss] = []
    if config.objective in qs:
        q_net = qs[NET_VALUE]
        gain = q_net - q_net[:, c : c + 1]  # predicted net value of each action vs none
        scores = aipw_scores(action, propensity, ys[NET_VALUE], q_net, n_actions)
        best = np.argmax(np.where(np.arange(n_actions) == c, -np.inf, gain), axis=1)
        best_gain = gain[np.arange(n), best]
        missed = (policy_action == c) & (best_gain > 0)
        rows = np.arange(n)
        treat_missed = np.where(missed, scores[rows, best] - scores[:, c], 0.0)
        est, low, high = _paired_mean(treat_missed, keys, n_bootstrap, seed)
        losses.append(
            ValueLoss(
                kind="missed",
                estimator="dr",
                n_units=int(missed.sum()),
                share=float(missed.mean()),
                model_estimate=float(np.where(missed, best_gain, 0.0).mean()),
                estimate=est,
                low=low,
                high=high,
            )
        )
        taken_gain = gain[rows, action]
        unnecessary = (action != c) & (taken_gain <= 0)
        # The effect of treatment t on the units it reached where the model predicted no
        # gain is estimated on every unit of that covariate-defined group S_t (randomised
        # within), then scaled by the units of S_t that got t. Positive = the e-mails
        # destroyed net value (not treating them would have been better).
        columns = [np.ones(n)]
        for t in range(n_actions):
            if t == c:
                continue
            group = gain[:, t] <= 0
            columns += [
                (unnecessary & (action == t)).astype(np.float64),
                group.astype(np.float64),
                np.where(group, scores[:, c] - scores[:, t], 0.0),
            ]

        def combine(s: np.ndarray) -> np.ndarray:
            total = np.zeros(s.shape[0])
            for j in range(1, s.shape[1], 3):
                with np.errstate(divide="ignore", invalid="ignore"):
                    total += np.where(s[:, j + 1] > 0, s[:, j] * s[:, j + 2] / s[:, j + 1], 0.0)
            return total / s[:, 0]

        est, low, high = _bootstrap(np.stack(columns, axis=1), combine, keys, n_bootstrap, seed)
        losses.append(
            ValueLoss(
                kind="unnecessary",
                estimator="dr",
                n_units=int(unnecessary.sum()),
                share=float(unnecessary.mean()),
                model_estimate=float(np.where(unnecessary, -taken_gain, 0.0).mean()),
                estimate=est,
                low=low,
                high=high,
            )
        )
    else:
        notes.append(
            f"no predicted {config.objective!r} per action: losses to missed and unnecessary "
            "interventions need the model's predictions"
        )

    # --- Qini on randomised treated/control pairs
    qini: list[QiniResult] = []
    for o in outcome_names:
        if o == NET_VALUE or o not in qs:
            continue
        uplift = qs[o] - qs[o][:, c : c + 1]
        for t in range(n_actions):
            if t == c:
                continue
            pair = rand & ((action == t) | (action == c))
            treated = action[pair] == t
            if treated.sum() < 2 or (~treated).sum() < 2:
                continue
            qini.append(
                _qini_result(
                    uplift[pair, t],
                    ys[o][pair],
                    treated,
                    names[t],
                    o,
                    "randomised",
                    qini_resamples,
                    seed,
                )
            )
    return ImpactReport(
        title=title,
        treatments=names,
        control=config.control,
        objective=config.objective,
        value_per_unit=v,
        costs={t: float(cost[i]) for i, t in enumerate(names)},
        n=n,
        n_randomized=int(rand.sum()),
        policy_shares={t: float(shares[i]) for i, t in enumerate(names)},
        ate=tuple(ate),
        att=tuple(att),
        policy_values=tuple(values),
        differences=tuple(differences),
        losses=tuple(losses),
        qini=tuple(qini),
        notes=tuple(notes),
    )


def _qini_result(
    uplift: np.ndarray,
    y: np.ndarray,
    treated: np.ndarray,
    treatment: str,
    outcome: str,
    population: str,
    resamples: int,
    seed: int,
) -> QiniResult:
    r = qini_report(uplift, y, treated, n_random=resamples, n_resamples=resamples, seed=seed)
    q, rq = r["qini"], r["random_qini"]
    return QiniResult(
        treatment=treatment,
        outcome=outcome,
        population=population,
        n=int(y.shape[0]),
        qini=q.estimate,
        low=q.low,
        high=q.high,
        random_mean=rq.estimate,
        random_low=rq.low,
        random_high=rq.high,
        qini_normalized=float(r["qini_normalized"]),
        p_random_ge_model=float(r["p_random_ge_model"]),
    )


def qini_band(
    uplift: np.ndarray,
    y: np.ndarray,
    treated: np.ndarray,
    *,
    treatment: str,
    outcome: str,
    grid: int = 101,
    n_resamples: int = 200,
    seed: int = 0,
) -> QiniBand:
    """The model's Qini curve (``evaluation.qini_curve``) on ``grid`` fractions with a
    bootstrap band, and the band of random rankings, for plotting.

    uplift: float[n] predicted uplift; y: float[n]; treated: bool[n] (False = control).
    """
    uplift = np.asarray(uplift, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    treated = np.asarray(treated, dtype=bool)
    xs = np.linspace(0.0, 1.0, grid)
    rng = np.random.default_rng(seed)

    def on_grid(scores: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is None:
            f, q = qini_curve(scores, y, treated)
        else:
            f, q = qini_curve(scores[rows], y[rows], treated[rows])
        return np.interp(xs, f, q)

    model = on_grid(uplift)
    n = y.shape[0]
    boot, rand = [], []
    for _ in range(n_resamples):
        rows = rng.integers(0, n, n)
        if treated[rows].all() or not treated[rows].any():
            continue
        boot.append(on_grid(uplift, rows))
        rand.append(on_grid(rng.random(n)))
    boot_a, rand_a = np.asarray(boot), np.asarray(rand)
    return QiniBand(
        treatment=treatment,
        outcome=outcome,
        fraction=xs.tolist(),
        model=model.tolist(),
        model_low=np.percentile(boot_a, 2.5, axis=0).tolist(),
        model_high=np.percentile(boot_a, 97.5, axis=0).tolist(),
        random_line=(xs * model[-1]).tolist(),
        random_low=np.percentile(rand_a, 2.5, axis=0).tolist(),
        random_high=np.percentile(rand_a, 97.5, axis=0).tolist(),
    )


def segment_effects(
    data: HillstromData,
    predicted_uplift: Mapping[str, np.ndarray],
    *,
    features: Sequence[str] = ("history_segment", "channel", "newbie"),
    outcomes: Sequence[str] = HILLSTROM_OUTCOMES,
) -> tuple[SegmentEffect, ...]:
    """Difference in means per segment of each feature, beside the model's mean uplift.

    predicted_uplift: {outcome: float[n, T]} the model's uplift per customer of ``data``.
    """
    control = 0  # Hillstrom's arm 0 is "No E-Mail"
    out = []
    for feature in features:
        values = np.asarray(getattr(data, feature)).astype(str)
        for segment in np.unique(values):
            rows = values == segment
            for o in outcomes:
                y = data.outcome(o)
                for t, name in enumerate(data.treatments):
                    if t == control:
                        continue
                    arm = data.treatment[rows]
                    if np.count_nonzero(arm == t) < 2 or np.count_nonzero(arm == control) < 2:
                        continue
                    e = ate_difference_in_means(y[rows], arm, t, control)
                    pair = rows & ((data.treatment == t) | (data.treatment == control))
                    out.append(
                        SegmentEffect(
                            feature=feature,
                            segment=str(segment),
                            treatment=name,
                            outcome=o,
                            estimate=e.ate,
                            low=e.low,
                            high=e.high,
                            n_treated=e.n_treated,
                            n_control=e.n_control,
                            predicted=float(predicted_uplift[o][pair, t].mean()),
                        )
                    )
    return tuple(out)


# -------------------------------------------------------------------------- Hillstrom


class HillstromImpactReport(msgspec.Struct, frozen=True, kw_only=True):
    """The Hillstrom report: the experiment's own effects, the rule on held-out customers.

    ate_all / ate_test: difference in means per e-mail and outcome on all customers and on
    the held-out test split; impact: ``impact_report`` of the rule on the test split;
    calibration: the ensemble's interval calibration on the test split; qini_bands and
    segments: what the plots draw.
    """

    config: InterventionConfig
    n_all: int
    n_test: int
    split: str
    ensemble: str
    ate_all: tuple[Effect, ...]
    ate_test: tuple[Effect, ...]
    impact: ImpactReport
    calibration: tuple[CalibrationSummary, ...]
    qini_bands: tuple[QiniBand, ...]
    segments: tuple[SegmentEffect, ...]

    def to_text(self) -> str:
        lines = [
            "== Hillstrom e-mail experiment: the experiment's own effects ==",
            f"difference in means per e-mail vs no e-mail; all {self.n_all} customers and "
            f"the {self.n_test} held-out test customers ({self.split})",
            _effect_table(self.ate_all + self.ate_test),
            "",
            self.impact.to_text(),
            "",
            f"== Uplift intervals: group calibration on the test split ({self.ensemble}) ==",
            calibration_table(self.calibration),
            "coverage: share of groups (deciles of predicted uplift per e-mail) whose "
            "observed difference in means lies within 1.96 x sqrt(model sd^2 + se^2) of the "
            "prediction; 'sampling only' ignores the model's sd.",
        ]
        return "\n".join(lines)


def _arm_effects(data: HillstromData, population: str) -> list[Effect]:
    out = []
    for t in range(len(data.treatments)):
        if t == 0:
            continue
        for o in HILLSTROM_OUTCOMES:
            e = _effect(data.outcome(o), data.treatment, t, 0, data.treatments, o, population)
            if e is not None:
                out.append(e)
    return out


def hillstrom_impact(
    config: InterventionConfig | None = None,
    *,
    ensemble: UpliftEnsemble | None = None,
    data: HillstromData | None = None,
    split: tuple[float, float, float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    n_bootstrap: int = 1000,
    qini_resamples: int = 200,
    calibration_groups: int = 10,
    seed: int = 0,
) -> HillstromImpactReport:
    """The Hillstrom report (module docstring).

    config: the rule (default ``InterventionConfig(costs={each e-mail: 0.05})``: a visit
        worth 1, an e-mail costing 0.05). Holdout and exploration shares play no part:
        the experiment's own randomisation is the data.
    ensemble: default the shipped one. data: default ``load_hillstrom()``.
    split / split_seed: must be the ensemble's training split so the test customers are
        held out (the defaults are).
    """
    if config is None:
        config = InterventionConfig(costs={"Mens E-Mail": 0.05, "Womens E-Mail": 0.05})
    if config.objective not in HILLSTROM_OUTCOMES:
        raise ValueError(
            f"config.objective must be one of {HILLSTROM_OUTCOMES} on Hillstrom, got "
            f"{config.objective!r}"
        )
    data = load_hillstrom() if data is None else data
    ensemble = load_uplift_ensemble() if ensemble is None else ensemble
    if tuple(data.treatments) != tuple(config.treatments):
        raise ValueError(
            f"config.treatments {config.treatments} differ from the data's {data.treatments}"
        )
    if data.treatments[0] != config.control:
        raise ValueError("the Hillstrom control must be 'No E-Mail' (arm 0)")
    _, _, test_rows = stratified_split(hillstrom_strata(data), split, seed=split_seed)
    test = data.take(test_rows)
    ate_all = _arm_effects(data, "all customers")
    ate_test = _arm_effects(test, "test split")

    prediction = ensemble.score(test.raw_columns())
    decisions = decide_from_ensemble(config, test_rows, prediction)
    mean = prediction.mean()
    predicted = {o: mean.outcome(o).astype(np.float64) for o in HILLSTROM_OUTCOMES}
    n_arms = len(config.treatments)
    impact = impact_report(
        config,
        action=test.treatment,
        # The experiment e-mailed each customer's arm with probability 1/3 by design.
        propensity=np.full(len(test), 1.0 / n_arms),
        outcomes={o: test.outcome(o) for o in HILLSTROM_OUTCOMES},
        policy_action=decisions.policy_action,
        predicted=predicted,
        n_bootstrap=n_bootstrap,
        qini_resamples=qini_resamples,
        seed=seed,
        title=(
            f"The decision rule on the {len(test)} held-out test customers (value per "
            f"{config.objective} {config.value_per_unit:g}, confidence {config.confidence:g}, "
            f"threshold {config.threshold:g})"
        ),
    )
    calibration = tuple(
        calibration_summary(
            prediction,
            test.treatment,
            test.outcome(o),
            o,
            split="test",
            n_groups=calibration_groups,
        )
        for o in HILLSTROM_OUTCOMES
    )
    uplift = {o: prediction.uplift(o).mean.astype(np.float64) for o in HILLSTROM_OUTCOMES}
    bands = []
    for o in HILLSTROM_OUTCOMES:
        for t in range(1, n_arms):
            pair = (test.treatment == t) | (test.treatment == 0)
            bands.append(
                qini_band(
                    uplift[o][pair, t],
                    test.outcome(o)[pair],
                    test.treatment[pair] == t,
                    treatment=config.treatments[t],
                    outcome=o,
                    n_resamples=qini_resamples,
                    seed=seed,
                )
            )
    return HillstromImpactReport(
        config=config,
        n_all=len(data),
        n_test=len(test),
        split=f"stratified {split}, split_seed {split_seed}: the ensemble's test part",
        ensemble=(
            f"{ensemble.n_members}-member bootstrap ensemble, interval scale "
            + ", ".join(f"{o} {s:.2f}" for o, s in ensemble.metadata.interval_scale.items())
        ),
        ate_all=tuple(ate_all),
        ate_test=tuple(ate_test),
        impact=impact,
        calibration=calibration,
        qini_bands=tuple(bands),
        segments=segment_effects(test, uplift),
    )


# ------------------------------------------------------------------------------- logs


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

    from nudgeserve.models.evaluation.ope import parquet_files

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
    local_action = _as_int("column 'action'", table["action"].to_numpy())
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
