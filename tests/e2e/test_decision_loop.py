"""The decision loop against the real server (``nudgeserve run`` as a subprocess, default
config, its own state directory): feedback with per-event statuses, the experiment
report, a reload with requests in flight, and, last, SIGTERM in the middle of a stream of
decisions: every decision a client received is in the decision log afterwards.

The server is this module's own (the SIGTERM test stops it), started once.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import pytest

from nudgeserve.serve.config import default_config
from nudgeserve.serve.http.decide import assign_variant
from tests._scratch import ray_temp_dir

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240
ADMIN = "e2e-admin-token-0123456789abcdef"
CUSTOMER = {
    "recency": 2,
    "history": 310.2,
    "mens": 1,
    "womens": 1,
    "newbie": 0,
    "history_segment": "4) $350 - $500",
    "zip_code": "Surburban",
    "channel": "Web",
}


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory):
    from nudgeserve.serve.ray.local import free_port, wait_ready

    port = free_port()
    state = tmp_path_factory.mktemp("state")
    log_path = state / "server.log"
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    env["NUDGESERVE_ADMIN_TOKEN"] = ADMIN
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    command = [
        sys.executable,
        "-m",
        "nudgeserve.cli",
        "run",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        "--ray-temp-dir",
        str(ray_temp_dir("e2edl")),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            try:
                wait_ready(url, 5)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        yield {"url": url, "proc": proc, "db": state / "decisions.sqlite", "log": log_path}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def post(server, path, payload, *, fmt="json", headers=None, timeout=60):
    if fmt == "json":
        body, ctype = json.dumps(payload).encode(), "application/json"
    else:
        body, ctype = msgspec.msgpack.encode(payload), "application/msgpack"
    request = urllib.request.Request(
        server["url"] + path,
        data=body,
        method="POST",
        headers={"content-type": ctype, **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            raw, status, media = r.read(), r.status, r.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        raw, status, media = exc.read(), exc.code, exc.headers.get("content-type", "")
    decoded = msgspec.msgpack.decode(raw) if "msgpack" in media else json.loads(raw)
    return status, decoded


def get(server, path, timeout=120):
    with urllib.request.urlopen(server["url"] + path, timeout=timeout) as r:
        return r.status, json.loads(r.read())


OBD = {"use_case": "obd", "context": {"user_features": ["a", "b", "c", "d"]}}


def test_feedback_statuses_over_http(loop_server):
    status, decision = post(loop_server, "/v1/decide", {**OBD, "k": 2}, fmt="msgpack")
    assert status == 200 and decision["propensity_kind"] == "slot_marginal"
    did, shown = decision["decision_id"], str(decision["actions"][1]["id"])
    event = {"decision_id": did, "event_id": "e1", "kind": "click", "action": shown}
    assert post(loop_server, "/v1/feedback", event)[0] == 200
    status, body = post(loop_server, "/v1/feedback", event, fmt="msgpack")
    assert status == 200 and body["results"][0]["status"] == "duplicate"
    status, body = post(
        loop_server,
        "/v1/feedback",
        [
            {"decision_id": did, "event_id": "e2", "kind": "spend", "value": 12.5},
            {"decision_id": "0" * 32, "event_id": "e3", "kind": "click"},
            {"decision_id": did, "event_id": "e4", "kind": "click", "action": "not-shown"},
        ],
    )
    assert status == 207
    assert [r["status"] for r in body["results"]] == ["joined", "orphaned", "rejected"]
    assert [r["code"] for r in body["results"]] == [200, 404, 422]
    status, body = post(loop_server, "/v1/feedback", {"decision_id": did, "kind": "click"})
    assert status == 400 and "event_id" in body["error"]


def test_experiment_report_over_http(loop_server):
    experiment = next(e for e in default_config().experiments if e.name == "hillstrom_email")
    units = [f"cust-{i}" for i in range(80)]
    for unit in units:
        status, d = post(
            loop_server,
            "/v1/decide",
            {
                "use_case": "hillstrom",
                "context": CUSTOMER,
                "unit_id": unit,
                "experiment": experiment.name,
            },
        )
        assert status == 200 and d["variant"] == assign_variant(experiment, unit).name
        if d["variant"] == "model" and int(d["decision_id"], 16) % 3 == 0:
            post(
                loop_server,
                "/v1/feedback",
                {"decision_id": d["decision_id"], "event_id": "v", "kind": "visit"},
            )
    status, report = get(loop_server, f"/v1/experiments/{experiment.name}/report")
    assert status == 200
    assert report["control"] == "holdout"
    arms = report["variants"]
    assert arms["holdout"]["decisions"] + arms["model"]["decisions"] == report["decisions"] >= 80
    visit = arms["model"]["outcomes"]["visit"]
    assert visit["events"] == visit["decisions_with_outcome"] > 0
    assert arms["holdout"]["outcomes"]["visit"]["events"] == 0
    lift = arms["model"]["lift"]
    assert lift["against"] == "holdout" and lift["metric"] == "conversion rate"
    assert {e["policy"] for e in arms["model"]["ope"]} == {"greedy", "epsilon_greedy"}


def test_reload_with_requests_in_flight(loop_server):
    stop = threading.Event()
    answers = []

    def client():
        while not stop.is_set():
            answers.append(post(loop_server, "/v1/decide", OBD))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client) for _ in range(3)]
        time.sleep(1.0)
        status, body = post(
            loop_server,
            "/v1/models/obd_click/load",
            {"checkpoint": "default", "version": "2"},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        time.sleep(1.0)
        stop.set()
        for c in clients:
            c.result()
    assert status == 200 and body["version"] == "2", body
    assert len(answers) > 20 and {s for s, _ in answers} == {200}
    versions = [a["model_version"] for _, a in answers]
    assert versions[0] == "1" and versions[-1] == "2"
    assert post(loop_server, "/v1/decide", OBD)[1]["model_version"] == "2"
    status, body = post(loop_server, "/v1/models/obd_click/load", {"version": "3"})
    assert status == 401


def test_sigterm_mid_stream_loses_no_answered_decision(loop_server):
    """Keep 8 clients deciding, SIGTERM the server while they do, and look every decision
    a client got an answer for up in the SQLite file after the server exited."""
    received: list[str] = []
    lock = threading.Lock()
    errors = []

    def client(i):
        n = 0
        while True:
            try:
                status, body = post(
                    loop_server,
                    "/v1/decide",
                    {**OBD, "unit_id": f"c{i}-{n}", "experiment": "obd_exploration"},
                    timeout=10,
                )
            except (OSError, http.client.HTTPException) as exc:  # the server went away
                # (a cut-off answer is one the client did not receive)
                errors.append(repr(exc))
                return
            n += 1
            if status != 200:
                errors.append(status)
                if loop_server["proc"].poll() is not None or n > 10_000:
                    return
                continue
            with lock:
                received.append(body["decision_id"])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        clients = [pool.submit(client, i) for i in range(8)]
        deadline = time.monotonic() + 60
        while len(received) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        loop_server["proc"].send_signal(signal.SIGTERM)
        loop_server["proc"].wait(120)
        for c in clients:
            c.result(timeout=60)
    assert len(received) >= 300
    conn = sqlite3.connect(loop_server["db"])
    try:
        logged = {row[0] for row in conn.execute("SELECT decision_id FROM decisions")}
    finally:
        conn.close()
    missing = [d for d in received if d not in logged]
    assert not missing, f"{len(missing)} of {len(received)} answered decisions are not logged"
