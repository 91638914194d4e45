"""The OpenAPI document describes every route and the wire types."""

from __future__ import annotations

import json

from nudgeserve.serve.http.openapi import openapi_document


def test_openapi_document_describes_the_api():
    doc = openapi_document([{"name": "obd", "kind": "obd"}], "0.1.0")
    post = doc["paths"]["/v1/decide"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/json", "application/msgpack"}
    assert {"200", "400", "404", "413", "415", "503"} <= set(post["responses"])
    schemas = doc["components"]["schemas"]
    assert {
        "DecideRequest",
        "DecideResponse",
        "ObdContext",
        "HillstromContext",
        "RankedAction",
        "Candidate",
    } <= set(schemas)
    assert "oneOf" in schemas["DecideRequest"]["properties"]["context"]
    assert schemas["DecideRequest"]["required"] == ["use_case", "context"]
    assert "propensity_kind" in schemas["DecideResponse"]["properties"]
    feedback = doc["paths"]["/v1/feedback"]["post"]
    assert {"200", "207", "404", "422", "400"} <= set(feedback["responses"])
    assert schemas["FeedbackEvent"]["required"] == ["decision_id", "event_id", "kind"]
    assert "/v1/experiments/{experiment}/report" in doc["paths"]
    assert {"401", "403"} <= set(doc["paths"]["/v1/models/{model}/load"]["post"]["responses"])
    json.dumps(doc)  # serialisable as served
