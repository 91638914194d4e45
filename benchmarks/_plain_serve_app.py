"""The plain Ray Serve baseline: what a first, straightforward Ray Serve deployment does.

    python -m benchmarks._plain_serve_app --port P [--checkpoint PATH] [--ray-dir DIR]

One deployment, one replica, no ``@serve.batch``: every request is featurized and scored
on its own, with the NumPy reference featurization (the process sets
``NUDGESERVE_KERNELS=numpy`` before anything imports the kernels, so no Cython or Numba
code runs) and the same checkpoint loaded by the same loader as our server. It speaks
what the benchmark sends: the KServe v2 routes perf_analyzer needs (server and model
metadata, model config, infer with JSON or binary tensors) and ``POST /v1/decide``
(same request and response fields as our server, computed per request with NumPy).

SIGINT or SIGTERM shuts Serve and the local Ray down.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

# Set for Ray's workers (runtime_env) so the replica imports the kernels as NumPy only.
NUMPY_ONLY = {"NUDGESERVE_KERNELS": "numpy"}


def _binary_response(header: dict, blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


class _Candidate(msgspec.Struct, frozen=True):
    id: int | str


class _Context(msgspec.Struct, frozen=True):
    user_features: list[str]
    affinity: list[float] | None = None


class _DecideRequest(msgspec.Struct, frozen=True):
    """The fields of our server's ``/v1/decide`` request that the OBD use case reads."""

    use_case: str
    context: _Context
    candidates: list[_Candidate] | None = None
    k: int | None = None


class PlainDecider:
    """``POST /v1/decide`` for the OBD use case, one request at a time.

    Same request and response fields and the same policy as our server's default
    (epsilon-greedy, epsilon 0.1, ranking by slot-0 click probability), but per request
    and through whatever kernel backend the process chose (NumPy in the baseline). Its
    wire types are its own, so the baseline does not borrow the server's code; decisions
    are not logged.
    """

    def __init__(self, scorer: Any, epsilon: float = 0.1, default_k: int = 3) -> None:
        self.scorer = scorer
        self.epsilon = epsilon
        self.default_k = default_k
        self.n_items = scorer.n_items
        self.checkpoint = scorer.loaded.metadata.weights_sha256[:12]
        self.decoder = msgspec.json.Decoder(_DecideRequest)
        self.encoder = msgspec.json.Encoder()
        self.rng = np.random.default_rng()

    def decide(self, body: bytes) -> bytes:
        """Request bytes -> response bytes; ValueError (400) / LookupError (404) name the
        bad field."""
        from nudgeserve.kernels import epsilon_greedy_slate

        try:
            req = self.decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        if req.use_case != "obd":
            raise LookupError(f"use_case: {req.use_case!r} is not served (only 'obd')")
        ctx = req.context
        users = np.array([ctx.user_features], dtype=object)
        affinity = None if ctx.affinity is None else np.array([ctx.affinity], np.float32)
        scores = self.scorer.predict(self.scorer.featurizer.transform(users, affinity), 0)
        excluded = None
        allowed = self.n_items
        if req.candidates is not None:
            ids = [c.id for c in req.candidates]
            if not all(isinstance(i, int) and 0 <= i < self.n_items for i in ids):
                raise ValueError(f"candidates: ids must be catalog items 0..{self.n_items - 1}")
            excluded = np.ones((1, self.n_items), dtype=np.bool_)
            excluded[0, ids] = False
            allowed = len(set(ids))
        k = req.k if req.k is not None else self.default_k
        if not 1 <= k <= allowed:
            raise ValueError(f"k: must be in [1, {allowed}], got {k}")
        seed = np.array([self.rng.integers(0, 2**63)], dtype=np.uint64)
        idx, prop = epsilon_greedy_slate(scores, k, self.epsilon, seed, mask=excluded)
        actions = [
            {"id": int(i), "rank": r + 1, "score": float(scores[0, i]), "propensity": float(p)}
            for r, (i, p) in enumerate(zip(idx[0], prop[0], strict=True))
        ]
        return self.encoder.encode(
            {
                "decision_id": self.rng.bytes(16).hex(),
                "use_case": "obd",
                "model_name": "obd_click",
                "model_version": "1",
                "model_checkpoint": self.checkpoint,
                "policy": "epsilon_greedy",
                "actions": actions,
            }
        )


def build_app(checkpoint: str | None) -> Any:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    @serve.deployment(
        name="PlainObd",
        num_replicas=1,
        max_ongoing_requests=256,
        ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": NUMPY_ONLY}},
    )
    class PlainObd:
        def __init__(self, checkpoint: str | None) -> None:
            import torch

            from benchmarks import _load_workload as wl
            from nudgeserve import kernels

            torch.set_num_threads(1)
            self.wl = wl
            self.scorer = wl.load_obd_scorer(checkpoint)
            self.backends = kernels.chosen_backends()
            if set(self.backends.values()) != {"numpy"}:
                raise RuntimeError(f"plain baseline must use NumPy kernels, got {self.backends}")
            self.n_items = self.scorer.n_items
            self.n_positions = self.scorer.n_positions
            self.n_fields = len(self.scorer.featurizer.spec.user_feature_names)
            self.decider = PlainDecider(self.scorer)

        def _model_metadata(self) -> dict:
            wl = self.wl
            return {
                "name": wl.V2_MODEL,
                "versions": ["1"],
                "platform": "pytorch",
                "inputs": [
                    {"name": wl.V2_USER_INPUT, "datatype": "BYTES", "shape": [-1, self.n_fields]},
                    {"name": wl.V2_AFFINITY_INPUT, "datatype": "FP32", "shape": [-1, self.n_items]},
                ],
                "outputs": [
                    {
                        "name": wl.V2_OUTPUT,
                        "datatype": "FP32",
                        "shape": [-1, self.n_positions, self.n_items],
                    }
                ],
            }

        def _model_config(self) -> dict:
            wl = self.wl
            return {
                "name": wl.V2_MODEL,
                "platform": "pytorch",
                "max_batch_size": 128,
                "input": [
                    {"name": wl.V2_USER_INPUT, "data_type": "TYPE_STRING", "dims": [self.n_fields]},
                    {
                        "name": wl.V2_AFFINITY_INPUT,
                        "data_type": "TYPE_FP32",
                        "dims": [self.n_items],
                    },
                ],
                "output": [
                    {
                        "name": wl.V2_OUTPUT,
                        "data_type": "TYPE_FP32",
                        "dims": [self.n_positions, self.n_items],
                    }
                ],
            }

        async def __call__(self, request: Request) -> Response:
            path = request.url.path.rstrip("/")
            wl = self.wl
            model_path = f"/v2/models/{wl.V2_MODEL}"
            if request.method == "GET":
                if path in ("/v2/health/live", "/v2/health/ready", f"{model_path}/ready"):
                    return Response(status_code=200)
                if path == "/v2":
                    return JSONResponse(
                        {
                            "name": "plain-ray-serve",
                            "version": "1",
                            "extensions": ["binary_tensor_data"],
                        }
                    )
                if path == model_path:
                    return JSONResponse(self._model_metadata())
                if path == f"{model_path}/config":
                    return JSONResponse(self._model_config())
                return JSONResponse({"error": f"no route {path}"}, status_code=404)
            body = await request.body()
            if path == f"{model_path}/infer":
                return self._infer(body, request.headers.get("inference-header-content-length"))
            if path == "/v1/decide":
                return self._decide(body)
            return JSONResponse({"error": f"no route {path}"}, status_code=404)

        def _infer(self, body: bytes, header_length: str | None) -> Response:
            wl = self.wl
            try:
                req, arrays = wl.parse_v2_request(
                    body, int(header_length) if header_length is not None else None
                )
                users = arrays[wl.V2_USER_INPUT]
                affinity = arrays[wl.V2_AFFINITY_INPUT]
            except (ValueError, KeyError, TypeError) as exc:
                return JSONResponse({"error": f"bad infer request: {exc}"}, status_code=400)
            probs = np.ascontiguousarray(
                wl.v2_infer(self.scorer, users, affinity), dtype=np.float32
            )
            wanted = {o["name"]: (o.get("parameters") or {}) for o in req.get("outputs", [])}
            binary = bool(wanted.get(wl.V2_OUTPUT, {}).get("binary_data", False))
            out = {"name": wl.V2_OUTPUT, "datatype": "FP32", "shape": list(probs.shape)}
            header = {"model_name": wl.V2_MODEL, "model_version": "1", "outputs": [out]}
            if "id" in req:
                header["id"] = req["id"]
            if binary:
                blob = probs.tobytes()
                out["parameters"] = {"binary_data_size": len(blob)}
                content, headers = _binary_response(header, [blob])
                return Response(content, media_type="application/octet-stream", headers=headers)
            out["data"] = probs.reshape(-1).tolist()
            return JSONResponse(header)

        def _decide(self, body: bytes) -> Response:
            try:
                answer = self.decider.decide(body)
            except LookupError as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return Response(answer, media_type="application/json")

    return PlainObd.bind(checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._plain_serve_app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--checkpoint", default=None, help="OBD checkpoint (default: shipped)")
    parser.add_argument(
        "--ray-dir",
        type=Path,
        default=Path(".ray") / "plain",
        help="Ray's temp dir (keep it short: Ray puts sockets in it)",
    )
    args = parser.parse_args(argv)

    os.environ.update(NUMPY_ONLY)
    import ray
    from ray import serve

    args.ray_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        _temp_dir=str(args.ray_dir.resolve()),
        include_dashboard=False,
        num_cpus=os.cpu_count() or 2,
        log_to_driver=False,
        runtime_env={"env_vars": NUMPY_ONLY},
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        # Built from the imported module, not __main__: Ray pickles __main__'s classes by
        # value, and the replica could not resolve their annotations.
        from benchmarks import _plain_serve_app

        serve.run(_plain_serve_app.build_app(args.checkpoint), name="plain", route_prefix="/")
        print(f"plain Ray Serve baseline on 127.0.0.1:{args.port}", flush=True)
        while not stop.is_set():
            time.sleep(0.2)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
