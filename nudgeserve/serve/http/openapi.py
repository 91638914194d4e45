"""The OpenAPI 3.1 document of the decision API (``GET /openapi.json``).

Schemas come from the wire types themselves (``msgspec.json.schema_components``), so the
document cannot drift from what the routes decode and encode.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nudgeserve.serve.decisions import FeedbackEvent
from nudgeserve.serve.protocol.decide import (
    BatchDecideRequest,
    BatchDecideResponse,
    DecideRequest,
    DecideResponse,
    ErrorBody,
    HillstromContext,
    ObdContext,
)
from nudgeserve.serve.protocol.feedback import FeedbackResponse


def openapi_document(use_cases: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the decision API.

    use_cases: ``[{"name", "kind"}]`` of the served use cases (listed in the description).
    """
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
