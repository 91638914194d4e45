"""Wire types of the decision API (``POST /v1/decide``, ``POST /v1/decide/batch``) and its
OpenAPI document.

Requests and responses are msgspec Structs, decoded straight from the body's bytes (JSON,
or msgpack with ``Content-Type: application/msgpack``) with no second validation layer.
``context`` is kept raw at first and decoded into the use case's own context type once the
use case is known, so each use case states exactly the fields it needs.
"""

from __future__ import annotations

from typing import Annotated, Any

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


CONTEXT_TYPES: dict[str, type] = {"obd": ObdContext, "hillstrom": HillstromContext}


def openapi_document(use_cases: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the decision API.

    use_cases: ``[{"name", "kind"}]`` of the served use cases (listed in the description).
    """
    from nudgeserve.serve.decisions import FeedbackEvent
    from nudgeserve.serve.http.feedback import FeedbackResponse

    (req, resp, err, ctx_obd, ctx_hill, event, feedback, batch_req, batch_resp), components = (
        msgspec.json.schema_components(
            [
                DecideRequest,
                DecideResponse,
                ErrorBody,
                ObdContext,
                HillstromContext,
                FeedbackEvent,
                FeedbackResponse,
                BatchDecideRequest,
                BatchDecideResponse,
            ],
            ref_template="#/components/schemas/{name}",
        )
    )
    # ``context`` is decoded per use case; say which shapes it takes.
    components["DecideRequest"]["properties"]["context"] = {
        "oneOf": [ctx_obd, ctx_hill],
        "description": "ObdContext for kind obd use cases, HillstromContext for hillstrom.",
    }
    served = ", ".join(f"{u['name']} ({u['kind']})" for u in use_cases) or "none"
    errors = {
        str(code): {
            "description": text,
            "content": {"application/json": {"schema": err}},
        }
        for code, text in (
            (400, "a field is malformed or out of range; the message names it"),
            (404, "use_case (or the path) names nothing served"),
            (413, "body larger than server.max_body_bytes"),
            (415, "unsupported Content-Type or Content-Encoding"),
            (503, "overloaded (see Retry-After) or not ready"),
        )
    }
    body = {
        "required": True,
        "content": {
            "application/json": {"schema": req},
            "application/msgpack": {"schema": req},
        },
    }
    both = ("application/json", "application/msgpack")
    feedback_paths = {
        "/v1/feedback": {
            "post": {
                "summary": "Record outcome events (clicks, visits, conversions, spend) of "
                "decisions; idempotent per (decision_id, event_id)",
                "operationId": "feedback",
                "requestBody": {
                    "required": True,
                    "content": {
                        m: {"schema": {"oneOf": [event, {"type": "array", "items": event}]}}
                        for m in both
                    },
                },
                "responses": {
                    str(code): {
                        "description": text,
                        "content": {m: {"schema": feedback} for m in both},
                    }
                    for code, text in (
                        (200, "every event joined (or a duplicate of one already received)"),
                        (207, "a list whose events fared differently: see each result's code"),
                        (404, "one event whose decision is unknown (kept, joined later)"),
                        (422, "one event after the late window or for an action not shown"),
                    )
                }
                | {k: v for k, v in errors.items() if k in ("400", "413", "415", "503")},
            }
        },
        "/v1/experiments/{experiment}/report": {
            "get": {
                "summary": "Per arm: decisions, outcome rates with 95% intervals, lift "
                "against the control arm, off-policy estimates of candidate policies",
                "operationId": "experimentReport",
                "parameters": [
                    {
                        "name": "experiment",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the report",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "404": errors["404"],
                },
            }
        },
        "/v1/decide/batch": {
            "post": {
                "summary": "Decide for many units of an intervention use case in one call "
                "(campaign planning; dry_run: score without logging or spending the caps)",
                "operationId": "decideBatch",
                "requestBody": {
                    "required": True,
                    "content": {m: {"schema": batch_req} for m in both},
                },
                "responses": {
                    "200": {
                        "description": "one result per unit, in request order",
                        "content": {m: {"schema": batch_resp} for m in both},
                    },
                    **errors,
                },
            }
        },
        "/v1/experiments/{experiment}/impact": {
            "get": {
                "summary": "Causal impact of an intervention experiment from its logged "
                "decisions and feedback: ATE against the holdout, effect on the targeted, the "
                "rule against treat-nobody / treat-everybody / random (IPS, SNIPS, DR), value "
                "lost to missed and unnecessary interventions",
                "operationId": "experimentImpact",
                "parameters": [
                    {
                        "name": "experiment",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    *(
                        {"name": name, "in": "query", "required": False, "schema": schema}
                        for name, schema in (
                            ("feedback_only", {"type": "boolean", "default": False}),
                            ("since", {"type": "number", "description": "epoch seconds"}),
                            ("until", {"type": "number", "description": "epoch seconds"}),
                            ("n_bootstrap", {"type": "integer", "minimum": 10, "default": 200}),
                            (
                                "qini_resamples",
                                {"type": "integer", "minimum": 10, "default": 100},
                            ),
                            ("seed", {"type": "integer", "minimum": 0, "default": 0}),
                        )
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "the report (``report``) and its tables (``text``)",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": errors["400"],
                    "404": errors["404"],
                },
            }
        },
        "/v1/models/{model}/load": {
            "post": {
                "summary": "Serve another checkpoint or version of a model in every replica "
                "without failing requests (admin: Authorization: Bearer <token>)",
                "operationId": "loadModel",
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "checkpoint": {"type": "string"},
                                    "version": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "now served",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": errors["400"],
                    "401": {"description": "no bearer token", "content": errors["400"]["content"]},
                    "403": {
                        "description": "wrong token, or admin routes disabled",
                        "content": errors["400"]["content"],
                    },
                    "404": errors["404"],
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "nudgeserve decision API",
            "version": version,
            "description": f"Served use cases: {served}.",
        },
        "paths": {
            "/v1/decide": {
                "post": {
                    "summary": "Rank candidate actions for a context and pick what to show",
                    "operationId": "decide",
                    "requestBody": body,
                    "responses": {
                        "200": {
                            "description": "the decision (same format as the request)",
                            "content": {
                                "application/json": {"schema": resp},
                                "application/msgpack": {"schema": resp},
                            },
                        },
                        **errors,
                    },
                }
            },
            **feedback_paths,
        },
        "components": {"schemas": components},
    }
