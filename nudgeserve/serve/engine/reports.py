"""Reports from the decision log: experiment arms compared, candidate policies evaluated.

Works on decisions read back from the log (``decisions.read_decisions``) and on the
models; knows neither HTTP nor Ray. Two users: ``GET /v1/experiments/{id}/report`` and
``nudgeserve evaluate logs``.

Per experiment arm (``experiment_report``):

- ``decisions``: decisions logged for the arm;
- per outcome kind: ``events`` (joined feedback events), ``decisions_with_outcome``,
  ``rate`` = decisions with an outcome / decisions with a 95 % Wilson score interval, and
  ``value_per_decision`` (mean summed value, e.g. spend) with a normal interval;
- ``lift`` against the control arm (``Experiment.control_arm``) on the reward kind's rate:
  the difference with Newcombe's hybrid score interval and the relative lift
  (rate ratio - 1) with the log-ratio (Katz) interval;
- ``ope``: off-policy estimates (IPS, SNIPS, and DR where the model predicts the reward)
  of candidate policies on the arm's logged decisions, with bootstrap intervals, the
  effective sample size and warnings (``nudgeserve.models.evaluation.ope``).

Rates count a decision once however many events it got; only *joined* feedback counts
(orphaned, expired and rejected events stay out, as in the Parquet export). Recent
decisions whose outcomes may still arrive lower the rates: pass ``until`` to leave them
out.

Off-policy rows are (decision, slot) pairs as the export writes them: ``action`` indexes
the decision's candidates, ``propensity`` is the logged slot marginal, the reward is the
slot action's reward plus the decision-level one. A candidate policy's slot marginals
over the candidates come from replaying the logged replay vector (``usecases``) through
a model: only decisions made by that model's checkpoint are used (another checkpoint may
hash features differently), and the report says how many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from nudgeserve.models.evaluation.stats import (
    mean_interval,
    newcombe_difference,
    relative_lift,
    wilson_interval,
)
from nudgeserve.models.policies.slates import policy_slot_marginals
from nudgeserve.serve.decisions import DecisionRecord, LoggedDecisions

# Bootstrap replicates for report intervals: a report answers an HTTP request.
REPORT_BOOTSTRAP = 200


# --------------------------------------------------------------------- replaying policies


def replay_scores(engine: Any, records: list[DecisionRecord]) -> list[np.ndarray]:
    """The engine's model scores of every candidate of each record (replayed from its
    logged replay vector), in chunks."""
    out: list[np.ndarray] = []
    step = 512
    for start in range(0, len(records), step):
        chunk = records[start : start + step]
        out += engine.replay_scores([r.features for r in chunk], [r.candidates for r in chunk])
    return out


@dataclass
class ReplayedLogs:
    """OPE rows for one candidate policy: ``logs`` (``nudgeserve.models.evaluation.ope.OPELogs``)
    and how many decisions were usable."""

    logs: Any
    decisions: int
    skipped: int


def ope_logs(
    logged: LoggedDecisions,
    engine: Any,
    policy: str,
    reward_kind: str,
    *,
    with_reward_model: bool,
    **params: float,
) -> ReplayedLogs:
    """OPE rows (one per decision slot) of ``policy`` replayed with ``engine`` over the
    decisions its checkpoint made (others are skipped: see the module docstring)."""
    from nudgeserve.models.evaluation.ope import OPELogs, RaggedRows

    checkpoint = engine.info.checkpoint_id
    keep = [i for i, r in enumerate(logged.records) if r.model_checkpoint == checkpoint]
    records = [logged.records[i] for i in keep]
    rewards_all = logged.slot_rewards(reward_kind)
    scores = replay_scores(engine, records) if records else []
    ids, actions, positions, rewards, props = [], [], [], [], []
    eval_rows: list[np.ndarray] = []
    hat_rows: list[np.ndarray] = []
    for i, rec, s in zip(keep, records, scores, strict=True):
        k = len(rec.actions)
        dist = policy_slot_marginals(s, k, policy, **params)
        index = {c: j for j, c in enumerate(rec.candidates)}
        for slot, action in enumerate(rec.actions):
            ids.append(rec.decision_id)
            actions.append(index[action])
            positions.append(slot)
            rewards.append(rewards_all[i][slot])
            props.append(rec.propensities[slot])
            eval_rows.append(dist[:, slot])
            hat_rows.append(s)

    def ragged(rows: list[np.ndarray]) -> Any:
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        values = np.concatenate(rows) if rows else np.zeros(0)
        return RaggedRows(values.astype(np.float64), offsets)

    logs = OPELogs(
        decision_id=np.asarray(ids, dtype=object),
        action=np.asarray(actions, dtype=np.int64),
        position=np.asarray(positions, dtype=np.int64),
        reward=np.asarray(rewards, dtype=np.float64),
        propensity=np.asarray(props, dtype=np.float64),
        eval_probs=ragged(eval_rows),
        reward_hat=ragged(hat_rows) if with_reward_model else None,
    )
    return ReplayedLogs(logs, len(records), len(logged.records) - len(records))


def evaluate_policy(
    logged: LoggedDecisions,
    engine: Any,
    policy: str,
    reward_kind: str,
    *,
    with_reward_model: bool,
    n_bootstrap: int = REPORT_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
    estimators: tuple[str, ...] | None = None,
    **params: float,
) -> dict[str, Any]:
    """OPE of one candidate policy on ``logged``: ``{policy, params, decisions, rows,
    skipped_decisions, logging_policy_value, estimates: {estimator: OPEResult}}``."""
    from nudgeserve.models.evaluation import ope

    replayed = ope_logs(
        logged, engine, policy, reward_kind, with_reward_model=with_reward_model, **params
    )
    out: dict[str, Any] = {
        "policy": policy,
        "params": dict(params),
        "model_checkpoint": engine.info.checkpoint_id,
        "decisions": replayed.decisions,
        "rows": len(replayed.logs),
        "skipped_decisions": replayed.skipped,
    }
    if len(replayed.logs) == 0:
        out["logging_policy_value"] = None
        out["estimates"] = {}
        out["note"] = "no decisions of this checkpoint to evaluate on"
        return out
    stats = ope.logs_statistics(
        replayed.logs,
        with_reward_model=with_reward_model,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    names = estimators or (("ips", "snips", "dr") if with_reward_model else ("ips", "snips"))
    out["logging_policy_value"] = ope.logging_policy_value(stats, confidence=confidence)
    out["estimates"] = ope.summarize(stats, names, confidence=confidence)
    return out


# ---------------------------------------------------------------------------- report


def _subset(logged: LoggedDecisions, variant: str) -> LoggedDecisions:
    records = [r for r in logged.records if r.variant == variant]
    return LoggedDecisions(records, logged.feedback)


def _arm_summary(logged: LoggedDecisions, kinds: tuple[str, ...]) -> dict[str, Any]:
    n = len(logged.records)
    outcomes = {}
    for kind in kinds:
        events, value = logged.outcome_totals(kind)
        hits = int((events > 0).sum())
        low, high = wilson_interval(hits, n)
        mean, m_low, m_high = mean_interval(value)
        outcomes[kind] = {
            "events": int(events.sum()),
            "decisions_with_outcome": hits,
            "rate": hits / n if n else math.nan,
            "rate_ci": [low, high],
            "value_per_decision": mean,
            "value_per_decision_ci": [m_low, m_high],
        }
    return {"decisions": n, "outcomes": outcomes}


def experiment_report(
    logged: LoggedDecisions,
    experiment: Any,
    *,
    outcome_kinds: tuple[str, ...],
    reward_kind: str,
    engine: Any = None,
    policies: tuple[tuple[str, dict[str, float]], ...] = (("greedy", {}),),
    with_reward_model: bool = False,
    n_bootstrap: int = REPORT_BOOTSTRAP,
) -> dict[str, Any]:
    """The report of one experiment (see the module docstring).

    logged: its decisions (``read_decisions(experiment=...)``); experiment: its
    ``config.Experiment``; engine: the model used to replay candidate policies (None: no
    off-policy section); policies: ``(name, params)`` of the candidate policies.
    """
    control = experiment.control_arm()
    arms = [a.name for a in experiment.arms()]
    counts = {name: 0 for name in arms}
    for r in logged.records:
        counts[r.variant] = counts.get(r.variant, 0) + 1
    variants: dict[str, Any] = {}
    for name in dict.fromkeys([*arms, *counts]):
        sub = _subset(logged, name)
        summary = _arm_summary(sub, outcome_kinds)
        summary["configured"] = name in arms
        summary["control"] = name == control
        if engine is not None and summary["decisions"]:
            summary["ope"] = [
                evaluate_policy(
                    sub,
                    engine,
                    policy,
                    reward_kind,
                    with_reward_model=with_reward_model,
                    n_bootstrap=n_bootstrap,
                    **params,
                )
                for policy, params in policies
            ]
        variants[name] = summary
    base = variants[control]["outcomes"][reward_kind]
    n0 = variants[control]["decisions"]
    k0 = base["decisions_with_outcome"]
    for name, summary in variants.items():
        if name == control:
            continue
        arm = summary["outcomes"][reward_kind]
        n1, k1 = summary["decisions"], arm["decisions_with_outcome"]
        diff, low, high = newcombe_difference(k1, n1, k0, n0)
        rel, r_low, r_high = relative_lift(k1, n1, k0, n0)
        mean1 = arm["value_per_decision"]
        mean0 = base["value_per_decision"]
        summary["lift"] = {
            "against": control,
            "metric": f"{reward_kind} rate",
            "difference": diff,
            "difference_ci": [low, high],
            "relative": rel,
            "relative_ci": [r_low, r_high],
            "value_difference": mean1 - mean0 if n1 and n0 else math.nan,
        }
    pooled = None
    if engine is not None and logged.records:
        pooled = [
            evaluate_policy(
                logged,
                engine,
                policy,
                reward_kind,
                with_reward_model=with_reward_model,
                n_bootstrap=n_bootstrap,
                **params,
            )
            for policy, params in policies
        ]
    return {
        "experiment": experiment.name,
        "use_case": experiment.use_case,
        "control": control,
        "reward_kind": reward_kind,
        "decisions": len(logged.records),
        "confidence": 0.95,
        "variants": variants,
        "ope_all_arms": pooled,
        "notes": [
            "rates: share of decisions with at least one joined event of the kind, 95% "
            "Wilson intervals; lift: difference (Newcombe) and ratio - 1 (Katz) against "
            "the control arm",
            "ope: per-slot rows keyed by decision (bootstrap resamples decisions); only "
            "decisions of the replaying model's checkpoint are used",
        ],
    }
