"""Wire types of the decision API (``POST /v1/decide``) and its OpenAPI document.

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


class DecideResponse(msgspec.Struct, frozen=True):
    """The decision: ranked actions and everything needed to log and evaluate it.

    model_version: the served version (as under ``/v2/models``); model_checkpoint: the
    first 12 hex digits of the checkpoint weights' SHA-256 (which weights decided).
    policy: the selection policy (``greedy``, ``epsilon_greedy``, ``plackett_luce``,
    ``thompson``, ``linear``, ``control``); experiment, variant: the unit's assignment
    when an experiment was named (``variant`` is the holdout's name for held-out units).
    propensity_kind: what ``actions[i].propensity`` is: always ``"slot_marginal"``,
    P(this action at this rank) under the policy (not conditional on the ranks above).
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


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error response: ``{"error": "<field>: <what is wrong>"}``."""

    error: str


CONTEXT_TYPES: dict[str, type] = {"obd": ObdContext, "hillstrom": HillstromContext}


def openapi_document(use_cases: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the decision API.

    use_cases: ``[{"name", "kind"}]`` of the served use cases (listed in the description).
    """
    (req, resp, err, ctx_obd, ctx_hill), components = msgspec.json.schema_components(
        [DecideRequest, DecideResponse, ErrorBody, ObdContext, HillstromContext],
        ref_template="#/components/schemas/{name}",
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
            (404, "use_case names no served use case"),
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
            }
        },
        "components": {"schemas": components},
    }
