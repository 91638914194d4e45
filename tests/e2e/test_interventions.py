"""Interventions end to end on the real server (default config, use case ``interventions``):
``/v1/decide`` carries the intervention fields and equals the engine run here; the batch
endpoint scores thousands of units in one call; bad input gets a 4xx naming the field;
and a short ``nudgeserve replay`` of held-out Hillstrom customers ends with the impact
report computed from the server's own log."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from nudgeserve.cli import main
from nudgeserve.commands.replay import _contexts, _customers
from nudgeserve.models.policies.intervention import REASONS
from nudgeserve.serve.config import default_config
from nudgeserve.serve.engine.usecases import build_engine

USE_CASE = "interventions"
CONTEXT = {
    "recency": 1,
    "history": 10,
    "mens": 1,
    "womens": 0,
    "newbie": 0,
    "history_segment": "1) $0 - $100",
    "zip_code": "Urban",
    "channel": "Web",
}


@pytest.fixture(scope="module")
def engine():
    settings = default_config().use_case(USE_CASE)
    built = build_engine(settings)
    built.load(device="cpu", warm=False)
    return built.interventions


@pytest.fixture(scope="module")
def customers():
    test, rows = _customers(2000, seed=1)
    return test, rows, _contexts(test)


def call(server, method, path, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        server["url"] + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_decide_carries_the_intervention_and_equals_the_engine(server, engine, customers):
    test, rows, contexts = customers
    unit = f"e2e-{int(rows[0])}"
    status, answer = call(
        server,
        "POST",
        "/v1/decide",
        {"use_case": USE_CASE, "context": contexts[0], "unit_id": unit},
    )
    assert status == 200, answer
    inter = answer["intervention"]
    assert answer["experiment"] == USE_CASE and answer["variant"] == inter["reason"]
    assert answer["actions"][0]["id"] == inter["action"]
    assert answer["actions"][0]["propensity"] == pytest.approx(inter["propensity"])
    assert inter["reason"] in REASONS and 0 < inter["propensity"] <= 1
    local = engine.decide(
        {k: [contexts[0][k]] for k in engine.field_names}, np.asarray([unit]), spend_budget=False
    ).results()[0]
    assert inter["baseline_risk"] == pytest.approx(local.baseline_risk, rel=1e-5)
    assert inter["policy_action"] == local.policy_action
    for got, want in zip(inter["uplifts"], local.uplifts, strict=True):
        assert got["treatment"] == want.treatment
        assert got["uplift"] == pytest.approx(want.uplift, rel=1e-4, abs=1e-6)
        assert got["low"] == pytest.approx(want.low, rel=1e-4, abs=1e-6)
        assert got["high"] == pytest.approx(want.high, rel=1e-4, abs=1e-6)
    if inter["reason"] in ("holdout", "explore", "act", "below_threshold"):
        assert inter["action"] == local.action  # the budget is far from its caps here
    # The same unit lands in the same branch again.
    status, again = call(
        server,
        "POST",
        "/v1/decide",
        {"use_case": USE_CASE, "context": contexts[0], "unit_id": unit},
    )
    assert status == 200 and again["intervention"]["reason"] == inter["reason"]


def test_batch_endpoint_scores_thousands_in_one_call(server, engine, customers):
    test, rows, contexts = customers
    units = [
        {"unit_id": f"e2e-batch-{int(r)}", "context": c}
        for r, c in zip(rows.tolist(), contexts, strict=True)
    ]
    status, preview = call(
        server, "POST", "/v1/decide/batch", {"use_case": USE_CASE, "units": units, "dry_run": True}
    )
    assert status == 200, preview
    assert preview["dry_run"] is True and len(preview["results"]) == len(units)
    assert all(r["decision_id"] is None for r in preview["results"])
    local = engine.decide(
        {k: [c[k] for c in contexts] for k in engine.field_names},
        np.asarray([u["unit_id"] for u in units]),
        spend_budget=False,
    ).results()
    got = [r["intervention"]["action"] for r in preview["results"]]
    assert got == [r.action for r in local]
    assert [r["unit_id"] for r in preview["results"]] == [u["unit_id"] for u in units]

    status, sent = call(server, "POST", "/v1/decide/batch", {"use_case": USE_CASE, "units": units})
    assert status == 200, sent
    ids = [r["decision_id"] for r in sent["results"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == len(ids)
    assert sent["experiment"] == USE_CASE
    status, fb = call(
        server,
        "POST",
        "/v1/feedback",
        {"decision_id": ids[0], "event_id": "e2e", "kind": "visit", "value": 1.0},
    )
    assert status == 200 and fb["results"][0]["status"] == "joined"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/decide/batch", {"use_case": USE_CASE, "units": []}, "units"),
        (
            "/v1/decide/batch",
            {"use_case": USE_CASE, "units": [{"unit_id": "u", "context": {"recency": 1}}]},
            "units[0].context",
        ),
        ("/v1/decide/batch", {"use_case": "obd", "units": [{"context": CONTEXT}]}, "use_case"),
        (
            "/v1/decide",
            {
                "use_case": USE_CASE,
                "context": CONTEXT,
                "candidates": [{"id": "Mens E-Mail"}],
            },
            "candidates",
        ),
    ],
)
def test_bad_input_names_the_field(server, path, body, field):
    status, answer = call(server, "POST", path, body)
    assert 400 <= status < 500
    assert answer["error"].startswith(field), answer


def test_impact_query_errors(server):
    status, answer = call(server, "GET", "/v1/experiments/nope/impact")
    assert status == 404 and "nope" in answer["error"]
    status, answer = call(server, "GET", f"/v1/experiments/{USE_CASE}/impact?n_bootstrap=0")
    assert status == 400 and answer["error"].startswith("n_bootstrap")
    status, answer = call(server, "GET", f"/v1/experiments/{USE_CASE}/impact?since=yesterday")
    assert status == 400 and answer["error"].startswith("since")


def test_replay_ends_with_the_impact_report_from_the_servers_log(server, capsys):
    started = time.time()
    rc = main(
        [
            "replay",
            "--url",
            server["url"],
            "--limit",
            "600",
            "--no-progress",
            "--n-bootstrap",
            "50",
            "--unit-prefix",
            "e2e-replay-",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    found = re.search(r"matched the experiment's randomised arm .*: (\d+) of 600", out)
    assert found, out
    matched = int(found.group(1))
    assert 120 < matched < 280  # about a third
    assert "Causal impact of experiment 'interventions'" in out
    assert "Average treatment effect vs control" in out
    assert "Policy values per unit" in out
    # The report covers exactly the matched decisions of this run.
    status, body = call(
        server,
        "GET",
        f"/v1/experiments/{USE_CASE}/impact?feedback_only=true&since={started:.6f}&n_bootstrap=20",
    )
    assert status == 200, body
    assert body["analysed"] == matched
    assert body["report"]["n"] == matched
    assert body["randomized"] == body["report"]["n_randomized"] > 0
