"""Builds the decision log's records from the scorers' outcomes.

The batched scorer turns each served decision (its ``DecisionItem`` and
``DecisionOutcome``) into a ``DecisionRecord`` here and logs the whole batch before any
answer leaves; ``intervention_records`` does the same for a ``POST /v1/decide/batch``
batch. The record types themselves are the decision log's (``serve.decisions``). No HTTP,
no Ray.

A record holds (``nudgeserve.serve.decisions.DecisionRecord``):

- ``candidates``: the ids the policy could choose from, as text: the request's catalog
  candidates (or the whole catalog) in order, then its inline candidates, without the
  exclusions. The export's ``action`` indexes this list.
- ``actions``, ``scores``: the chosen ids by slot and their model scores.
- ``propensities``: for each slot, the probability that the logging policy put that
  action at that slot (the slot marginal; ``selection`` computes it for every policy).
- ``features``: the decision's replay vector (its layout: ``obd`` and ``hillstrom``),
  enough for the model that decided (or any model with the same feature spec) to score
  every candidate again.
- ``policy``: ``policy_labels.policy_label`` of the policy, with its parameters.

An intervention use case's decision is logged under its intervention experiment with the
reason as the variant and the rule's label as the policy (``interventions``):
``candidates`` = the treatments in model order, ``actions`` = [the action],
``propensities`` = [its propensity], ``scores`` = [its expected net value].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from nudgeserve.serve.decisions import DecisionRecord
from nudgeserve.serve.engine.types import DecisionItem, DecisionOutcome, UseCaseInfo

if TYPE_CHECKING:
    from nudgeserve.serve.engine.interventions import InterventionBatch

# A chosen action always had a positive probability; a slot marginal that rounds to 0
# (or a hair above 1) is rounding, and the log accepts (0, 1] only.
_SMALLEST = math.ulp(0.0) * 2**52  # the smallest positive normal float64


def _logged_propensity(p: float) -> float:
    return min(1.0, max(p, _SMALLEST))


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
            props = [_logged_propensity(p) for p in outcome.propensities.tolist()]
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


def intervention_records(
    batch: InterventionBatch,
    info: UseCaseInfo,
    *,
    decision_ids: Sequence[str],
    unit_ids: Sequence[str],
    now: float,
) -> list[DecisionRecord]:
    """The decision log's records of a ``POST /v1/decide/batch`` batch of intervention
    decisions (``InterventionEngine.decide``) made by the use case ``info``: one record per
    unit, as ``RecordBuilder.records`` writes a single intervention decision (module
    docstring).

    decision_ids, unit_ids: [B] text (unit ids as the request gave them; "" for none).
    """
    d = batch.decisions
    names = list(d.treatments)
    n = len(batch)
    if len(decision_ids) != n or len(unit_ids) != n:
        raise ValueError(
            f"decision_ids ({len(decision_ids)}) and unit_ids ({len(unit_ids)}) must hold "
            f"one id per unit ({n})"
        )
    rows = zip(
        decision_ids,
        unit_ids,
        d.action.tolist(),
        d.reasons(),
        d.propensity.tolist(),
        d.expected_net_value.tolist(),
        batch.replay.tolist(),
        strict=True,
    )
    return [
        DecisionRecord(
            decision_id=decision_id,
            time=now,
            unit_id=unit_id,
            experiment=info.intervention_experiment or "",
            variant=reason,
            model_version=info.version,
            policy=info.intervention_policy,
            candidates=names,
            actions=[names[action]],
            scores=[score],
            propensities=[_logged_propensity(p)],
            features=replay,
            use_case=info.name,
            model_checkpoint=info.checkpoint_id,
        )
        for decision_id, unit_id, action, reason, p, score, replay in rows
    ]
