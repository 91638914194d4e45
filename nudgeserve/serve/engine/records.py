"""Decisions as the decision log records them, and the policy labels they carry.

The batched scorer turns each served decision (its ``DecisionItem`` and
``DecisionOutcome``) into a ``DecisionRecord`` here and logs the whole batch before any
answer leaves. No HTTP, no Ray.

A record holds (``nudgeserve.serve.decisions.DecisionRecord``):

- ``candidates``: the ids the policy could choose from, as text: the request's catalog
  candidates (or the whole catalog) in order, then its inline candidates, without the
  exclusions. The export's ``action`` indexes this list.
- ``actions``, ``scores``: the chosen ids by slot and their model scores.
- ``propensities``: for each slot, the probability that the logging policy put that
  action at that slot (the slot marginal; ``_selection`` computes it for every policy).
- ``features``: the replay vector of ``usecases.replay_layout``, enough for the model
  that decided (or any model with the same feature spec) to score every candidate again.
- ``policy``: ``policy_label`` of the policy, with its parameters.

An intervention use case's decision is logged under its intervention experiment with the
reason as the variant and the rule's label as the policy (``serve.interventions``).
"""

from __future__ import annotations

import math

from nudgeserve.serve.config import (
    Control,
    EpsilonGreedy,
    Greedy,
    LinearBandit,
    PlackettLuce,
    Policy,
    Thompson,
)
from nudgeserve.serve.decisions import DecisionRecord
from nudgeserve.serve.engine.usecases import DecisionItem, DecisionOutcome, UseCaseInfo

# A chosen action always had a positive probability; a slot marginal that rounds to 0
# (or a hair above 1) is rounding, and the log accepts (0, 1] only.
_SMALLEST = math.ulp(0.0) * 2**52  # the smallest positive normal float64


def policy_name(policy: Policy) -> str:
    """The policy's kind (``greedy``, ``epsilon_greedy``, ...), as answers name it."""
    return str(type(policy).__struct_config__.tag)


def policy_label(policy: Policy) -> str:
    """The policy with its parameters, e.g. ``epsilon_greedy(epsilon=0.1)``: what the
    decision log records, so two configurations of one kind stay apart in reports."""
    name = policy_name(policy)
    if isinstance(policy, Greedy | Control):
        return name
    if isinstance(policy, EpsilonGreedy):
        return f"{name}(epsilon={policy.epsilon:g})"
    if isinstance(policy, PlackettLuce):
        return f"{name}(temperature={policy.temperature:g})"
    if isinstance(policy, Thompson):
        return f"{name}(prior_alpha={policy.prior_alpha:g}, prior_beta={policy.prior_beta:g})"
    if isinstance(policy, LinearBandit):
        if policy.method == "ucb":
            return f"{name}(method=ucb, alpha={policy.alpha:g}, epsilon={policy.epsilon:g})"
        return f"{name}(method=thompson, scale={policy.alpha:g})"
    raise TypeError(f"policy must be one of the configured policy kinds, got {policy!r}")


class RecordBuilder:
    """Builds the decision log's records for one use case's batches.

    info: the use case (its catalog ids are turned into text once here).
    """

    def __init__(self, info: UseCaseInfo) -> None:
        self.info = info
        self.catalog_ids = [str(x) for x in info.catalog]

    def candidates(self, item: DecisionItem, inline_ids: tuple[str, ...]) -> list[str]:
        """The ids ``item``'s policy chose from (see the module docstring)."""
        n_catalog = self.info.n_catalog
        ids = self.catalog_ids
        excluded = set(item.excluded.tolist()) if len(item.excluded) else ()
        if item.candidates is None and not excluded and not inline_ids:
            return ids  # shared, not copied: the common case costs nothing per request
        base = range(n_catalog) if item.candidates is None else item.candidates.tolist()
        out = [ids[j] for j in base if j not in excluded]
        out += [x for j, x in enumerate(inline_ids) if n_catalog + j not in excluded]
        return out

    def records(
        self, items: list[DecisionItem], outcomes: list[DecisionOutcome], now: float
    ) -> list[DecisionRecord]:
        """One record per served decision of a batch (``items[i]`` gave ``outcomes[i]``).

        Raises ValueError when an item carries no ``meta`` (it cannot be logged, so it
        must not be served).
        """
        out = []
        n_catalog = self.info.n_catalog
        ids = self.catalog_ids
        for item, outcome in zip(items, outcomes, strict=True):
            meta = item.meta
            if meta is None:
                raise ValueError("a decision item without meta cannot be logged")
            chosen = [
                ids[j] if j < n_catalog else meta.inline_ids[j - n_catalog]
                for j in outcome.indices.tolist()
            ]
            props = [min(1.0, max(p, _SMALLEST)) for p in outcome.propensities.tolist()]
            experiment, variant, policy = meta.experiment, meta.variant, meta.policy
            if outcome.intervention is not None:
                # The rule's own randomisation is the experiment; the reason names the
                # branch (holdout and explore rows are the randomised ones).
                experiment = self.info.intervention_experiment or ""
                variant = outcome.intervention.reason
                policy = self.info.intervention_policy
            out.append(
                DecisionRecord(
                    decision_id=meta.decision_id,
                    time=now,
                    unit_id=meta.unit_id,
                    experiment=experiment,
                    variant=variant,
                    model_version=outcome.model_version,
                    policy=policy,
                    candidates=self.candidates(item, meta.inline_ids),
                    actions=chosen,
                    scores=outcome.scores.tolist(),
                    propensities=props,
                    features=outcome.features,
                    use_case=self.info.name,
                    model_checkpoint=outcome.model_checkpoint,
                )
            )
        return out
