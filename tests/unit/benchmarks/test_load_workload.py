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


# --- real OBD requests through the plain baseline's decider --------------------------------


@pytest.fixture(scope="module")
def scorer():
    return wl.load_obd_scorer(device="cpu")


def test_request_sets_are_real_obd_contexts_and_the_baseline_answers_them(scorer):
    from benchmarks._plain_serve_app import PlainDecider

    ctx = wl.obd_contexts(16, seed=5)
    assert ctx.user_features.shape == (16, 4) and ctx.affinity.shape == (16, 80)
    decider = PlainDecider(scorer)
    validate = wl.decide_validator(3)
    for body in wl.decide_bodies(ctx, 80, 3, seed=5):
        request = json.loads(body)
        assert sorted(c["id"] for c in request["candidates"]) == list(range(80))
        answer = decider.decide(body)
        validate(answer)
        assert json.loads(answer)["model_name"] == wl.V2_MODEL
    # v2 bodies carry the same contexts; the model maps them to probabilities.
    first = json.loads(wl.v2_json_bodies(ctx)[0])
    assert first["inputs"][0]["data"] == [str(u) for u in ctx.user_features[0]]
    probs = wl.v2_infer(scorer, ctx.user_features, ctx.affinity)
    assert probs.shape == (16, 3, 80) and np.all((probs > 0) & (probs < 1))


def test_baseline_decider_rejects_bad_requests(scorer):
    from benchmarks._plain_serve_app import PlainDecider

    decider = PlainDecider(scorer)
    users = '{"user_features": ["a", "b", "c", "d"]}'
    with pytest.raises(ValueError, match="candidates"):
        decider.decide(
            f'{{"use_case": "obd", "context": {users}, "candidates": [{{"id": 80}}]}}'.encode()
        )
    with pytest.raises(ValueError, match="k: must be in"):
        decider.decide(
            f'{{"use_case": "obd", "context": {users}, "candidates": [{{"id": 1}}], '
            f'"k": 2}}'.encode()
        )
    with pytest.raises(LookupError, match="use_case"):
        decider.decide(f'{{"use_case": "hillstrom", "context": {users}}}'.encode())
    with pytest.raises(ValueError, match="context"):
        decider.decide(b'{"use_case": "obd", "context": {"user_features": 3}}')


def test_decide_bodies_and_validator_reject_bad_arguments():
    ctx = wl.ObdContexts(
        np.array([["a", "b", "c", "d"]], dtype=object), np.zeros((1, 80), dtype=np.float32)
    )
    with pytest.raises(ValueError, match="n_candidates"):
        wl.decide_bodies(ctx, 81, 3)
    with pytest.raises(ValueError, match="k must be"):
        wl.decide_bodies(ctx, 2, 3)
    validate = wl.decide_validator(2)
    one = {"actions": [{"id": 1, "rank": 1, "propensity": 0.9}]}
    with pytest.raises(ValueError, match="2 actions"):
        validate(json.dumps(one).encode())
    dup = {
        "actions": [
            {"id": 1, "rank": 1, "propensity": 0.9},
            {"id": 1, "rank": 2, "propensity": 0.9},
        ]
    }
    with pytest.raises(ValueError, match="distinct"):
        validate(json.dumps(dup).encode())
