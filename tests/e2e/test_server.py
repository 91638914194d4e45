"""The real server, end to end: tritonclient (metadata, config, infer in JSON and binary),
plain HTTP for /v1/decide (JSON and msgpack), bad input answered with 4xx while the server
keeps serving, /metrics and /openapi.json. Outputs are compared with the models run here.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import time
import urllib.error
import urllib.request

import msgspec
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from nudgeserve.models import (
    HillstromScorer,
    ObdScorer,
    default_checkpoint,
    load_checkpoint,
    load_hillstrom,
    load_obd,
)
from nudgeserve.serve.config import default_config
from nudgeserve.serve.http.decide import assign_variant


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(f"127.0.0.1:{server['port']}", concurrency=4)
    yield c
    c.close()


@pytest.fixture(scope="module")
def obd():
    scorer = ObdScorer(load_checkpoint(default_checkpoint("obd")), device="cpu")
    log = load_obd("random", "all")
    rows = np.arange(0, 5000, 997)[:5]
    users = log.user_features[rows].astype(object)
    affinity = np.ascontiguousarray(log.affinity[rows], dtype=np.float32)
    return scorer, users, affinity


def request(server, method, path, body=None, headers=None, timeout=30):
    req = urllib.request.Request(
        server["url"] + path, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def decide(server, payload, fmt="json"):
    if fmt == "json":
        body, ctype = json.dumps(payload).encode(), "application/json"
    else:
        body, ctype = msgspec.msgpack.encode(payload), "application/msgpack"
    return request(server, "POST", "/v1/decide", body, {"content-type": ctype})


def test_server_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "nudgeserve"
    assert {"binary_tensor_data", "model_configuration"} <= set(meta["extensions"])
    assert isinstance(meta["kernels"], dict)  # {op: backend} of the answering process
    model = client.get_model_metadata("obd_click")
    assert model["name"] == "obd_click"
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("user_features", "BYTES", [-1, 4]),
        ("affinity", "FP32", [-1, 80]),
    ]
    assert model["outputs"][0]["shape"] == [-1, 3, 80]
    config = client.get_model_config("obd_click")
    assert config["max_batch_size"] == 64
    assert config["input"][0] == {"name": "user_features", "data_type": "TYPE_STRING", "dims": [4]}
    assert client.is_model_ready("obd_click") and client.is_model_ready("hillstrom_uplift")
    assert client.is_model_ready("obd_click", model["versions"][0])
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize("binary", [False, True])
def test_obd_infer_matches_the_model(client, obd, binary):
    scorer, users, affinity = obd
    inputs = [
        triton.InferInput("user_features", list(users.shape), "BYTES"),
        triton.InferInput("affinity", list(affinity.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(users, binary_data=binary)
    inputs[1].set_data_from_numpy(affinity, binary_data=binary)
    outputs = [triton.InferRequestedOutput("click_prob", binary_data=binary)]
    result = client.infer("obd_click", inputs, outputs=outputs, request_id="e2e")
    got = result.as_numpy("click_prob")
    want = scorer.predict(scorer.featurizer.transform(users, affinity))
    assert got.shape == (5, 3, 80) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    assert result.get_response()["id"] == "e2e"


def test_hillstrom_infer_matches_the_model(client):
    scorer = HillstromScorer(load_checkpoint(default_checkpoint("hillstrom")), device="cpu")
    columns = load_hillstrom().raw_columns()
    rows = slice(0, 6)
    spec = scorer.featurizer.spec
    numeric = np.stack(
        [np.asarray(columns[n][rows], dtype=np.float32) for n in spec.numeric_names], axis=1
    )
    categorical = np.stack(
        [np.asarray(columns[n][rows], dtype=object) for n in spec.categorical_names], axis=1
    )
    inputs = [
        triton.InferInput("numeric", list(numeric.shape), "FP32"),
        triton.InferInput("categorical", list(categorical.shape), "BYTES"),
    ]
    inputs[0].set_data_from_numpy(numeric)
    inputs[1].set_data_from_numpy(categorical)
    result = client.infer("hillstrom_uplift", inputs)
    want = scorer.score(
        {n: columns[n][rows] for n in (*spec.numeric_names, *spec.categorical_names)}
    )
    for name in ("visit", "conversion", "spend"):
        np.testing.assert_allclose(result.as_numpy(name), getattr(want, name), rtol=1e-5)


def greedy_unit() -> str:
    experiment = default_config().experiments[0]
    return next(
        f"unit-{i}" for i in range(100) if assign_variant(experiment, f"unit-{i}").name == "greedy"
    )


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_decide_matches_the_model(server, obd, fmt):
    scorer, users, affinity = obd
    payload = {
        "use_case": "obd",
        "context": {"user_features": list(users[0]), "affinity": affinity[0].tolist()},
        "k": 4,
        "exclusions": [int(np.argmax(affinity[0]))],
        "experiment": "obd_exploration",
        "unit_id": greedy_unit(),
    }
    status, headers, body = decide(server, payload, fmt)
    assert status == 200, body
    answer = json.loads(body) if fmt == "json" else msgspec.msgpack.decode(body)
    assert headers["content-type"].startswith(f"application/{fmt}")
    probs = scorer.predict(scorer.featurizer.transform(users[:1], affinity[:1]), position=0)[0]
    probs[payload["exclusions"][0]] = -1
    want = np.argsort(-probs, kind="stable")[:4]
    assert [a["id"] for a in answer["actions"]] == want.tolist()
    np.testing.assert_allclose([a["score"] for a in answer["actions"]], probs[want], rtol=1e-5)
    assert [a["propensity"] for a in answer["actions"]] == [1.0] * 4
    assert (answer["variant"], answer["policy"]) == ("greedy", "greedy")
    assert len(answer["decision_id"]) == 32 and answer["model_name"] == "obd_click"


def test_decide_hillstrom_and_concurrent_batches(server):
    customer = {
        "recency": 2,
        "history": 310.2,
        "mens": 1,
        "womens": 1,
        "newbie": 0,
        "history_segment": "4) $350 - $500",
        "zip_code": "Surburban",
        "channel": "Web",
    }
    status, _, body = decide(server, {"use_case": "hillstrom", "context": customer})
    assert status == 200, body
    (action,) = json.loads(body)["actions"]
    assert action["id"] in ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
    payload = {"use_case": "obd", "context": {"user_features": ["a", "b", "c", "d"]}, "k": 3}
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: decide(server, payload), range(96)))
    assert [r[0] for r in results] == [200] * 96
    assert len({json.loads(r[2])["decision_id"] for r in results}) == 96


BAD = [
    (
        "malformed JSON",
        "/v1/decide",
        b'{"use_case": "obd", "context": ',
        {"content-type": "application/json"},
        400,
        "not valid JSON",
    ),
    (
        "malformed msgpack",
        "/v1/decide",
        b"\xc1\xc1",
        {"content-type": "application/msgpack"},
        400,
        "not valid msgpack",
    ),
    (
        "k out of range",
        "/v1/decide",
        json.dumps({"use_case": "obd", "context": {"user_features": ["a"] * 4}, "k": 0}).encode(),
        {"content-type": "application/json"},
        400,
        "k: must be",
    ),
    (
        "wrong context field",
        "/v1/decide",
        json.dumps({"use_case": "obd", "context": {"user_features": ["a"] * 3}}).encode(),
        {"content-type": "application/json"},
        400,
        "context.user_features",
    ),
    (
        "unknown use case",
        "/v1/decide",
        json.dumps({"use_case": "nope", "context": {}}).encode(),
        {"content-type": "application/json"},
        404,
        "use_case",
    ),
    (
        "unsupported media type",
        "/v1/decide",
        b"a,b",
        {"content-type": "text/csv"},
        415,
        "Content-Type",
    ),
    (
        "wrong tensor shape",
        "/v2/models/obd_click/infer",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "user_features",
                        "datatype": "BYTES",
                        "shape": [1, 3],
                        "data": ["a", "b", "c"],
                    }
                ]
            }
        ).encode(),
        {},
        400,
        "inputs[0].shape",
    ),
    (
        "wrong tensor dtype",
        "/v2/models/obd_click/infer",
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "user_features",
                        "datatype": "INT64",
                        "shape": [1, 4],
                        "data": [1, 2, 3, 4],
                    }
                ]
            }
        ).encode(),
        {},
        400,
        "inputs[0].datatype",
    ),
    ("unknown model", "/v2/models/nope/infer", b"{}", {}, 404, "served models"),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "headers", "status", "fragment"), BAD, ids=[b[0] for b in BAD]
)
def test_bad_input_gets_4xx_naming_the_field(server, name, path, body, headers, status, fragment):
    got, _, answer = request(server, "POST", path, body, headers)
    assert got == status, answer
    assert fragment in json.loads(answer)["error"]


def test_nan_in_binary_tensor_and_unknown_model_via_tritonclient(client):
    bad = [
        triton.InferInput("user_features", [1, 4], "BYTES"),
        triton.InferInput("affinity", [1, 80], "FP32"),
    ]
    bad[0].set_data_from_numpy(np.array([["a", "b", "c", "d"]], dtype=object))
    bad[1].set_data_from_numpy(np.full((1, 80), np.nan, dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("obd_click", bad)
    assert info.value.status() == "400" and "NaN" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"


def test_too_large_body_is_413_and_the_server_keeps_serving(server, client):
    limit = default_config().server.max_body_bytes
    # Declared too large: answered before any of the body is read.
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=30)
    conn.putrequest("POST", "/v1/decide")
    conn.putheader("content-type", "application/json")
    conn.putheader("content-length", str(limit + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert "max_body_bytes" in json.loads(response.read())["error"]
    conn.close()
    assert client.is_server_ready()
    status, _, _ = decide(
        server, {"use_case": "obd", "context": {"user_features": ["a", "b", "c", "d"]}}
    )
    assert status == 200


def test_openapi_document(server):
    status, headers, body = request(server, "GET", "/openapi.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["openapi"].startswith("3.") and "/v1/decide" in doc["paths"]
    assert "DecideRequest" in doc["components"]["schemas"]


def test_metrics_in_prometheus_format(server):
    decide(server, {"use_case": "obd", "context": {"user_features": ["a", "b", "c", "d"]}})
    wanted = (
        "ray_nudgeserve_requests_total",
        "ray_nudgeserve_request_latency_seconds_bucket",
        'stage="featurize"',
        'stage="model"',
        'stage="select"',
        'stage="decode"',
        "ray_nudgeserve_batch_size_bucket",
        "ray_nudgeserve_queue_depth",
        "ray_nudgeserve_errors_total",
    )
    deadline = time.monotonic() + 30
    while True:
        status, headers, body = request(server, "GET", "/metrics")
        text = body.decode()
        missing = [w for w in wanted if w not in text]
        if status == 200 and not missing:
            break
        assert time.monotonic() < deadline, f"status {status}, missing {missing}"
        time.sleep(1)
    assert headers["content-type"].startswith("text/plain")
    assert "# TYPE ray_nudgeserve_request_latency_seconds histogram" in text
    assert "# TYPE nudgeserve_kernel_backend gauge" in text
    assert 'code="400"' in text or 'code="404"' in text or 'code="413"' in text
