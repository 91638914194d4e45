"""HTTP routing without Ray: the gateway's router driven with real ASGI requests and real
engines (each request scored as a batch of one)."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import msgspec
import numpy as np
import pytest
import tritonclient.http as triton
from starlette.requests import Request
from tritonclient.http._utils import _get_inference_request

from nudgeserve.serve.http.router import Router
from nudgeserve.serve.protocol.decide import DecideResponse


class EngineScorer:
    """A use case's engine answering one request at a time (the scorer interface)."""

    def __init__(self, engine):
        self.engine = engine

    async def decide(self, item):
        return self.engine.decide_batch([item])[0]

    async def infer(self, inputs):
        return self.engine.infer_batch([inputs])[0]

    async def ready(self):
        return {"version": self.engine.info.version}


@pytest.fixture(scope="module")
def router(config, engines):
    return Router(config, {name: EngineScorer(e) for name, e in engines.items()})


def call(router, method, path, body=b"", headers=None):
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    if body and "content-length" not in headers and headers.pop("chunked", None) is None:
        headers["content-length"] = str(len(body))
    headers.pop("chunked", None)
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)] or [b""]

    async def receive():
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    return asyncio.run(router.handle(Request(scope, receive)))


def error_of(response):
    return json.loads(response.body)["error"]


DECIDE = {"use_case": "obd", "context": {"user_features": ["a", "b", "c", "d"]}, "k": 2}


def test_decide_json_and_msgpack(router):
    r = call(
        router,
        "POST",
        "/v1/decide",
        json.dumps(DECIDE).encode(),
        {"content-type": "application/json"},
    )
    assert r.status_code == 200 and r.media_type == "application/json"
    answer = msgspec.json.decode(r.body, type=DecideResponse)
    assert len(answer.actions) == 2 and answer.use_case == "obd"
    r = call(
        router,
        "POST",
        "/v1/decide",
        msgspec.msgpack.encode(DECIDE),
        {"content-type": "application/msgpack"},
    )
    assert r.status_code == 200 and r.media_type == "application/msgpack"
    assert len(msgspec.msgpack.decode(r.body, type=DecideResponse).actions) == 2


def test_compressed_and_chunked_bodies(router):
    raw = json.dumps(DECIDE).encode()
    for encoded, encoding in ((gzip.compress(raw), "gzip"), (zlib.compress(raw), "deflate")):
        r = call(
            router,
            "POST",
            "/v1/decide",
            encoded,
            {"content-type": "application/json", "content-encoding": encoding},
        )
        assert r.status_code == 200, r.body
    r = call(
        router, "POST", "/v1/decide", raw, {"content-type": "application/json", "chunked": "1"}
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"),
    [
        ("GET", "/v1/decide", b"", {}, 405, "GET is not allowed"),
        ("POST", "/v1/nothing", b"{}", {}, 404, "no route"),
        ("POST", "/v1/decide", b"{}", {"content-type": "text/csv"}, 415, "Content-Type"),
        ("POST", "/v1/decide", b"{", {"content-type": "application/json"}, 400, "not valid JSON"),
        ("POST", "/v1/decide", json.dumps({**DECIDE, "k": 99}).encode(), {}, 400, "k: must be"),
        (
            "POST",
            "/v1/decide",
            json.dumps({**DECIDE, "use_case": "x"}).encode(),
            {},
            404,
            "use_case",
        ),
        ("POST", "/v1/decide", b"x" * 100, {"content-encoding": "br"}, 415, "Content-Encoding"),
        ("POST", "/v1/decide", b"not gzip", {"content-encoding": "gzip"}, 400, "gzip"),
        (
            "GET",
            "/v2/models/nope",
            b"",
            {},
            404,
            "served models: hillstrom_interventions, hillstrom_uplift, obd_click",
        ),
        ("GET", "/v2/models/obd_click/versions/0/config", b"", {}, 404, "no version '0'"),
        ("GET", "/v2/models/obd_click/what", b"", {}, 404, "no route"),
        ("POST", "/v2/models/obd_click/infer", b"[]", {}, 400, "infer request is invalid"),
        ("GET", "/v2/models/obd_click/infer", b"", {}, 405, "not allowed"),
    ],
)
def test_errors(router, method, path, body, headers, status, fragment):
    r = call(router, method, path, body, headers)
    assert r.status_code == status
    assert fragment in error_of(r)


def test_too_large_bodies_are_413_before_and_after_decompression(router):
    limit = router.max_body
    r = call(router, "POST", "/v1/decide", b"{}", {"content-length": str(limit + 1)})
    assert r.status_code == 413 and "server.max_body_bytes" in error_of(r)
    r = call(router, "POST", "/v1/decide", b" " * (limit + 10), {"chunked": "1"})
    assert r.status_code == 413
    bomb = gzip.compress(b" " * (limit + 10))
    r = call(router, "POST", "/v1/decide", bomb, {"content-encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in error_of(r)


def test_v2_metadata_routes(router, infos):
    assert call(router, "GET", "/v2/health/live").status_code == 200
    assert call(router, "GET", "/v2/health/ready").status_code == 200
    meta = json.loads(call(router, "GET", "/v2").body)
    assert meta["name"] == "nudgeserve" and "binary_tensor_data" in meta["extensions"]
    version = infos["obd"].version
    for path in ("/v2/models/obd_click", f"/v2/models/obd_click/versions/{version}"):
        model = json.loads(call(router, "GET", path).body)
        assert model["versions"] == [version]
        assert [i["name"] for i in model["inputs"]] == ["user_features", "affinity"]
    config = json.loads(call(router, "GET", "/v2/models/hillstrom_uplift/config").body)
    assert config["max_batch_size"] == 64
    assert call(router, "GET", "/v2/models/obd_click/ready").status_code == 200
    index = json.loads(call(router, "POST", "/v2/repository/index").body)
    assert {m["name"] for m in index} == {
        "obd_click",
        "hillstrom_uplift",
        "hillstrom_interventions",
    }
    openapi = json.loads(call(router, "GET", "/openapi.json").body)
    assert "/v1/decide" in openapi["paths"]


def test_v2_infer_binary_and_statistics(router, engines):
    users = np.array([["a", "b", "c", "d"], ["e", "f", "g", "h"]], dtype=object)
    item = triton.InferInput("user_features", [2, 4], "BYTES")
    item.set_data_from_numpy(users, binary_data=True)
    body, json_size = _get_inference_request(
        inputs=[item],
        request_id=None,
        outputs=[triton.InferRequestedOutput("click_prob", binary_data=True)],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )
    r = call(
        router,
        "POST",
        "/v2/models/obd_click/infer",
        body,
        {"inference-header-content-length": str(json_size)},
    )
    assert r.status_code == 200
    result = triton.InferResult.from_response_body(
        r.body, header_length=int(r.headers["inference-header-content-length"])
    )
    engine = engines["obd"]
    want = engine.scorer.predict(engine.featurizer.transform(users, None))
    np.testing.assert_allclose(result.as_numpy("click_prob"), want, rtol=1e-5)
    stats = json.loads(call(router, "GET", "/v2/models/obd_click/stats").body)["model_stats"][0]
    assert stats["inference_count"] >= 2 and stats["execution_count"] >= 1


def test_metrics_needs_ray_and_says_so(router):
    r = call(router, "GET", "/metrics")
    assert r.status_code == 503 and "metrics export" in error_of(r)
