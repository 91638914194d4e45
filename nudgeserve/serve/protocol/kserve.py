"""KServe v2 / Open Inference Protocol: tensors in and out, metadata, config, statistics.

Plain functions over bytes and NumPy arrays (no HTTP framework, no Ray), complete enough
for ``tritonclient.http`` and Triton's ``perf_analyzer``:

- JSON tensors (``data`` flat in row-major order, or nested) and the binary tensor
  extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes
  followed by each input that has ``parameters.binary_data_size``, in input order.
  ``BYTES`` elements are 4-byte little-endian lengths each followed by that many bytes.
- Outputs go back binary when the request asks (``outputs[i].parameters.binary_data`` or
  the request parameter ``binary_data_output``), else as JSON ``data``.
- Model metadata (``GET /v2/models/{m}``), Triton-style model config
  (``GET /v2/models/{m}/config``: ``max_batch_size`` and inputs without the batch
  dimension, as ``perf_analyzer`` reads them) and statistics (``/stats``).

Every malformed request raises ``InvalidRequest`` naming the field
(``inputs[1].shape``, ``inputs[0].parameters.binary_data_size``).
"""

from __future__ import annotations

import math
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from nudgeserve.serve.errors import InvalidRequest

# KServe v2 datatype -> NumPy dtype (little-endian, as the binary extension sends it).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")


class _Input(msgspec.Struct, frozen=True):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _Output(msgspec.Struct, frozen=True):
    name: str
    parameters: dict[str, Any] = {}


class _InferRequest(msgspec.Struct, frozen=True):
    inputs: list[_Input]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[_Output] | None = None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a served model.

    shape: with the batch dimension first (-1: any size), e.g. ``(-1, 4)``.
    optional: an input the request may leave out.
    finite: reject NaN and infinity (floating inputs).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False
    finite: bool = True

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def config(self) -> dict[str, Any]:
        datatype = "STRING" if self.datatype == "BYTES" else self.datatype
        out = {"name": self.name, "data_type": f"TYPE_{datatype}", "dims": list(self.shape[1:])}
        if self.optional:
            out["optional"] = True
        return out


@dataclass(frozen=True)
class ModelSignature:
    """What ``/v2/models/{name}`` serves: tensors, version, batch limit."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    max_queue_delay_us: int = 0

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.metadata() for t in self.inputs],
            "outputs": [t.metadata() for t in self.outputs],
        }

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "platform": self.platform,
            "backend": "nudgeserve",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": self.max_batch_size,
            "input": [t.config() for t in self.inputs],
            "output": [t.config() for t in self.outputs],
            "dynamic_batching": {
                "max_queue_delay_microseconds": self.max_queue_delay_us,
                "preferred_batch_size": [self.max_batch_size],
            },
            "instance_group": [{"kind": "KIND_AUTO", "count": 1}],
            "model_transaction_policy": {"decoupled": False},
        }

    def input(self, name: str) -> TensorSpec | None:
        for t in self.inputs:
            if t.name == name:
                return t
        return None

    def output(self, name: str) -> TensorSpec | None:
        for t in self.outputs:
            if t.name == name:
                return t
        return None


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request: ``inputs`` by name (batch dimension first)."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...]
    batch_size: int


def server_metadata(version: str, kernels: dict[str, str] | None = None) -> dict[str, Any]:
    """``GET /v2``: name, version and extensions, plus ``kernels``, our own key (clients
    such as ``tritonclient`` return the JSON as is): ``{op: backend}`` of the kernels this
    process has chosen (default: read from ``nudgeserve.kernels``, without loading any)."""
    if kernels is None:
        from nudgeserve.kernels import backend_report

        kernels = {op: e["backend"] for op, e in backend_report(resolve=False).items()}
    return {
        "name": "nudgeserve",
        "version": version,
        "extensions": list(EXTENSIONS),
        "kernels": dict(kernels),
    }


def _parse_header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(
            f"must be an integer, got {value!r}", "Inference-Header-Content-Length"
        ) from None
    if not 0 < n <= body_length:
        raise InvalidRequest(
            f"{n} is not within the body's {body_length} bytes", "Inference-Header-Content-Length"
        )
    return n


def _bytes_elements(raw: memoryview, where: str) -> list[str]:
    """Split a BYTES tensor's binary form (4-byte LE length + bytes, repeated).

    Elements are returned as ``str``: every served model reads BYTES as UTF-8 text.
    """
    out = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise InvalidRequest("truncated BYTES element length", where)
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > end:
            raise InvalidRequest(f"BYTES element of {n} bytes overruns the tensor", where)
        try:
            out.append(str(raw[offset : offset + n], "utf-8"))
        except UnicodeDecodeError:
            raise InvalidRequest(f"element {len(out)} is not valid UTF-8", where) from None
        offset += n
    return out


def _json_data(
    decoders: dict[str, msgspec.json.Decoder],
    spec_type: str,
    raw: msgspec.Raw,
    count: int,
    where: str,
) -> np.ndarray:
    checker = decoders[spec_type]
    try:
        flat = checker.decode(raw)
    except msgspec.ValidationError:
        # Nested (row-major lists of lists) is allowed too: flatten and re-check.
        try:
            nested = decoders["any"].decode(raw)
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"malformed: {exc}", where) from None
        try:
            flat = checker.decode(msgspec.json.encode(list(_flatten(nested))))
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"values must be {spec_type}: {exc}", where) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"malformed: {exc}", where) from None
    if len(flat) != count:
        raise InvalidRequest(f"has {len(flat)} values but the shape needs {count}", where)
    if spec_type == "BYTES":
        return np.array(flat, dtype=object)
    try:
        return np.asarray(flat, dtype=DATATYPES[spec_type])
    except OverflowError:
        raise InvalidRequest(f"a value does not fit {spec_type}", where) from None


def _has_data(raw: msgspec.Raw) -> bool:
    return len(raw) > 0 and bytes(raw).strip() != b"null"


def _flatten(value: Any):
    if isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


class V2Codec:
    """Decoder and encoder of infer requests (msgspec decoders are built once, here; they
    do not pickle, so a deployment builds its codec in ``__init__``)."""

    def __init__(self) -> None:
        self._request = msgspec.json.Decoder(_InferRequest)
        self._data: dict[str, msgspec.json.Decoder] = {
            "any": msgspec.json.Decoder(),
            "BOOL": msgspec.json.Decoder(list[bool]),
            "BYTES": msgspec.json.Decoder(list[str]),
            **{t: msgspec.json.Decoder(list[int]) for t in DATATYPES if t[0] in "IU"},
            **{t: msgspec.json.Decoder(list[float]) for t in ("FP16", "FP32", "FP64")},
        }
        self._encoder = msgspec.json.Encoder()

    def decode(self, body: bytes, header_length: str | None, signature: ModelSignature):
        """See ``decode_infer_request``."""
        return decode_infer_request(body, header_length, signature, self)

    def encode(self, signature: ModelSignature, request: InferRequest, outputs):
        """See ``encode_infer_response``."""
        return encode_infer_response(signature, request, outputs, self)


def decode_infer_request(
    body: bytes, header_length: str | None, signature: ModelSignature, codec: V2Codec
) -> InferRequest:
    """Parse and check an infer request for ``signature``'s model.

    body: the whole (decompressed) request body; header_length: the
    ``Inference-Header-Content-Length`` header's value, or None for a JSON-only body.
    Inputs come back shaped as sent, with the spec's NumPy dtype (object for BYTES).
    """
    n_header = _parse_header_length(header_length, len(body))
    view = memoryview(body)
    header = view[:n_header] if n_header is not None else view
    try:
        request = codec._request.decode(header)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"infer request is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"infer request is not valid JSON: {exc}") from None
    binary = view[n_header:] if n_header is not None else view[:0]
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    batch_size: int | None = None
    for i, item in enumerate(request.inputs):
        where = f"inputs[{i}]"
        spec = signature.input(item.name)
        if spec is None:
            known = ", ".join(t.name for t in signature.inputs)
            raise InvalidRequest(
                f"model {signature.name!r} has no input {item.name!r}; its inputs: {known}",
                f"{where}.name",
            )
        if item.name in inputs:
            raise InvalidRequest(f"input {item.name!r} is given twice", f"{where}.name")
        if item.datatype != spec.datatype:
            raise InvalidRequest(
                f"input {item.name!r} must be {spec.datatype}, got {item.datatype!r}",
                f"{where}.datatype",
            )
        shape = tuple(item.shape)
        if (
            len(shape) != len(spec.shape)
            or any(want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True))
            or any(d < 0 for d in shape)
        ):
            raise InvalidRequest(
                f"input {item.name!r} must have shape {list(spec.shape)} (-1: any), got {list(shape)}",
                f"{where}.shape",
            )
        if batch_size is None:
            batch_size = shape[0]
        elif shape[0] != batch_size:
            raise InvalidRequest(
                f"input {item.name!r} has batch size {shape[0]}, other inputs have {batch_size}",
                f"{where}.shape",
            )
        count = math.prod(shape)
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if _has_data(item.data):
                raise InvalidRequest("has both data and binary_data_size", where)
            if n_header is None:
                raise InvalidRequest(
                    "binary_data_size needs the Inference-Header-Content-Length header",
                    f"{where}.parameters.binary_data_size",
                )
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidRequest(
                    f"must be a non-negative integer, got {size!r}",
                    f"{where}.parameters.binary_data_size",
                )
            if offset + size > len(binary):
                raise InvalidRequest(
                    f"{size} bytes requested but only {len(binary) - offset} remain in the body",
                    f"{where}.parameters.binary_data_size",
                )
            chunk = binary[offset : offset + size]
            offset += size
            if spec.datatype == "BYTES":
                elements = _bytes_elements(chunk, f"{where} (binary)")
                if len(elements) != count:
                    raise InvalidRequest(
                        f"has {len(elements)} BYTES elements but the shape needs {count}", where
                    )
                array = np.array(elements, dtype=object)
            else:
                dtype = DATATYPES[spec.datatype]
                if size != count * dtype.itemsize:
                    raise InvalidRequest(
                        f"{size} bytes do not hold {count} {spec.datatype} values "
                        f"({count * dtype.itemsize} bytes)",
                        f"{where}.parameters.binary_data_size",
                    )
                array = np.frombuffer(chunk, dtype=dtype).copy()
        elif _has_data(item.data):
            array = _json_data(codec._data, spec.datatype, item.data, count, f"{where}.data")
        else:
            raise InvalidRequest("needs data or parameters.binary_data_size", where)
        array = array.reshape(shape)
        if spec.finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidRequest(f"input {item.name!r} contains NaN or infinity", f"{where}.data")
        inputs[item.name] = array
    if offset != len(binary):
        raise InvalidRequest(
            f"{len(binary) - offset} bytes after the header belong to no input",
            "Inference-Header-Content-Length",
        )
    for spec in signature.inputs:
        if not spec.optional and spec.name not in inputs:
            raise InvalidRequest(f"required input {spec.name!r} is missing", "inputs")
    if batch_size is None:
        raise InvalidRequest("at least one input is required", "inputs")
    if batch_size > signature.max_batch_size:
        raise InvalidRequest(
            f"batch size {batch_size} exceeds the model's max_batch_size "
            f"{signature.max_batch_size}",
            "inputs",
        )
    default_binary = request.parameters.get("binary_data_output") is True
    if request.outputs is None:
        outputs = tuple(RequestedOutput(t.name, default_binary) for t in signature.outputs)
    else:
        chosen = []
        for i, out in enumerate(request.outputs):
            if signature.output(out.name) is None:
                known = ", ".join(t.name for t in signature.outputs)
                raise InvalidRequest(
                    f"model {signature.name!r} has no output {out.name!r}; its outputs: {known}",
                    f"outputs[{i}].name",
                )
            flag = out.parameters.get("binary_data", default_binary)
            if not isinstance(flag, bool):
                raise InvalidRequest(
                    f"must be true or false, got {flag!r}", f"outputs[{i}].parameters.binary_data"
                )
            chosen.append(RequestedOutput(out.name, flag))
        outputs = tuple(chosen)
    return InferRequest(request.id, inputs, outputs, batch_size)


def _binary_form(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in array.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()


def _json_form(array: np.ndarray, datatype: str) -> list:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()


def encode_infer_response(
    signature: ModelSignature,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
    codec: V2Codec,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers for ``request``'s requested outputs.

    outputs: every output of the model by name, batch dimension first.
    With any binary output the body is the JSON header followed by the binary outputs and
    ``Inference-Header-Content-Length`` is set.
    """
    described = []
    blobs = []
    for req in request.outputs:
        spec = signature.output(req.name)
        assert spec is not None  # checked when decoded
        array = outputs[req.name]
        entry: dict[str, Any] = {
            "name": req.name,
            "datatype": spec.datatype,
            "shape": list(array.shape),
        }
        if req.binary:
            blob = _binary_form(array, spec.datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_form(array, spec.datatype)
        described.append(entry)
    answer: dict[str, Any] = {
        "model_name": signature.name,
        "model_version": signature.version,
        "outputs": described,
    }
    if request.id is not None:
        answer["id"] = request.id
    header = codec._encoder.encode(answer)
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStatistics:
    """Triton-style statistics of one model as seen by one gateway replica.

    success/fail: whole requests (receive to send); queue: waiting for a batch;
    compute_input/compute_infer/compute_output: featurize, model, output preparation.
    """

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    # Model executions: each request adds 1 / (requests in its batch), so the sum counts
    # the batches this gateway's requests ran in.
    execution_count: float = 0.0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_success(
        self,
        rows: int,
        requests_in_batch: int,
        total_s: float,
        queue_s: float,
        stages: tuple[float, float, float],
    ) -> None:
        """One answered request: ``rows`` inferred, in a batch of ``requests_in_batch``
        requests; seconds in total, queued, and in compute input/infer/output."""
        with self._lock:
            self.last_inference_ms = int(time.time() * 1000)
            self.inference_count += rows
            self.execution_count += 1.0 / max(1, requests_in_batch)
            self.success.add(int(total_s * 1e9))
            self.queue.add(int(queue_s * 1e9))
            for d, s in zip(
                (self.compute_input, self.compute_infer, self.compute_output), stages, strict=True
            ):
                d.add(int(s * 1e9))

    def record_failure(self, total_s: float) -> None:
        with self._lock:
            self.fail.add(int(total_s * 1e9))

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            zero = {"count": 0, "ns": 0}
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": round(self.execution_count),
                "inference_stats": {
                    "success": self.success.as_dict(),
                    "fail": self.fail.as_dict(),
                    "queue": self.queue.as_dict(),
                    "compute_input": self.compute_input.as_dict(),
                    "compute_infer": self.compute_infer.as_dict(),
                    "compute_output": self.compute_output.as_dict(),
                    "cache_hit": dict(zero),
                    "cache_miss": dict(zero),
                },
                "batch_stats": [],
            }
