"""Admission by latency budget, and the loop-lag monitor (``http.admission``)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from nudgeserve.serve.http.admission import Admission, LoopLag


def parse(answer: bytes):
    head, body = answer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, json.loads(body)


class Wait:
    """The predicted wait, settable by the test."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.seconds


class FixedLag:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def current_s(self) -> float:
        return self.seconds


SHEDDABLE = [("POST", "/v1/decide"), ("POST", "/v2/models/x/infer")]
ALWAYS = [
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/health/live"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("POST", "/v1/feedback"),
    ("POST", "/v1/feedback/batch"),
    ("GET", "/v2/models/x"),  # model metadata: a GET
    ("GET", "/v1/decide"),  # not a POST: the router answers it (405), cheaply
]


@pytest.mark.parametrize("method, path", ALWAYS)
def test_cheap_routes_are_always_admitted(method, path):
    wait = Wait(100.0)
    admission = Admission(wait, FixedLag(100.0), budget_s=0.05, retry_after_s=1)
    assert admission(method, path) is None
    assert wait.calls == 0  # not even asked
    assert (admission.admitted, admission.shed) == (0, 0)


@pytest.mark.parametrize("method, path", SHEDDABLE)
def test_decision_and_inference_routes_are_shed_over_budget(method, path):
    wait = Wait(0.2)
    admission = Admission(wait, None, budget_s=0.05, retry_after_s=2.4)
    answer = admission(method, path)
    assert answer is admission.refusal
    status, headers, body = parse(answer)
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert headers["retry-after"] == "2"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(answer.split(b"\r\n\r\n", 1)[1])
    assert "connection" not in headers  # the connection stays usable
    assert "latency_budget_ms" in body["error"]
    assert "50 ms" in body["error"]
    assert (admission.admitted, admission.shed) == (0, 1)


@pytest.mark.parametrize("method, path", SHEDDABLE)
def test_decision_and_inference_routes_are_admitted_within_budget(method, path):
    admission = Admission(Wait(0.01), FixedLag(0.01), budget_s=0.05, retry_after_s=1)
    assert admission(method, path) is None
    assert (admission.admitted, admission.shed) == (1, 0)


def test_loop_lag_counts_towards_the_wait():
    wait = Wait(0.03)
    lag = FixedLag(0.0)
    admission = Admission(wait, lag, budget_s=0.05, retry_after_s=1)
    assert admission("POST", "/v1/decide") is None
    lag.seconds = 0.03  # 0.03 + 0.03 > 0.05
    assert admission("POST", "/v1/decide") is admission.refusal
    assert (admission.admitted, admission.shed) == (1, 1)


def test_counts_follow_the_predicted_wait():
    wait = Wait(0.0)
    admission = Admission(wait, None, budget_s=0.05, retry_after_s=1)
    for seconds in (0.01, 0.06, 0.049, 1.0, 0.051, 0.0):
        wait.seconds = seconds
        admission("POST", "/v1/decide")
    assert (admission.admitted, admission.shed) == (3, 3)


def test_budget_zero_admits_everything():
    wait = Wait(1e9)
    admission = Admission(wait, FixedLag(1e9), budget_s=0.0, retry_after_s=1)
    for method, path in SHEDDABLE + ALWAYS:
        assert admission(method, path) is None
    assert wait.calls == 0


def test_retry_after_is_at_least_one_second():
    _, headers, _ = parse(Admission(Wait(1), None, 0.05, retry_after_s=0.1).refusal)
    assert headers["retry-after"] == "1"


# -- LoopLag ---------------------------------------------------------------------------------


def test_loop_lag_sees_a_blocked_loop_and_decays_after():
    # The loop is blocked for 50 ms with a timer due every 10 ms: the lateness seen is at
    # least ~40 ms whatever the machine's load (a loaded machine only adds lateness), so
    # the checks use 30 ms. The decay check compares with the peak after 30 quiet ticks
    # (0.7**30 of it is left), a margin of orders of magnitude.
    async def main():
        loop = asyncio.get_running_loop()
        lag = LoopLag(loop, interval_s=0.01)
        lag.start()
        await asyncio.sleep(0.03)
        lag.take_max()
        during = []

        def block():
            time.sleep(0.05)
            during.append(lag.current_s())  # the next tick is overdue right now

        loop.call_soon(block)
        await asyncio.sleep(0.015)  # the block, then the late tick
        peak_smooth = lag.smooth_s
        peak_max = lag.take_max()
        await asyncio.sleep(0.3)
        after_smooth = lag.smooth_s
        lag.stop()
        assert lag._handle is None
        return during[0], peak_smooth, peak_max, after_smooth

    during, peak_smooth, peak_max, after_smooth = asyncio.run(main())
    assert during > 0.03
    assert peak_max > 0.03
    assert peak_smooth > 0.3 * 0.03  # one late tick moves the average by 0.3 of its lag
    assert after_smooth < peak_smooth / 2


def test_loop_lag_take_max_resets():
    async def main():
        lag = LoopLag(asyncio.get_running_loop(), interval_s=0.005)
        lag.max_s = 0.5
        first = lag.take_max()
        return first, lag.take_max()

    assert asyncio.run(main()) == (0.5, 0.0)
