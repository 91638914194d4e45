"""Wire types of the decision API (``POST /v1/decide``, ``POST /v1/decide/batch``).

Requests and responses are msgspec Structs, decoded straight from the body's bytes (JSON,
or msgpack with ``Content-Type: application/msgpack``) with no second validation layer.
``context`` is kept raw at first and decoded into the use case's own context type once the
use case is known, so each use case states exactly the fields it needs.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

ItemId = str | int
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ObdItemFeatures(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An item given inline instead of by catalog id (its item-context columns)."""

    item_feature_0: float
    item_feature_1: str
    item_feature_2: str
    item_feature_3: str


class Candidate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A candidate action: a catalog id (OBD item id, Hillstrom treatment name), or a
    client-chosen id with inline ``features`` for an item the catalog does not hold."""

    id: ItemId
    features: ObdItemFeatures | None = None


class DecideRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What to decide.

    use_case: which configured use case decides (e.g. ``"obd"``, ``"hillstrom"``).
    context: the use case's context (``ObdContext`` / ``HillstromContext``).
    candidates: the actions to choose from; omitted means every catalog action.
    k: how many actions to return, ranked (default: the use case's slate size).
    exclusions: catalog ids never to return (e.g. already purchased).
    unit_id: the unit (customer, session) for experiment assignment; required with
        ``experiment``.
    experiment: a configured experiment; the unit's variant chooses the policy.
    """

    use_case: Identifier
    context: msgspec.Raw
    candidates: list[Candidate] | None = None
    k: int | None = None
    exclusions: list[ItemId] = []
    unit_id: Identifier | None = None
    experiment: Identifier | None = None


class ObdContext(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Open Bandit context: the four raw ``user_feature_0..3`` strings and, optionally,
    the user's affinity to every catalog item (``n_items`` non-negative numbers)."""

    user_features: list[str]
    affinity: list[float] | None = None


class HillstromContext(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A Hillstrom customer: the covariates the uplift model was trained on."""

    recency: float
    history: float
    mens: float
    womens: float
    newbie: float
    history_segment: str
    zip_code: str
    channel: str


class RankedAction(msgspec.Struct, frozen=True, array_like=False):
    """One chosen action: its id, 1-based rank, model score, and ``propensity``: the
    probability that the policy puts this action at this rank (the slot marginal, which
    per-position off-policy estimators read; for every policy the same quantity)."""

    id: ItemId
    rank: int
    score: float
    propensity: float


class TreatmentUplift(msgspec.Struct, frozen=True):
    """One treatment's prediction for one unit (the control is left out: its uplift is 0).

    uplift: predicted uplift of the objective over no intervention (the uplift ensemble's
    mean); sd: its standard error; low/high: the two-sided interval at ``level``;
    net_value: ``value_per_unit * uplift - cost``; net_lower: its one-sided lower bound
    at the rule's confidence; eligible: ``net_lower > threshold``.
    """

    treatment: str
    uplift: float
    sd: float
    low: float
    high: float
    net_value: float
    net_lower: float
    eligible: bool


class InterventionResult(msgspec.Struct, frozen=True):
    """The intervention decision for one unit (``nudgeserve.serve.engine.interventions``).

    action: the action taken (a treatment name; the control means no intervention);
    intervene: whether ``action`` is a treatment; reason: why: ``act`` (the rule's
    choice), ``below_threshold`` (no treatment clears its cost with the configured
    confidence), ``budget_exhausted`` (today's cap of the wanted treatment is used up),
    ``holdout`` (the unit is in the random holdout), ``explore`` (a uniformly random
    action); propensity: the design's probability of ``action`` (exact; what off-policy
    estimates divide by); policy_action: the rule's own choice, ignoring randomisation
    and caps; baseline_risk: P(defect) with no intervention (the defect: no visit);
    baseline: the predicted objective with no intervention; severity: baseline risk x
    value at stake; expected_net_value: the net value of ``action`` (0 for none);
    objective / level: what ``uplifts`` measure and their intervals' coverage.
    """

    action: str
    intervene: bool
    reason: str
    propensity: float
    policy_action: str
    baseline_risk: float
    baseline: float
    severity: float
    expected_net_value: float
    objective: str
    level: float
    uplifts: list[TreatmentUplift]


class DecideResponse(msgspec.Struct, frozen=True):
    """The decision: ranked actions and everything needed to log and evaluate it.

    model_version: the served version (as under ``/v2/models``); model_checkpoint: the
    first 12 hex digits of the checkpoint weights' SHA-256 (which weights decided).
    policy: the selection policy (``greedy``, ``epsilon_greedy``, ``plackett_luce``,
    ``thompson``, ``linear``, ``control``, ``intervention``); experiment, variant: the
    unit's assignment when an experiment was named (``variant`` is the holdout's name for
    held-out units); for an intervention use case, its intervention experiment and the
    decision's reason.
    propensity_kind: what ``actions[i].propensity`` is: always ``"slot_marginal"``,
    P(this action at this rank) under the policy (not conditional on the ranks above).
    intervention: the intervention decision (intervention use cases only): baseline
    risk, each treatment's uplift with its interval, severity, reason, propensity.
    """

    decision_id: str
    use_case: str
    model_name: str
    model_version: str
    model_checkpoint: str
    policy: str
    actions: list[RankedAction]
    experiment: str | None = None
    variant: str | None = None
    propensity_kind: str = "slot_marginal"
    intervention: InterventionResult | None = None


class BatchUnit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One unit of a batch: its customer context and its id (the randomisation unit of
    the holdout and exploration; omitted: the decision id, so it is not sticky)."""

    context: HillstromContext
    unit_id: Identifier | None = None


class BatchDecideRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/decide/batch``: decide for many units of an intervention use case at once.

    dry_run: score and decide without logging and without spending the daily caps (a
    campaign-planning preview; no decision ids, no feedback). Otherwise every decision is
    logged and the caps are spent, exactly as if each unit had called ``/v1/decide``.
    """

    use_case: Identifier
    units: list[BatchUnit]
    dry_run: bool = False


class UnitDecision(msgspec.Struct, frozen=True):
    """One unit's answer in a batch (``decision_id`` None in a dry run)."""

    unit_id: str
    decision_id: str | None
    intervention: InterventionResult


class BatchDecideResponse(msgspec.Struct, frozen=True):
    """The answer to ``POST /v1/decide/batch``: one result per unit, in request order."""

    use_case: str
    model_name: str
    model_version: str
    model_checkpoint: str
    experiment: str
    policy: str
    dry_run: bool
    results: list[UnitDecision]


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error response: ``{"error": "<field>: <what is wrong>"}``."""

    error: str


# The context type of each use-case kind: what ``DecideRequest.context`` decodes into.
CONTEXT_TYPES: dict[str, type] = {"obd": ObdContext, "hillstrom": HillstromContext}
