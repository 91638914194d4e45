"""The decision loop without Ray: every answered decision is in the decision log first,
feedback through the router (statuses and codes), reloads that fail no request, the
experiment report, holdouts and the config rules around them.

Real engines on the shipped checkpoints and real SQLite decision logs in temporary
directories; the scorer's batch logic is mostly called directly (``decide_and_log``:
a batch of one per request), and through its micro-batcher where batching is the point.
"""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import numpy as np
import pytest
from starlette.requests import Request

from nudgeserve.serve.config import (
    Experiment,
    Greedy,
    Holdout,
    ServeConfig,
    Variant,
    default_config,
    parse_config,
)
from nudgeserve.serve.decisions import DecisionLog, DecisionLogConfig, DecisionRecord
from nudgeserve.serve.errors import ConfigError, DecisionNotLogged, http_error
from nudgeserve.serve.http.decide import JSON, DecisionService, assign_variant
from nudgeserve.serve.http.router import Router
from nudgeserve.serve.protocol.decide import DecideResponse
from nudgeserve.serve.ray.deployments import OWN_LOG, UseCaseScorer, open_decision_log

USERS = ["u0", "u1", "u2", "u3"]
CUSTOMER = {
    "recency": 3,
    "history": 120.5,
    "mens": 1,
    "womens": 0,
    "newbie": 0,
    "history_segment": "2) $100 - $200",
    "zip_code": "Urban",
    "channel": "Web",
}
ADMIN = "admin-token-for-tests-0123456789"


class DirectScorer(UseCaseScorer):
    """A scorer whose every request is a batch of one."""

    async def decide(self, item):
        return (await self.decide_and_log([item]))[0]

    async def infer(self, inputs):
        return self.engine.infer_batch([inputs])[0]


def configured(tmp_path, **decision_log) -> ServeConfig:
    config = default_config()
    log = msgspec.structs.replace(config.decision_log, **decision_log)
    server = msgspec.structs.replace(config.server, admin_token=ADMIN)
    return msgspec.structs.replace(config, state_dir=str(tmp_path), decision_log=log, server=server)


@pytest.fixture(scope="module")
def loop_config(tmp_path_factory):
    return configured(tmp_path_factory.mktemp("state"), late_window_s=3600.0)


@pytest.fixture(scope="module")
def gateway(loop_config):
    """A router over real scorers sharing one decision log (the colocated gateway)."""
    log = open_decision_log(loop_config)
    scorers = {
        u.name: DirectScorer(u, loop_config, log, learner=False) for u in loop_config.use_cases
    }
    router = Router(loop_config, scorers, log)
    yield router
    log.close()


def call(router, method, path, body=b"", headers=None):
    return asyncio.run(acall(router, method, path, body, headers))


async def acall(router, method, path, body=b"", headers=None):
    headers = {"content-type": "application/json", **(headers or {})}
    headers["content-length"] = str(len(body))
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    sent = [False]

    async def receive():
        if sent[0]:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    return await router.handle(Request(scope, receive))


def decide(router, **fields):
    payload = {"use_case": "obd", "context": {"user_features": USERS}, **fields}
    r = call(router, "POST", "/v1/decide", json.dumps(payload).encode())
    assert r.status_code == 200, r.body
    return json.loads(r.body)


def feedback(router, body, fmt="json"):
    if fmt == "json":
        raw, ctype = json.dumps(body).encode(), "application/json"
    else:
        raw, ctype = msgspec.msgpack.encode(body), "application/msgpack"
    r = call(router, "POST", "/v1/feedback", raw, {"content-type": ctype})
    # Answers use the request's format; errors are always JSON.
    if r.media_type == "application/msgpack":
        return r.status_code, msgspec.msgpack.decode(r.body)
    return r.status_code, json.loads(r.body)


# ----------------------------------------------------------------------- logging


def test_every_decision_of_a_batch_is_logged_before_it_is_answered(loop_config, tmp_path):
    config = configured(tmp_path)
    scorer = DirectScorer(config.use_case("obd"), config, OWN_LOG, learner=False)
    try:
        service = DecisionService({"obd": scorer.engine.info}, config.experiments)
        items, pendings = [], []
        affinity = np.linspace(0, 3, 80).tolist()
        for i in range(6):
            payload = {
                "use_case": "obd",
                "context": {"user_features": ["a", "b", "c", str(i)], "affinity": affinity},
                "unit_id": f"unit-{i}",
                "experiment": "obd_exploration",
                "exclusions": [5],
                "k": 3,
            }
            if i == 0:  # one inline candidate among catalog ones
                payload["candidates"] = [
                    {"id": 7},
                    {"id": 9},
                    {"id": 5},
                    {
                        "id": "new",
                        "features": {
                            "item_feature_0": 0.5,
                            "item_feature_1": "x",
                            "item_feature_2": "y",
                            "item_feature_3": "z",
                        },
                    },
                ]
            item, pending = service.prepare(
                service.decode(json.dumps(payload).encode(), JSON), JSON
            )
            items.append(item)
            pendings.append(pending)
        outcomes = asyncio.run(scorer.decide_and_log(items))
        # decide_and_log returned: every record must already be committed.
        for item, pending, outcome in zip(items, pendings, outcomes, strict=True):
            rec = scorer.log.get_decision(pending.decision_id)
            assert isinstance(rec, DecisionRecord)
            answer = service.respond(pending, outcome)
            assert rec.actions == [str(a.id) for a in answer.actions]
            assert rec.propensities == pytest.approx([a.propensity for a in answer.actions])
            assert rec.scores == pytest.approx([a.score for a in answer.actions])
            assert (rec.unit_id, rec.experiment, rec.variant) == (
                item.meta.unit_id,
                "obd_exploration",
                pending.variant,
            )
            assert rec.policy == item.meta.policy and rec.use_case == "obd"
            assert (rec.model_version, rec.model_checkpoint) == ("1", answer.model_checkpoint)
            assert "5" not in rec.candidates  # the exclusion is no candidate
            # Replay vector: 4 hashed user fields, the 80 raw affinities, 4 per inline item.
            assert rec.features[4:84] == pytest.approx(affinity, rel=1e-6)
        first = scorer.log.get_decision(pendings[0].decision_id)
        assert first.candidates == ["7", "9", "new"] and len(first.features) == 88
        assert len(scorer.log.get_decision(pendings[1].decision_id).candidates) == 79
    finally:
        scorer.close()


def test_the_next_batch_scores_while_the_previous_one_commits(tmp_path):
    """A batch ends when its records are queued on the log: with the log's write lock
    held elsewhere, a second request is scored while the first one's commit waits, and
    neither is answered before its record is committed."""
    import sqlite3

    config = configured(tmp_path)
    scorer = UseCaseScorer(config.use_case("obd"), config, OWN_LOG, learner=False)
    try:
        service = DecisionService({"obd": scorer.engine.info}, config.experiments)
        prepared = [
            service.prepare(
                service.decode(
                    json.dumps(
                        {"use_case": "obd", "context": {"user_features": USERS}, "k": 2}
                    ).encode(),
                    JSON,
                ),
                JSON,
            )
            for _ in range(2)
        ]
        batcher = scorer.batchers["decide"]

        async def until_idle():
            for _ in range(500):
                await asyncio.sleep(0.01)
                if batcher.idle:
                    return
            raise AssertionError("the batcher never finished its batch")

        async def main():
            lock = sqlite3.connect(scorer.log.config.path, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            first = asyncio.create_task(scorer.decide(prepared[0][0]))
            await until_idle()
            second = asyncio.create_task(scorer.decide(prepared[1][0]))
            await until_idle()  # the second batch ran while the first one's commit waits
            assert not first.done() and not second.done()
            # The log's backlog, as admission sees it: the first batch's wait so far.
            waited = scorer.commit_wait_s()
            await asyncio.sleep(0.05)
            assert scorer.commit_wait_s() >= waited + 0.04
            lock.execute("COMMIT")
            lock.close()
            return await asyncio.gather(first, second)

        outcomes = asyncio.run(main())
        assert scorer.commit_wait_s() == 0.0  # every batch committed: no backlog
        for (_, pending), outcome in zip(prepared, outcomes, strict=True):
            record = scorer.log.get_decision(pending.decision_id)
            assert record is not None
            assert record.actions == [str(a.id) for a in service.respond(pending, outcome).actions]
    finally:
        scorer.close()


def test_a_batch_the_log_refuses_is_not_answered(tmp_path):
    config = configured(tmp_path)
    log = open_decision_log(config)
    scorer = DirectScorer(config.use_case("hillstrom"), config, log, learner=False)
    service = DecisionService({"hillstrom": scorer.engine.info}, ())
    body = json.dumps({"use_case": "hillstrom", "context": CUSTOMER}).encode()
    items = [service.prepare(service.decode(body, JSON), JSON)[0] for _ in range(3)]
    log.close()  # e.g. the replica is stopping
    with pytest.raises(DecisionNotLogged) as info:
        asyncio.run(scorer.decide_and_log(items))
    err = http_error(info.value)
    assert err.status == 503 and "could not be logged" in err.message
    assert "not served" in err.message


# ---------------------------------------------------------------------- feedback


def test_feedback_statuses_map_to_codes_and_events_are_kept(gateway):
    d = decide(gateway, k=2)
    did, shown = d["decision_id"], str(d["actions"][0]["id"])
    click = {"decision_id": did, "event_id": "c1", "kind": "click", "action": shown}
    assert feedback(gateway, click)[0] == 200
    code, body = feedback(gateway, click)
    assert code == 200 and body["results"][0]["status"] == "duplicate"
    code, body = feedback(gateway, {**click, "decision_id": "f" * 32, "event_id": "o1"})
    assert code == 404 and body["results"][0]["status"] == "orphaned"
    assert "kept" in body["results"][0]["detail"]
    code, body = feedback(gateway, {**click, "event_id": "r1", "action": "79x"})
    assert code == 422 and body["results"][0]["status"] == "rejected"
    late = {**click, "event_id": "late", "time": time.time() + 7200}
    code, body = feedback(gateway, late, fmt="msgpack")
    assert code == 422 and body["results"][0]["status"] == "expired"
    # A list: per-event results in order, 207 when the codes differ.
    events = [
        {"decision_id": did, "event_id": "v1", "kind": "visit"},
        {"decision_id": "e" * 32, "event_id": "v2", "kind": "visit"},
    ]
    code, body = feedback(gateway, events)
    assert code == 207
    assert [(r["status"], r["code"]) for r in body["results"]] == [
        ("joined", 200),
        ("orphaned", 404),
    ]
    assert body["counts"] == {"joined": 1, "orphaned": 1}
    code, body = feedback(gateway, [{**click, "event_id": "c2"}, {**click, "event_id": "c3"}])
    assert code == 200 and body["counts"] == {"joined": 2}
    # The log counts the click events once each (c1, c2, c3) for the decision.
    logged = gateway.log.export_parquet(gateway.log.config.path + ".parquet")
    assert logged.joined_events >= 4


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        (b'{"decision_id": "a"', "", "not valid JSON"),
        (json.dumps({"decision_id": "a", "kind": "click"}).encode(), "", "event_id"),
        (
            json.dumps({"decision_id": "a", "event_id": "e", "kind": "purchase"}).encode(),
            "kind",
            "'purchase' is not an outcome kind",
        ),
        (
            json.dumps(
                [
                    {"decision_id": "a", "event_id": "e", "kind": "click"},
                    {"decision_id": "a", "event_id": "f", "kind": "click", "value": "x"},
                ]
            ).encode(),
            "events[1].value",
            "Expected `float`",
        ),
        (json.dumps([]).encode(), "events", "at least one event"),
        (
            json.dumps({"decision_id": "", "event_id": "e", "kind": "click"}).encode(),
            "decision_id",
            "length >= 1",
        ),
    ],
)
def test_bad_feedback_bodies_get_400_naming_the_field(gateway, body, field, fragment):
    r = call(gateway, "POST", "/v1/feedback", body)
    assert r.status_code == 400
    message = json.loads(r.body)["error"]
    assert fragment in message
    if field:
        assert message.startswith(f"{field}: ")


def test_non_finite_feedback_values_are_refused(gateway):
    event = {"decision_id": "a", "event_id": "e", "kind": "spend", "value": float("nan")}
    code, body = feedback(gateway, event, fmt="msgpack")
    assert code == 400 and body["error"] == "value: must be finite, got nan"


def test_feedback_without_a_log_is_refused(loop_config):
    config = msgspec.structs.replace(
        loop_config,
        decision_log=msgspec.structs.replace(loop_config.decision_log, enabled=False),
        experiments=(),
        use_cases=(msgspec.structs.replace(loop_config.use_case("hillstrom")),),
    )
    router = Router(config, {}, None)
    body = json.dumps({"decision_id": "a", "event_id": "e", "kind": "visit"}).encode()
    r = call(router, "POST", "/v1/feedback", body)
    assert r.status_code == 503 and "disabled" in json.loads(r.body)["error"]


# --------------------------------------------------------- experiments and holdouts


def test_holdout_units_get_the_control_action(gateway, loop_config):
    experiment = next(e for e in loop_config.experiments if e.holdout is not None)
    units = [f"customer-{i}" for i in range(60)]
    arms = {u: assign_variant(experiment, u).name for u in units}
    assert {"holdout", "model"} <= set(arms.values())
    for unit in units[:20]:
        payload = {
            "use_case": "hillstrom",
            "context": CUSTOMER,
            "unit_id": unit,
            "experiment": experiment.name,
        }
        r = call(gateway, "POST", "/v1/decide", json.dumps(payload).encode())
        answer = json.loads(r.body)
        assert (answer["experiment"], answer["variant"]) == (experiment.name, arms[unit])
        if arms[unit] == "holdout":
            assert answer["policy"] == "control"
            assert [(a["id"], a["propensity"]) for a in answer["actions"]] == [("No E-Mail", 1.0)]
    holdout_unit = next(u for u in units if arms[u] == "holdout")
    payload = {
        "use_case": "hillstrom",
        "context": CUSTOMER,
        "unit_id": holdout_unit,
        "experiment": experiment.name,
        "exclusions": ["No E-Mail"],
    }
    r = call(gateway, "POST", "/v1/decide", json.dumps(payload).encode())
    assert r.status_code == 400
    assert json.loads(r.body)["error"].startswith("exclusions: unit is in arm 'holdout'")


def test_assignment_is_sticky_and_follows_the_shares():
    experiment = Experiment(
        name="e",
        use_case="hillstrom",
        salt="s1",
        holdout=Holdout(weight=0.1),
        variants=(Variant(name="a", weight=0.6), Variant(name="b", weight=0.3)),
    )
    units = [f"u{i}" for i in range(20_000)]
    first = [assign_variant(experiment, u).name for u in units]
    assert first == [assign_variant(experiment, u).name for u in units]
    shares = {name: first.count(name) / len(units) for name in ("holdout", "a", "b")}
    # 20,000 units: standard errors below 0.004.
    assert shares["holdout"] == pytest.approx(0.1, abs=0.012)
    assert shares["a"] == pytest.approx(0.6, abs=0.015)
    assert shares["b"] == pytest.approx(0.3, abs=0.015)


@pytest.mark.parametrize(
    ("experiment", "fragment"),
    [
        (
            {"variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.4}]},
            "must add up to 1, got 0.5 + 0.4 = 0.9",
        ),
        (
            {"holdout": {"weight": 0.2}, "variants": [{"name": "a", "weight": 1.0}]},
            "must add up to 1, got 0.2 + 1 = 1.2",
        ),
        (
            {
                "holdout": {"weight": 0.5, "name": "a"},
                "variants": [{"name": "a", "weight": 0.5}],
            },
            "must be unique",
        ),
        (
            {"control": "zzz", "variants": [{"name": "a", "weight": 1.0}]},
            "control 'zzz' is not one of the arms",
        ),
    ],
)
def test_experiment_rules_name_the_setting(experiment, fragment):
    raw = {
        "use_cases": [{"kind": "hillstrom", "name": "h", "model_name": "m"}],
        "experiments": [{"name": "e", "use_case": "h", **experiment}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.setting == "experiments[0]"
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (
            {
                "use_cases": [{"kind": "obd", "name": "o", "model_name": "m"}],
                "experiments": [
                    {
                        "name": "e",
                        "use_case": "o",
                        "holdout": {"weight": 0.5},
                        "variants": [{"name": "a", "weight": 0.5}],
                    }
                ],
            },
            "experiments[0].holdout.policy: control (no intervention) needs a use case with "
            "a control action",
        ),
        (
            {
                "use_cases": [
                    {
                        "kind": "obd",
                        "name": "o",
                        "model_name": "m",
                        "policy": {"kind": "plackett_luce"},
                    }
                ]
            },
            "use_cases[0].policy: plackett_luce logs exact slot probabilities for at most 3 "
            "slots, but use case 'o' allows max_k = 10",
        ),
        (
            {
                "use_cases": [
                    {
                        "kind": "hillstrom",
                        "name": "h",
                        "model_name": "m",
                        "policy": {"kind": "linear"},
                    }
                ]
            },
            "use_cases[0].policy: linear runs on a two-tower model's features",
        ),
        (
            {
                "use_cases": [
                    {"kind": "obd", "name": "o", "model_name": "m", "policy": {"kind": "thompson"}}
                ],
                "decision_log": {"enabled": False},
            },
            "use_cases[0].policy: bandit policies learn from the decision log",
        ),
        (
            {
                "use_cases": [
                    {"kind": "obd", "name": "o", "model_name": "m", "learning": {"reward": "buy"}}
                ]
            },
            "use_cases[0].learning.reward = 'buy' is not one of decision_log.outcome_kinds",
        ),
        (
            {
                "use_cases": [
                    {"kind": "obd", "name": "o", "model_name": "m"},
                    {"kind": "hillstrom", "name": "h", "model_name": "n"},
                ],
                "experiments": [
                    {
                        "name": "e",
                        "use_case": "o",
                        "variants": [{"name": "a", "weight": 1.0, "use_case": "h"}],
                    }
                ],
            },
            "experiments[0].variants[0].use_case = 'h' is not of the experiment's use case's kind",
        ),
        (
            {
                "use_cases": [{"kind": "obd", "name": "o", "model_name": "m"}],
                "decision_log": {"durability": "eventually"},
            },
            "'eventually'",
        ),
        (
            {
                "use_cases": [{"kind": "obd", "name": "o", "model_name": "m"}],
                "decision_log": {"outcome_kinds": ["reward"]},
            },
            "would clash with export columns",
        ),
    ],
)
def test_policy_and_log_rules_name_the_setting(raw, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert fragment in str(info.value)


def test_decision_log_settings_default_to_the_logs_own_defaults():
    settings = parse_config({"use_cases": [{"kind": "obd", "name": "o", "model_name": "m"}]})
    built = settings.decision_log.log_config("/state")
    plain = DecisionLogConfig(path=built.path)
    assert built == plain and built.path == "/state/decisions.sqlite"


# ------------------------------------------------------------------------ reload


def test_reload_needs_the_admin_token(gateway):
    body = json.dumps({"version": "7"}).encode()
    r = call(gateway, "POST", "/v1/models/obd_click/load", body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = call(gateway, "POST", "/v1/models/obd_click/load", body, {"authorization": "Bearer no"})
    assert r.status_code == 403
    bad = json.dumps({"checkpoint": "/nowhere/model"}).encode()
    r = call(
        gateway, "POST", "/v1/models/obd_click/load", bad, {"authorization": f"Bearer {ADMIN}"}
    )
    assert r.status_code == 400 and json.loads(r.body)["error"].startswith("checkpoint: ")
    r = call(gateway, "POST", "/v1/models/nope/load", body, {"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 404
    r = call(
        gateway, "POST", "/v1/models/obd_click/load", b"{}", {"authorization": f"Bearer {ADMIN}"}
    )
    assert (
        r.status_code == 400 and "give checkpoint, version or both" in json.loads(r.body)["error"]
    )


def test_reload_with_requests_in_flight_fails_none(tmp_path):
    config = configured(tmp_path)
    config = msgspec.structs.replace(config, experiments=(), use_cases=(config.use_case("obd"),))
    log = open_decision_log(config)
    scorers = {"obd": DirectScorer(config.use_case("obd"), config, log, learner=False)}
    router = Router(config, scorers, log)
    payload = json.dumps({"use_case": "obd", "context": {"user_features": USERS}}).encode()
    reload_body = json.dumps({"checkpoint": "default", "version": "2"}).encode()

    async def scenario():
        # Requests every 2 ms before, during and after the reload.
        tasks = []

        async def send(n):
            for _ in range(n):
                tasks.append(asyncio.create_task(acall(router, "POST", "/v1/decide", payload)))
                await asyncio.sleep(0.002)

        await send(10)
        await asyncio.wait(tasks)  # some answered by the old model for sure
        reload_task = asyncio.create_task(
            acall(
                router,
                "POST",
                "/v1/models/obd_click/load",
                reload_body,
                {"authorization": f"Bearer {ADMIN}"},
            )
        )
        while not reload_task.done():
            await send(1)
        await send(10)
        answers = await asyncio.gather(*tasks)
        after = await acall(router, "POST", "/v1/decide", payload)
        return reload_task.result(), answers, after

    try:
        reload, answers, after = asyncio.run(scenario())
    finally:
        log.close()
    assert reload.status_code == 200, reload.body
    assert json.loads(reload.body)["version"] == "2"
    assert [a.status_code for a in answers] == [200] * len(answers)
    versions = [msgspec.json.decode(a.body, type=DecideResponse).model_version for a in answers]
    assert versions[0] == "1" and versions[-1] == "2"  # requests ran on both sides of the swap
    assert versions == sorted(versions)  # and never went back
    assert msgspec.json.decode(after.body, type=DecideResponse).model_version == "2"
    served = DecisionLog.from_config(config.decision_log.log_config(config.state_dir))
    try:
        for a in answers:
            answer = msgspec.json.decode(a.body, type=DecideResponse)
            assert served.get_decision(answer.decision_id).model_version == answer.model_version
    finally:
        served.close()
    r = call(router, "GET", "/v2/models/obd_click/versions/2")
    assert r.status_code == 200


# ------------------------------------------------------------------------ report


def test_experiment_report(tmp_path):
    config = configured(tmp_path)
    experiment = Experiment(
        name="report",
        use_case="obd",
        salt="report",
        variants=(
            Variant(name="greedy", weight=0.5, policy=Greedy()),
            Variant(name="explore", weight=0.5),
        ),
    )
    config = msgspec.structs.replace(
        config, experiments=(experiment,), use_cases=(config.use_case("obd"),)
    )
    log = open_decision_log(config)
    router = Router(
        config, {"obd": DirectScorer(config.use_case("obd"), config, log, learner=False)}, log
    )
    rng = np.random.default_rng(7)
    try:
        answers = []
        for i in range(120):
            users = [f"f{rng.integers(4)}", "b", "c", f"d{i % 5}"]
            answers.append(
                decide(
                    router,
                    context={"user_features": users},
                    unit_id=f"unit-{i}",
                    experiment="report",
                )
            )
        clicked = set()
        for a in answers:
            # Greedy gets clicks on its first slot 30% of the time, exploration 10%.
            rate = 0.3 if a["variant"] == "greedy" else 0.1
            if rng.random() < rate:
                clicked.add(a["decision_id"])
                event = {
                    "decision_id": a["decision_id"],
                    "event_id": "c",
                    "kind": "click",
                    "action": str(a["actions"][0]["id"]),
                }
                assert feedback(router, event)[0] == 200
        r = call(router, "GET", "/v1/experiments/report/report")
        assert r.status_code == 200, r.body
        report = json.loads(r.body)
    finally:
        log.close()
    arms = {a["variant"] for a in answers}
    assert report["control"] == "greedy" and report["decisions"] == 120
    for name in arms:
        arm = report["variants"][name]
        mine = [a for a in answers if a["variant"] == name]
        hits = sum(a["decision_id"] in clicked for a in mine)
        click = arm["outcomes"]["click"]
        assert arm["decisions"] == len(mine)
        assert (click["events"], click["decisions_with_outcome"]) == (hits, hits)
        assert click["rate"] == pytest.approx(hits / len(mine))
        assert click["rate_ci"][0] <= click["rate"] <= click["rate_ci"][1]
    lift = report["variants"]["explore"]["lift"]
    assert lift["against"] == "greedy"
    rates = {n: report["variants"][n]["outcomes"]["click"]["rate"] for n in arms}
    assert lift["difference"] == pytest.approx(rates["explore"] - rates["greedy"])
    assert lift["difference_ci"][0] <= lift["difference"] <= lift["difference_ci"][1]
    # The greedy arm logged the greedy policy itself: every importance weight is 1, so
    # IPS of greedy on that arm is its own mean reward per slot.
    greedy_ope = report["variants"]["greedy"]["ope"][0]
    assert greedy_ope["policy"] == "greedy" and greedy_ope["skipped_decisions"] == 0
    ips = greedy_ope["estimates"]["ips"]
    assert ips["estimate"] == pytest.approx(greedy_ope["logging_policy_value"]["estimate"])
    assert ips["max_weight"] == pytest.approx(1.0)
    assert set(greedy_ope["estimates"]) == {"ips", "snips", "dr"}
    r = call(router, "GET", "/v1/experiments/nope/report")
    assert r.status_code == 404


# ----------------------------------------------------------------- evaluate logs


def test_evaluate_logs_replays_a_policy_over_the_servers_log(tmp_path, capsys):
    import argparse

    from nudgeserve.commands import evaluate

    config = configured(tmp_path)
    config = msgspec.structs.replace(config, experiments=(), use_cases=(config.use_case("obd"),))
    obd = msgspec.structs.replace(config.use_case("obd"), policy=Greedy())
    config = msgspec.structs.replace(config, use_cases=(obd,))
    log = open_decision_log(config)
    router = Router(config, {"obd": DirectScorer(obd, config, log, learner=False)}, log)
    rng = np.random.default_rng(11)
    rewards = []
    for i in range(60):
        d = decide(router, context={"user_features": [f"a{i % 7}", "b", f"c{i % 3}", "d"]})
        clicked = rng.random() < 0.2
        if clicked:
            event = {"decision_id": d["decision_id"], "event_id": "c", "kind": "click"}
            assert feedback(router, event)[0] == 200
        rewards += [1.0 if clicked else 0.0] * len(d["actions"])
    log.close()

    def parse(*argv):
        parser = argparse.ArgumentParser()
        evaluate.add_arguments(parser)
        return parser.parse_args(list(argv))

    db = config.decision_log.log_config(config.state_dir).path
    out = tmp_path / "rows.parquet"
    report_json = tmp_path / "report.json"
    args = parse(
        "logs", "--db", db, "--n-bootstrap", "100", "--export", str(out), "--json", str(report_json)
    )
    assert evaluate.run(args) == 0
    report = json.loads(report_json.read_text())
    # Logged greedy, evaluated greedy: weights 1, IPS = the logged mean reward per slot.
    assert report["rows"] == len(rewards)
    assert report["results"]["ips"]["estimate"] == pytest.approx(np.mean(rewards))
    assert report["results"]["ips"]["max_weight"] == pytest.approx(1.0)
    assert "dr" in report["results"]
    # The exported rows are what `evaluate parquet` reads, with the same estimate.
    args = parse("parquet", str(out), "--n-bootstrap", "100", "--json", str(report_json))
    assert evaluate.run(args) == 0
    again = json.loads(report_json.read_text())
    assert again["results"]["ips"]["estimate"] == pytest.approx(np.mean(rewards))
    capsys.readouterr()
    assert evaluate.run(parse("logs", "--db", db, "--variant", "x")) == 2
    assert "--variant needs --experiment" in capsys.readouterr().err
    assert evaluate.run(parse("logs", "--db", db, "--use-case", "nope")) == 2
    assert "--use-case 'nope' is not configured" in capsys.readouterr().err


def test_a_variant_can_decide_with_another_model_version(tmp_path):
    config = configured(tmp_path)
    obd = config.use_case("obd")
    newer = msgspec.structs.replace(obd, name="obd_v2", model_name="obd_click_v2", version="2")
    experiment = Experiment(
        name="models",
        use_case="obd",
        salt="models",
        variants=(
            Variant(name="v1", weight=0.5),
            Variant(name="v2", weight=0.5, use_case="obd_v2"),
        ),
    )
    config = msgspec.structs.replace(config, use_cases=(obd, newer), experiments=(experiment,))
    log = open_decision_log(config)
    scorers = {u.name: DirectScorer(u, config, log, learner=False) for u in config.use_cases}
    router = Router(config, scorers, log)
    try:
        seen = {}
        for i in range(20):
            d = decide(router, unit_id=f"unit-{i}", experiment="models")
            seen[d["variant"]] = (d["use_case"], d["model_version"])
            assert d["variant"] == assign_variant(experiment, f"unit-{i}").name
            assert log.get_decision(d["decision_id"]).model_version == d["model_version"]
    finally:
        log.close()
    assert seen == {"v1": ("obd", "1"), "v2": ("obd_v2", "2")}
