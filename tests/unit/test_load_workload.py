"""The load benchmark's request sets and the KServe v2 decoding the plain baseline uses.

Binary requests are encoded by NVIDIA's own client library (``tritonclient.http``), the
same encoder perf_analyzer's requests follow, so the decoder is checked against the
real wire format.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton_http

from benchmarks import _load_workload as wl


def triton_request(users: np.ndarray, affinity: np.ndarray, binary: bool) -> tuple[bytes, int]:
    a = triton_http.InferInput(wl.V2_USER_INPUT, list(users.shape), "BYTES")
    a.set_data_from_numpy(users, binary_data=binary)
    b = triton_http.InferInput(wl.V2_AFFINITY_INPUT, list(affinity.shape), "FP32")
    b.set_data_from_numpy(affinity, binary_data=binary)
    out = triton_http.InferRequestedOutput(wl.V2_OUTPUT, binary_data=binary)
    body, json_size = triton_http.InferenceServerClient.generate_request_body([a, b], [out])
    return body, json_size


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_parse_v2_request_matches_tritonclient(binary, seed):
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(1, 5))
    # Non-ASCII and empty strings: BYTES elements are length-prefixed UTF-8.
    vocab = np.array(["a81f", "", "zoé", "7" * 40], dtype=object)
    users = vocab[rng.integers(0, len(vocab), size=(batch, 4))]
    affinity = rng.random((batch, 80), dtype=np.float32)
    body, json_size = triton_request(users, affinity, binary)
    header_length = json_size if binary else None
    request, arrays = wl.parse_v2_request(body, header_length)
    assert arrays[wl.V2_USER_INPUT].tolist() == users.tolist(), f"seed={seed}"
    np.testing.assert_array_equal(arrays[wl.V2_AFFINITY_INPUT], affinity)
    assert request["outputs"][0]["name"] == wl.V2_OUTPUT


def test_parse_v2_request_rejects_wrong_sizes():
    body = json.dumps(
        {"inputs": [{"name": "affinity", "datatype": "FP32", "shape": [1, 3], "data": [1.0]}]}
    ).encode()
    with pytest.raises(ValueError, match="'affinity'.*needs 3 values"):
        wl.parse_v2_request(body, None)
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "BF16", "shape": [1], "data": [1.0]}]}
    ).encode()
    with pytest.raises(ValueError, match="'x'.*BF16"):
        wl.parse_v2_request(body, None)


def test_decode_bytes_tensor_rejects_truncation():
    raw = b"\x02\x00\x00\x00ab\x05\x00\x00\x00c"
    with pytest.raises(ValueError, match="element 1 runs past"):
        wl.decode_bytes_tensor(raw, 2)
    with pytest.raises(ValueError, match="trailing"):
        wl.decode_bytes_tensor(b"\x01\x00\x00\x00ab", 1)
    with pytest.raises(ValueError, match="truncated at element 1"):
        wl.decode_bytes_tensor(b"\x01\x00\x00\x00a", 2)


def test_validate_v2_response():
    good = {
        "outputs": [
            {"name": wl.V2_OUTPUT, "datatype": "FP32", "shape": [1, 3, 2], "data": [0.1] * 6}
        ]
    }
    wl.validate_v2_response(json.dumps(good).encode())
    bad = json.loads(json.dumps(good))
    bad["outputs"][0]["data"][0] = 1.5
    with pytest.raises(ValueError, match="outside"):
        wl.validate_v2_response(json.dumps(bad).encode())
    bad["outputs"][0]["name"] = "other"
    with pytest.raises(ValueError, match="expected"):
        wl.validate_v2_response(json.dumps(bad).encode())
