"""The decision loop on an in-process Ray Serve: a graceful stop drains the decision log
(``enqueue`` durability, the case where it matters), the learner actor closes the loop
from feedback to the Thompson arm's choices, and a reload reaches every replica of a
use-case deployment while requests keep being answered.

One Ray for the module (``local_ray``); each test deploys the app it needs.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request

import msgspec
import pytest

from nudgeserve.serve.config import (
    Autoscaling,
    DeploymentSettings,
    Experiment,
    Learning,
    ServerSettings,
    Thompson,
    Variant,
    default_config,
)
from nudgeserve.serve.decisions import DecisionLog
from nudgeserve.serve.ray.app import APP_NAME, build_app

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

RAY_TEMP_NAME = "dloop"
ADMIN = "integration-admin-token-0123456789"


@pytest.fixture(scope="module")
def url(local_ray):
    from nudgeserve.serve.ray.local import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def obd_config(state_dir, *, placement="colocated", replicas=1, experiments=(), **log):
    config = default_config()
    obd = config.use_case("obd")
    obd = msgspec.structs.replace(
        obd,
        deployment=DeploymentSettings(
            autoscaling=Autoscaling(min_replicas=replicas, max_replicas=replicas),
            num_cpus=0.25,
            num_gpus=0.0,
        ),
        learning=Learning(reward="click", reward_delay_s=0.0, poll_interval_s=0.2, refresh_s=0.2),
    )
    server = ServerSettings(
        ingress="proxy",
        placement=placement,
        admin_token=ADMIN,
        gateway=DeploymentSettings(num_cpus=0.25, num_gpus=0.0),
    )
    return msgspec.structs.replace(
        config,
        server=server,
        use_cases=(obd,),
        experiments=experiments,
        state_dir=str(state_dir),
        decision_log=msgspec.structs.replace(config.decision_log, **log),
    )


def post(url, path, payload, headers=None, timeout=60):
    body = json.dumps(payload).encode()
    request = urllib.request.Request(
        url + path,
        data=body,
        method="POST",
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def decide_many(url, payloads, threads=16):
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda p: post(url, "/v1/decide", p), payloads))


def test_graceful_stop_drains_the_log(url, tmp_path):
    config = obd_config(tmp_path, durability="enqueue")
    serve.run(build_app(config, has_gpus=False), name=APP_NAME, route_prefix="/")
    payloads = [
        {
            "use_case": "obd",
            "context": {"user_features": ["a", "b", "c", str(i)]},
            "unit_id": f"u{i}",
        }
        for i in range(200)
    ]
    answers = decide_many(url, payloads)
    assert [status for status, _ in answers] == [200] * len(payloads)
    # Acknowledged on enqueue: some may still be queued when the stop begins.
    serve.delete(APP_NAME)
    log = DecisionLog.from_config(config.decision_log.log_config(config.state_dir))
    try:
        for _, answer in answers:
            record = log.get_decision(answer["decision_id"])
            assert record is not None, answer["decision_id"]
            assert record.actions == [str(a["id"]) for a in answer["actions"]]
    finally:
        log.close()


def test_feedback_reaches_the_thompson_arm_through_the_learner(url, tmp_path):
    experiment = Experiment(
        name="learn",
        use_case="obd",
        salt="learn",
        variants=(Variant(name="ts", weight=1.0, policy=Thompson(prior_beta=50.0)),),
    )
    config = obd_config(tmp_path, experiments=(experiment,))
    serve.run(build_app(config, has_gpus=False), name=APP_NAME, route_prefix="/")
    try:
        good = 42
        last = []
        for round_ in range(6):
            payloads = [
                {
                    "use_case": "obd",
                    "context": {"user_features": ["a", "b", "c", "d"]},
                    "candidates": [{"id": i} for i in (40, 41, 42, 43)],
                    "k": 1,
                    "unit_id": f"r{round_}-{i}",
                    "experiment": "learn",
                }
                for i in range(30)
            ]
            answers = decide_many(url, payloads, threads=8)
            assert [status for status, _ in answers] == [200] * len(answers)
            last = [a["actions"][0]["id"] for _, a in answers]
            events = [
                {
                    "decision_id": a["decision_id"],
                    "event_id": "click",
                    "kind": "click",
                    "action": str(good),
                }
                for _, a in answers
                if a["actions"][0]["id"] == good
            ]
            if events:
                status, body = post(url, "/v1/feedback", events)
                assert status == 200, body
            # The learner applies a poll (0.2 s) after the decisions; replicas refresh
            # every 0.2 s: within the documented bound plus slack for a busy machine.
            time.sleep(1.5)
        assert last.count(good) >= 24, last
    finally:
        serve.delete(APP_NAME)
        from nudgeserve.serve.ray.learner import stop_learners

        stop_learners(config)


def test_reload_reaches_every_replica_without_failing_requests(url, tmp_path):
    config = obd_config(tmp_path, placement="separate", replicas=2)
    serve.run(build_app(config, has_gpus=False), name=APP_NAME, route_prefix="/")
    try:
        payload = {"use_case": "obd", "context": {"user_features": ["a", "b", "c", "d"]}}
        with concurrent.futures.ThreadPoolExecutor(9) as pool:
            during = [pool.submit(post, url, "/v1/decide", payload) for _ in range(150)]
            reload = pool.submit(
                post,
                url,
                "/v1/models/obd_click/load",
                {"checkpoint": "default", "version": "5"},
                {"authorization": f"Bearer {ADMIN}"},
            )
            results = [f.result() for f in during]
            status, body = reload.result()
        assert status == 200 and body["version"] == "5", body
        assert [s for s, _ in results] == [200] * len(results)
        # Every replica follows the registry within its poll interval (plus a load).
        deadline = time.monotonic() + 30
        while True:
            versions = {a["model_version"] for _, a in decide_many(url, [payload] * 40)}
            if versions == {"5"} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert versions == {"5"}
    finally:
        serve.delete(APP_NAME)
