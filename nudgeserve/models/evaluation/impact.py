"""Causal impact of an intervention rule, from randomised data and logged decisions.

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
  units (``effects.arm_effect``, Neyman 95% interval);
- effect on the targeted (ATT): the same, restricted to the units the rule targets with
  that treatment (a subgroup defined by covariates, randomised within);
- the rule's value against "treat nobody", "treat everybody with t" and random targeting
  at the rule's own treatment rates: IPS, SNIPS and DR (``ope.evaluate``) on each outcome
  and on the net value ``value_per_unit * objective - cost``; and the paired differences
  rule minus each baseline, with intervals from the same Poisson bootstrap;
- value lost to missed interventions (units the rule declined whose best predicted net
  value is positive) and to unnecessary ones (treated units whose predicted net value of
  what they got is <= 0): by the model, and by IPS/DR over the randomised actions;
- Qini of the model's uplift against random rankings (``qini.qini_result``).

Paired differences and losses average per-unit AIPW scores
``G_i(a) = q_i(a) + [a_i = a] (y_i - q_i(a)) / p_i`` (``q = 0`` without a model: IPS):
the value of a policy ``pi`` is ``mean_i sum_a pi_i(a) G_i(a)``, which is exactly
``ope``'s DR (IPS) estimate, so differences are differences of the reported values; their
intervals use ``kernels.poisson_bootstrap_sums`` with the same keys and seed as ``ope``,
hence the same resamples.

``impact_logs.impact_from_logs`` builds the inputs from an exported decision log (the
server's impact endpoint); ``hillstrom_impact`` runs the report on the Hillstrom
experiment with the shipped ensemble. This module is NumPy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import numpy as np

from nudgeserve.kernels import poisson_bootstrap_sums
from nudgeserve.models.evaluation.effects import Effect, arm_effect, effect_table
from nudgeserve.models.evaluation.ope import evaluate
from nudgeserve.models.evaluation.qini import QiniResult, qini_result, qini_table
from nudgeserve.models.evaluation.tables import format_table, format_value, outcome_digits
from nudgeserve.models.policies.intervention import InterventionConfig, _float_array

__all__ = [
    "ESTIMATORS",
    "NET_VALUE",
    "ImpactReport",
    "PolicyDifference",
    "PolicyValue",
    "ValueLoss",
    "aipw_scores",
    "impact_report",
]

NET_VALUE = "net value"
ESTIMATORS = ("ips", "snips", "dr")


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
            lines.append(effect_table(self.ate))
        if self.att:
            lines += [
                "",
                "Effect on the targeted: units the rule targets with that treatment "
                "(difference in means on their randomised rows, 95% CI)",
            ]
            lines.append(effect_table(self.att))
        if self.policy_values:
            lines += ["", "Policy values per unit (95% bootstrap CI)"]
            by_row: dict[tuple[str, str], dict[str, PolicyValue]] = {}
            for v in self.policy_values:
                by_row.setdefault((v.policy, v.outcome), {})[v.estimator] = v
            estimators = [e for e in ESTIMATORS if any(e in r for r in by_row.values())]
            rows = []
            for (policy, outcome), found in by_row.items():
                d = outcome_digits(outcome)
                first = next(iter(found.values()))
                rows.append(
                    [policy, outcome, f"{first.treated_share:.1%}"]
                    + [
                        f"{format_value(found[e].estimate, d)} [{format_value(found[e].low, d)}, "
                        f"{format_value(found[e].high, d)}]"
                        if e in found
                        else "-"
                        for e in estimators
                    ]
                    + [f"{first.ess:.0f}"]
                )
            lines.append(
                format_table(
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
                    f"{format_value(d.estimate, outcome_digits(d.outcome))} [{format_value(d.low, outcome_digits(d.outcome))}, "
                    f"{format_value(d.high, outcome_digits(d.outcome))}]",
                    "better" if d.low > 0 else "worse" if d.high < 0 else "no evidence",
                ]
                for d in self.differences
            ]
            lines.append(
                format_table(
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
                    format_value(loss.model_estimate, 4),
                    loss.estimator,
                    f"{format_value(loss.estimate, 4)} [{format_value(loss.low, 4)}, {format_value(loss.high, 4)}]",
                ]
                for loss in self.losses
            ]
            lines.append(
                format_table(
                    ["kind", "units", "model estimate", "estimator", "randomised estimate"], rows
                )
            )
        if self.qini:
            lines += ["", "Targeting by predicted uplift vs random rankings (Qini, per unit)"]
            lines.append(qini_table(self.qini))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------- helpers


def int_array(name: str, x: Any, n: int | None = None) -> np.ndarray:
    """``x`` as int64[n] (any integer dtype); the errors name ``name``."""
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
    The replicates are ``kernels.poisson_bootstrap_sums`` of the same keys and seed as
    ``ope``'s.
    """
    point = float(combine(stats.sum(axis=0)[None, :])[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = combine(poisson_bootstrap_sums(keys, stats, n_bootstrap, seed))
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
    action = int_array("action", action)
    n = action.shape[0]
    if n == 0:
        raise ValueError("action is empty: there are no units to analyse")
    if action.min() < 0 or action.max() >= n_actions:
        raise ValueError(f"action must index config.treatments [0, {n_actions})")
    policy_action = int_array("policy_action", policy_action, n)
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
            e = arm_effect(ys[o][rand], ra, t, c, names, o, "randomised")
            if e is not None:
                ate.append(e)
            targeted = rand & (policy_action == t)
            e = arm_effect(ys[o][targeted], action[targeted], t, c, names, o, "targeted by rule")
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
                qini_result(
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
