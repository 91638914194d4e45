"""What the load benchmark sends and what every system computes for it.

Requests are built from real Open Bandit Dataset contexts (the shipped sample; raw user
feature strings and user-item affinities), never random bytes. The v2 contract (model
name, tensor names, shapes, dtypes) is our server's; the baselines serve the same one so
one client and one request set drive all of them.

This module is imported by the baselines' server processes too, including the Triton
venv's (NumPy 1.x), so it imports only NumPy and ``nudgeserve.models``, lazily.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# The KServe v2 model both baselines mirror: our server's OBD click model.
V2_MODEL = "obd_click"
V2_USER_INPUT = "user_features"  # BYTES [B, 4]: raw user_feature_0..3 strings
V2_AFFINITY_INPUT = "affinity"  # FP32 [B, n_items]: raw user-item affinities
V2_OUTPUT = "click_prob"  # FP32 [B, n_positions, n_items]


@dataclass(frozen=True)
class ObdContexts:
    """n real OBD contexts: ``user_features: str[n, 4]``, ``affinity: float32[n, n_items]``."""

    user_features: np.ndarray
    affinity: np.ndarray

    def __len__(self) -> int:
        return int(self.user_features.shape[0])


def obd_contexts(n: int, campaign: str = "all", seed: int = 0) -> ObdContexts:
    """``n`` contexts drawn (without replacement when possible) from the OBD random log."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    from nudgeserve.models import load_obd

    log = load_obd("random", campaign)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(log), size=n, replace=n > len(log))
    return ObdContexts(
        np.asarray(log.user_features[rows], dtype=object),
        np.ascontiguousarray(log.affinity[rows], dtype=np.float32),
    )


def v2_json_bodies(ctx: ObdContexts) -> list[bytes]:
    """One KServe v2 JSON infer request per context (batch of 1), as Triton's clients send."""
    bodies = []
    n_items = ctx.affinity.shape[1]
    for users, affinity in zip(ctx.user_features, ctx.affinity, strict=True):
        payload = {
            "inputs": [
                {
                    "name": V2_USER_INPUT,
                    "datatype": "BYTES",
                    "shape": [1, len(users)],
                    "data": [str(u) for u in users],
                },
                {
                    "name": V2_AFFINITY_INPUT,
                    "datatype": "FP32",
                    "shape": [1, n_items],
                    "data": [float(a) for a in affinity],
                },
            ],
            "outputs": [{"name": V2_OUTPUT}],
        }
        bodies.append(json.dumps(payload, separators=(",", ":")).encode())
    return bodies


def validate_v2_response(body: bytes) -> None:
    """A JSON v2 infer answer must carry ``V2_OUTPUT`` as probabilities; else ValueError."""
    answer = json.loads(body)
    outputs = {o["name"]: o for o in answer.get("outputs", [])}
    if V2_OUTPUT not in outputs:
        raise ValueError(f"v2 answer has outputs {sorted(outputs)}, expected {V2_OUTPUT!r}")
    out = outputs[V2_OUTPUT]
    values = np.asarray(out.get("data", []), dtype=np.float64)
    shape = out.get("shape", [])
    if values.size == 0 or values.size != int(np.prod(shape)) or len(shape) != 3:
        raise ValueError(
            f"v2 output {V2_OUTPUT!r} has shape {shape} and {values.size} values; "
            "expected [1, n_positions, n_items]"
        )
    if not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"v2 output {V2_OUTPUT!r} holds values outside [0, 1]")


def perf_analyzer_rows(ctx: ObdContexts) -> list[dict[str, list]]:
    """perf_analyzer ``--input-data`` entries (one request each, batch dim excluded)."""
    return [
        {V2_USER_INPUT: [str(u) for u in users], V2_AFFINITY_INPUT: [float(a) for a in affinity]}
        for users, affinity in zip(ctx.user_features, ctx.affinity, strict=True)
    ]


DECIDE_USE_CASE = "obd"


def decide_bodies(ctx: ObdContexts, n_candidates: int, k: int, seed: int = 0) -> list[bytes]:
    """One ``POST /v1/decide`` JSON body per context: ``n_candidates`` catalog items (a
    random subset in random order per request) to score, ``k`` to return."""
    n_items = ctx.affinity.shape[1]
    if not 1 <= n_candidates <= n_items:
        raise ValueError(f"n_candidates must be in [1, {n_items}], got {n_candidates}")
    if not 1 <= k <= n_candidates:
        raise ValueError(f"k must be in [1, n_candidates={n_candidates}], got {k}")
    rng = np.random.default_rng(seed)
    bodies = []
    for users, affinity in zip(ctx.user_features, ctx.affinity, strict=True):
        ids = rng.permutation(n_items)[:n_candidates]
        payload = {
            "use_case": DECIDE_USE_CASE,
            "context": {
                "user_features": [str(u) for u in users],
                "affinity": [float(a) for a in affinity],
            },
            "candidates": [{"id": int(i)} for i in ids],
            "k": k,
        }
        bodies.append(json.dumps(payload, separators=(",", ":")).encode())
    return bodies


def decide_validator(k: int) -> Callable[[bytes], None]:
    """A check of one ``/v1/decide`` answer: ``k`` ranked actions with propensities."""

    def validate(body: bytes) -> None:
        answer = json.loads(body)
        actions = answer.get("actions")
        if not isinstance(actions, list) or len(actions) != k:
            raise ValueError(f"decide answer must hold {k} actions, got {body[:300]!r}")
        if [a.get("rank") for a in actions] != list(range(1, k + 1)):
            raise ValueError(f"decide actions must be ranked 1..{k}, got {body[:300]!r}")
        if len({a.get("id") for a in actions}) != k:
            raise ValueError(f"decide actions must be distinct, got {body[:300]!r}")
        if not all(0 < a.get("propensity", 0) <= 1 for a in actions):
            raise ValueError(f"decide propensities must be in (0, 1], got {body[:300]!r}")

    return validate


def load_obd_scorer(checkpoint: str | None = None, device: str = "auto") -> Any:
    """The OBD click model through ``nudgeserve.models``' own loader, warmed up.

    checkpoint: a checkpoint path, or None for the shipped default.
    """
    from nudgeserve import models

    path = checkpoint if checkpoint is not None else models.default_checkpoint("obd")
    loaded = models.load_checkpoint(path, expected_kind="obd_click")
    scorer = models.ObdScorer(loaded, device=device)
    scorer.warmup()
    return scorer


def v2_infer(scorer: Any, user_features: np.ndarray, affinity: np.ndarray) -> np.ndarray:
    """What the v2 model computes: ``float32[B, n_positions, n_items]`` click probabilities.

    user_features: str/object[B, 4]; affinity: float32[B, n_items].
    """
    return scorer.predict(scorer.featurizer.transform(user_features, affinity))


# --- KServe v2 binary tensor extension (used by the plain Ray Serve baseline) -------------


def decode_bytes_tensor(raw: bytes | memoryview, count: int) -> np.ndarray:
    """``count`` BYTES elements (4-byte little-endian length + data each) -> object[count]."""
    out = np.empty(count, dtype=object)
    pos = 0
    view = memoryview(raw)
    for i in range(count):
        if pos + 4 > len(view):
            raise ValueError(f"BYTES tensor is truncated at element {i}")
        (length,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if pos + length > len(view):
            raise ValueError(f"BYTES tensor element {i} runs past the end of the data")
        out[i] = bytes(view[pos : pos + length]).decode("utf-8")
        pos += length
    if pos != len(view):
        raise ValueError(f"BYTES tensor has {len(view) - pos} trailing bytes")
    return out


_V2_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


def parse_v2_request(body: bytes, header_length: int | None) -> tuple[dict, dict[str, np.ndarray]]:
    """A KServe v2 infer request (JSON, or JSON header + binary tensors) -> its arrays.

    Returns ``(request header dict, {input name: array shaped as declared})``; raises
    ValueError naming the bad input.
    """
    if header_length is None:
        request = json.loads(body)
        binary = b""
    else:
        request = json.loads(body[:header_length])
        binary = body[header_length:]
    arrays: dict[str, np.ndarray] = {}
    pos = 0
    for spec in request.get("inputs", []):
        name, dtype, shape = spec["name"], spec["datatype"], tuple(spec["shape"])
        count = int(np.prod(shape))
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = binary[pos : pos + size]
            pos += size
            if dtype == "BYTES":
                flat = decode_bytes_tensor(raw, count)
            elif dtype in _V2_TYPES:
                flat = np.frombuffer(raw, dtype=_V2_TYPES[dtype])
            else:
                raise ValueError(f"input {name!r}: datatype {dtype} is not supported")
        elif dtype == "BYTES":
            flat = np.asarray(spec["data"], dtype=object)
        elif dtype in _V2_TYPES:
            flat = np.asarray(spec["data"], dtype=_V2_TYPES[dtype])
        else:
            raise ValueError(f"input {name!r}: datatype {dtype} is not supported")
        if flat.size != count:
            raise ValueError(
                f"input {name!r}: shape {list(shape)} needs {count} values, got {flat.size}"
            )
        arrays[name] = flat.reshape(shape)
    return request, arrays
