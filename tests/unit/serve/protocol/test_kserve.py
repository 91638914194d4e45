"""KServe v2 codec: what tritonclient sends decodes exactly; what we send it parses exactly;
every malformed request names its field."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.http._utils import _get_inference_request

from nudgeserve.serve.errors import InvalidRequest
from nudgeserve.serve.protocol.kserve import (
    DATATYPES,
    ModelSignature,
    ModelStatistics,
    TensorSpec,
    V2Codec,
    server_metadata,
)

N_ITEMS = 5
SIGNATURE = ModelSignature(
    name="m",
    version="v1",
    platform="pytorch",
    inputs=(
        TensorSpec("user_features", "BYTES", (-1, 4)),
        TensorSpec("affinity", "FP32", (-1, N_ITEMS), optional=True),
    ),
    outputs=(
        TensorSpec("click_prob", "FP32", (-1, 3, N_ITEMS)),
        TensorSpec("label", "BYTES", (-1,)),
    ),
    max_batch_size=8,
)
codec = V2Codec()


def triton_body(inputs, outputs=None, binary=True, request_id=None):
    """The exact bytes tritonclient.http sends, and its header-length header."""
    body, json_size = _get_inference_request(
        inputs=inputs,
        request_id=request_id,
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )
    return body, None if json_size is None else str(json_size)


def triton_input(name, array, datatype, binary):
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def parse_answer(body: bytes, headers: dict[str, str]):
    length = headers.get("inference-header-content-length")
    return triton.InferResult.from_response_body(
        body, header_length=None if length is None else int(length)
    )


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 8),
    binary=st.booleans(),
    data=st.data(),
)
def test_tritonclient_requests_round_trip(batch, binary, data):
    users = np.array(
        data.draw(st.lists(st.lists(text, min_size=4, max_size=4), min_size=batch, max_size=batch)),
        dtype=object,
    )
    affinity = np.asarray(
        data.draw(
            st.lists(
                st.lists(st.floats(-1e6, 1e6, width=32), min_size=N_ITEMS, max_size=N_ITEMS),
                min_size=batch,
                max_size=batch,
            )
        ),
        dtype=np.float32,
    )
    body, length = triton_body(
        [
            triton_input("user_features", users, "BYTES", binary),
            triton_input("affinity", affinity, "FP32", binary),
        ],
        [triton.InferRequestedOutput("click_prob", binary_data=binary)],
        request_id="r-1",
    )
    request = codec.decode(body, length, SIGNATURE)
    assert request.batch_size == batch and request.id == "r-1"
    assert request.inputs["user_features"].tolist() == users.tolist()
    np.testing.assert_array_equal(request.inputs["affinity"], affinity)
    out = np.random.default_rng(batch).random((batch, 3, N_ITEMS), dtype=np.float32)
    answer, headers = codec.encode(
        SIGNATURE, request, {"click_prob": out, "label": np.array(["x"] * batch)}
    )
    result = parse_answer(answer, headers)
    np.testing.assert_array_equal(result.as_numpy("click_prob"), out)
    assert result.get_response()["model_version"] == "v1"
    assert result.as_numpy("label") is None  # not requested
    assert ("inference-header-content-length" in headers) == binary


def test_every_output_by_default_and_binary_bytes_outputs():
    users = np.array([["a", "b", "c", "d"]], dtype=object)
    request = codec.decode(json_request(USERS), None, SIGNATURE)
    assert [o.name for o in request.outputs] == ["click_prob", "label"]
    assert not any(o.binary for o in request.outputs)
    # tritonclient asks for every output in binary when it names none.
    body, length = triton_body([triton_input("user_features", users, "BYTES", False)])
    request = codec.decode(body, length, SIGNATURE)
    assert all(o.binary for o in request.outputs)
    body, length = triton_body(
        [triton_input("user_features", users, "BYTES", True)],
        [triton.InferRequestedOutput("label", binary_data=True)],
    )
    request = codec.decode(body, length, SIGNATURE)
    answer, headers = codec.encode(
        SIGNATURE,
        request,
        {"click_prob": np.zeros((1, 3, N_ITEMS), np.float32), "label": np.array(["ゾゾ"], object)},
    )
    assert parse_answer(answer, headers).as_numpy("label").tolist() == ["ゾゾ".encode()]


def test_nested_json_data_is_accepted():
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "user_features",
                    "datatype": "BYTES",
                    "shape": [2, 4],
                    "data": [["a", "b", "c", "d"], ["e", "f", "g", "h"]],
                },
                {
                    "name": "affinity",
                    "datatype": "FP32",
                    "shape": [2, N_ITEMS],
                    "data": [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]],
                },
            ]
        }
    ).encode()
    request = codec.decode(body, None, SIGNATURE)
    assert request.inputs["affinity"][1].tolist() == [6, 7, 8, 9, 10]
    assert request.inputs["affinity"].dtype == np.float32


def json_request(*inputs, outputs=None, **extra):
    payload = {"inputs": list(inputs), **extra}
    if outputs is not None:
        payload["outputs"] = outputs
    return json.dumps(payload).encode()


USERS = {
    "name": "user_features",
    "datatype": "BYTES",
    "shape": [1, 4],
    "data": ["a", "b", "c", "d"],
}


@pytest.mark.parametrize(
    ("body", "length", "field", "fragment"),
    [
        (b"{", None, "", "not valid JSON"),
        (b'{"inputs": 3}', None, "", "Expected `array`"),
        (json_request({**USERS, "name": "other"}), None, "inputs[0].name", "no input 'other'"),
        (json_request(USERS, USERS), None, "inputs[1].name", "given twice"),
        (json_request({**USERS, "datatype": "FP32"}), None, "inputs[0].datatype", "must be BYTES"),
        (json_request({**USERS, "shape": [1, 5]}), None, "inputs[0].shape", "[-1, 4]"),
        (json_request({**USERS, "shape": [4]}), None, "inputs[0].shape", "[-1, 4]"),
        (json_request({**USERS, "data": ["a"]}), None, "inputs[0].data", "1 values"),
        (json_request({**USERS, "data": [1, 2, 3, 4]}), None, "inputs[0].data", "BYTES"),
        (
            json_request({k: v for k, v in USERS.items() if k != "data"}),
            None,
            "inputs[0]",
            "needs data",
        ),
        (
            json_request(
                {
                    "name": "affinity",
                    "datatype": "FP32",
                    "shape": [1, N_ITEMS],
                    "data": [0] * N_ITEMS,
                }
            ),
            None,
            "inputs",
            "required input 'user_features'",
        ),
        (
            json_request(
                USERS,
                {
                    "name": "affinity",
                    "datatype": "FP32",
                    "shape": [2, N_ITEMS],
                    "data": [0] * 2 * N_ITEMS,
                },
            ),
            None,
            "inputs[1].shape",
            "batch size 2",
        ),
        (
            json_request({**USERS, "shape": [9, 4], "data": ["a"] * 36}),
            None,
            "inputs",
            "max_batch_size 8",
        ),
        (
            json_request(USERS, outputs=[{"name": "nope"}]),
            None,
            "outputs[0].name",
            "no output 'nope'",
        ),
        (
            json_request(USERS, outputs=[{"name": "label", "parameters": {"binary_data": 1}}]),
            None,
            "outputs[0].parameters.binary_data",
            "true or false",
        ),
        (
            json_request({**USERS, "data": None, "parameters": {"binary_data_size": 4}}),
            None,
            "inputs[0].parameters.binary_data_size",
            "needs the Inference-Header-Content-Length",
        ),
        (json_request(USERS), "abc", "Inference-Header-Content-Length", "integer"),
        (json_request(USERS), "100000", "Inference-Header-Content-Length", "not within"),
    ],
)
def test_bad_requests_name_the_field(body, length, field, fragment):
    with pytest.raises(InvalidRequest) as info:
        codec.decode(body, length, SIGNATURE)
    assert info.value.field == field
    assert fragment in str(info.value)


def binary_request(header: dict, blob: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + blob, str(len(head))


def bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def test_bad_binary_tensors():
    users = {"name": "user_features", "datatype": "BYTES", "shape": [1, 4]}
    good = bytes_tensor([b"a", b"b", b"c", b"d"])
    cases = [
        (good[:-1], len(good) - 1, "overruns"),
        (good[:2], 2, "truncated"),
        (bytes_tensor([b"a", b"b", b"c"]), len(bytes_tensor([b"a", b"b", b"c"])), "3 BYTES"),
        (bytes_tensor([b"a", b"b", b"c", b"\xff"]), len(good), "not valid UTF-8"),
        (good, len(good) + 4, "only"),
    ]
    for blob, size, fragment in cases:
        body, length = binary_request(
            {"inputs": [{**users, "parameters": {"binary_data_size": size}}]}, blob
        )
        with pytest.raises(InvalidRequest, match=fragment):
            codec.decode(body, length, SIGNATURE)
    body, length = binary_request(
        {"inputs": [{**users, "parameters": {"binary_data_size": len(good)}}]}, good + b"xx"
    )
    with pytest.raises(InvalidRequest, match="belong to no input"):
        codec.decode(body, length, SIGNATURE)
    aff = {"name": "affinity", "datatype": "FP32", "shape": [1, N_ITEMS]}
    body, length = binary_request(
        {
            "inputs": [
                {**users, "data": ["a", "b", "c", "d"]},
                {**aff, "parameters": {"binary_data_size": 8}},
            ]
        },
        b"\x00" * 8,
    )
    with pytest.raises(InvalidRequest, match="do not hold 5 FP32"):
        codec.decode(body, length, SIGNATURE)


def test_nan_is_refused_where_finite_values_are_required():
    nan = np.full((1, N_ITEMS), np.nan, dtype=np.float32)
    body, length = triton_body(
        [
            triton_input("user_features", np.array([["a"] * 4], dtype=object), "BYTES", True),
            triton_input("affinity", nan, "FP32", True),
        ]
    )
    with pytest.raises(InvalidRequest) as info:
        codec.decode(body, length, SIGNATURE)
    assert info.value.field == "inputs[1].data" and "NaN" in str(info.value)


def test_metadata_and_config_follow_triton():
    meta = SIGNATURE.metadata()
    assert meta["versions"] == ["v1"]
    assert meta["inputs"][0] == {"name": "user_features", "datatype": "BYTES", "shape": [-1, 4]}
    config = SIGNATURE.config()
    assert config["max_batch_size"] == 8
    assert config["input"][0] == {"name": "user_features", "data_type": "TYPE_STRING", "dims": [4]}
    assert config["input"][1]["optional"] is True
    assert config["output"][0]["dims"] == [3, N_ITEMS]
    assert "binary_tensor_data" in server_metadata("1")["extensions"]


def test_every_datatype_round_trips_in_binary():
    for datatype, dtype in DATATYPES.items():
        if datatype == "BYTES":
            continue
        sig = ModelSignature(
            "m",
            "1",
            "p",
            (TensorSpec("x", datatype, (-1, 3)),),
            (TensorSpec("y", datatype, (-1, 3)),),
            4,
        )
        values = np.arange(6).reshape(2, 3).astype(dtype)
        body, length = triton_body(
            [triton_input("x", values, datatype, True)],
            [triton.InferRequestedOutput("y", binary_data=True)],
        )
        request = codec.decode(body, length, sig)
        np.testing.assert_array_equal(request.inputs["x"], values)
        answer, headers = codec.encode(sig, request, {"y": request.inputs["x"]})
        np.testing.assert_array_equal(parse_answer(answer, headers).as_numpy("y"), values)


def test_statistics_accumulate():
    stats = ModelStatistics("m", "1")
    stats.record_success(4, 2, 0.002, 0.0005, (0.0003, 0.001, 0.0001))
    stats.record_success(1, 2, 0.001, 0.0, (0.0001, 0.0005, 0.0001))
    stats.record_failure(0.0001)
    d = stats.as_dict()
    assert (d["inference_count"], d["execution_count"]) == (5, 1)  # one batch of two
    assert d["inference_stats"]["success"] == {"count": 2, "ns": 3_000_000}
    assert d["inference_stats"]["fail"]["count"] == 1
    assert d["inference_stats"]["compute_infer"]["ns"] == 1_500_000
