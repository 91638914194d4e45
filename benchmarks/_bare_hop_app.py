"""The bare-hop ceiling: one Python HTTP hop and nothing else, under uvicorn.

    python -m benchmarks._bare_hop_app --port P [--host 127.0.0.1] [--k 3]
                                       [--n-items 80] [--n-positions 3]

A raw ASGI app (no framework) in one uvicorn worker with uvicorn's defaults, which pick
uvloop and httptools when they are installed (``GET /v2`` says which ran). For each
request it does the least any Python server must: read the whole body, decode it with
``msgspec.json`` (as a generic object: no schema, no validation), and answer bytes built
once at start-up:

- ``POST /v1/decide``: a decision of the same shape as our server's answer
  (``nudgeserve.serve.protocol.decide.DecideResponse``: decision id, use case, model,
  checkpoint, policy, ``--k`` ranked actions with scores and propensities, experiment,
  variant, propensity kind, intervention), always the same one;
- ``POST /v2/models/obd_click/infer``: a valid KServe v2 answer with ``click_prob`` of shape
  ``[1, n_positions, n_items]`` (JSON, or the binary tensor extension when the request
  asks for binary output, as perf_analyzer's may); a binary request's JSON header is
  what gets decoded.

Nothing is scored, validated or logged, so whatever a real server spends above this is
its own work (featurize, score, select, log) plus its framework. It also answers what the
benchmark and perf_analyzer probe: ``GET /v2/health/{live,ready}``, ``GET /v2``, and the
model's metadata, config and ready routes. It imports nothing of ``nudgeserve``.

SIGINT or SIGTERM stops it (uvicorn's graceful shutdown).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

MODEL = "obd_click"
USER_INPUT = "user_features"
AFFINITY_INPUT = "affinity"
OUTPUT = "click_prob"
MODEL_VERSION = "1"

_JSON = b"application/json"
Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


def _fake_probabilities(n: int) -> list[float]:
    """``n`` deterministic probabilities in (0, 1), rounded to float32 as a model's are, so
    the JSON answer has the size of a real one."""
    values = [0.002 + 0.2 * ((i * 37 + 11) % 101) / 101.0 for i in range(n)]
    return list(struct.unpack(f"<{n}f", struct.pack(f"<{n}f", *values)))


def decide_answer(k: int = 3, n_items: int = 80) -> bytes:
    """The fixed ``/v1/decide`` answer: every field our server's ``DecideResponse`` has."""
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, n_items={n_items}], got {k}")
    scores = sorted(_fake_probabilities(n_items), reverse=True)[:k]
    actions = [
        {
            "id": (17 + 29 * r) % n_items,
            "rank": r + 1,
            "score": scores[r],
            # epsilon-greedy 0.1 over n_items: the greedy pick's slot marginal, then the rest
            "propensity": 0.9 + 0.1 / n_items if r == 0 else 0.1 / n_items,
        }
        for r in range(k)
    ]
    return msgspec.json.encode(
        {
            "decision_id": "5f0c3a9e2b7d4e18a6c1f4b09d2e7a53",
            "use_case": "obd",
            "model_name": MODEL,
            "model_version": MODEL_VERSION,
            "model_checkpoint": "efdf3f90bb09",
            "policy": "epsilon_greedy",
            "actions": actions,
            "experiment": None,
            "variant": None,
            "propensity_kind": "slot_marginal",
            "intervention": None,
        }
    )


def v2_answers(n_items: int = 80, n_positions: int = 3) -> tuple[bytes, bytes, int]:
    """The fixed v2 infer answers: ``(JSON body, binary body, binary body's header length)``."""
    probs = _fake_probabilities(n_positions * n_items)
    out: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": [1, n_positions, n_items]}
    head = {"model_name": MODEL, "model_version": MODEL_VERSION, "outputs": [out]}
    as_json = msgspec.json.encode({**head, "outputs": [{**out, "data": probs}]})
    blob = struct.pack(f"<{len(probs)}f", *probs)
    binary_head = msgspec.json.encode(
        {**head, "outputs": [{**out, "parameters": {"binary_data_size": len(blob)}}]}
    )
    return as_json, binary_head + blob, len(binary_head)


def _metadata(n_items: int, n_positions: int) -> bytes:
    return msgspec.json.encode(
        {
            "name": MODEL,
            "versions": [MODEL_VERSION],
            "platform": "bare-hop",
            "inputs": [
                {"name": USER_INPUT, "datatype": "BYTES", "shape": [-1, 4]},
                {"name": AFFINITY_INPUT, "datatype": "FP32", "shape": [-1, n_items]},
            ],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, n_positions, n_items]}],
        }
    )


def _config(n_items: int, n_positions: int) -> bytes:
    return msgspec.json.encode(
        {
            "name": MODEL,
            "platform": "bare-hop",
            "max_batch_size": 128,
            "input": [
                {"name": USER_INPUT, "data_type": "TYPE_STRING", "dims": [4]},
                {"name": AFFINITY_INPUT, "data_type": "TYPE_FP32", "dims": [n_items]},
            ],
            "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [n_positions, n_items]}],
        }
    )


def _headers(body: bytes, content_type: bytes = _JSON, extra=()) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def _wants_binary(request: Any) -> bool:
    if not isinstance(request, dict):
        return False
    params = request.get("parameters") or {}
    if params.get("binary_data_output"):
        return True
    for out in request.get("outputs") or ():
        if isinstance(out, dict) and (out.get("parameters") or {}).get("binary_data"):
            return True
    return False


def build_app(
    k: int = 3, n_items: int = 80, n_positions: int = 3, http_impl: str = "unknown"
) -> Callable[[dict, Receive, Send], Awaitable[None]]:
    """The ASGI app; ``http_impl`` is what ``GET /v2`` reports as uvicorn's HTTP parser."""
    decide_body = decide_answer(k, n_items)
    v2_json, v2_binary, v2_binary_head = v2_answers(n_items, n_positions)
    decode = msgspec.json.decode
    model_path = f"/v2/models/{MODEL}"
    infer_path = f"{model_path}/infer"
    responses = {
        "decide": (200, decide_body, _headers(decide_body)),
        "v2": (200, v2_json, _headers(v2_json)),
        "v2-binary": (
            200,
            v2_binary,
            _headers(
                v2_binary,
                b"application/octet-stream",
                [(b"inference-header-content-length", str(v2_binary_head).encode())],
            ),
        ),
    }
    gets = {
        "/v2/health/live": b"",
        "/v2/health/ready": b"",
        f"{model_path}/ready": b"",
        model_path: _metadata(n_items, n_positions),
        f"{model_path}/config": _config(n_items, n_positions),
    }

    async def respond(send: Send, status: int, body: bytes, headers: list) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def error(send: Send, status: int, message: str) -> None:
        body = msgspec.json.encode({"error": message})
        await respond(send, status, body, _headers(body))

    async def app(scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] == "POST":
            body = await _read_body(receive)
            if path == "/v1/decide":
                try:
                    decode(body)
                except msgspec.DecodeError as exc:
                    await error(send, 400, f"body: {exc}")
                    return
                await respond(send, *responses["decide"])
                return
            if path == infer_path:
                header_length = None
                for name, value in scope["headers"]:
                    if name == b"inference-header-content-length":
                        header_length = int(value)
                try:
                    request = decode(body if header_length is None else body[:header_length])
                except (msgspec.DecodeError, ValueError) as exc:
                    await error(send, 400, f"body: {exc}")
                    return
                await respond(send, *responses["v2-binary" if _wants_binary(request) else "v2"])
                return
            await error(send, 404, f"no route POST {path}")
            return
        if scope["method"] == "GET":
            if path == "/v2":
                loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
                body = msgspec.json.encode(
                    {
                        "name": "bare-hop",
                        "version": "1",
                        "extensions": ["binary_tensor_data"],
                        "uvicorn": {"loop": loop, "http": http_impl},
                    }
                )
                await respond(send, 200, body, _headers(body))
                return
            if path in gets:
                await respond(send, 200, gets[path], _headers(gets[path]))
                return
        await error(send, 404, f"no route {scope['method']} {path}")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._bare_hop_app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--k", type=int, default=3, help="actions in the decide answer")
    parser.add_argument("--n-items", type=int, default=80, help="catalog items (v2 output)")
    parser.add_argument("--n-positions", type=int, default=3, help="positions (v2 output)")
    args = parser.parse_args(argv)

    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    # uvicorn's defaults (loop="auto", http="auto") pick uvloop and httptools when present;
    # "auto" names the class it resolves to.
    http_impl = import_from_string(HTTP_PROTOCOLS["auto"]).__name__
    app = build_app(args.k, args.n_items, args.n_positions, http_impl)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", access_log=False
    )
    print(
        f"bare hop on {args.host}:{args.port}: uvicorn {uvicorn.__version__}, http {http_impl}",
        flush=True,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
