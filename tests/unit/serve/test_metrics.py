"""The metrics recorders: counters and gauges buffered in the process and passed on at
most once per flush interval (sums for counters, last values for gauges), histograms
recorded per observation."""

from __future__ import annotations

from nudgeserve.serve import metrics as m


class Recording:
    """A recorder that keeps every call it gets."""

    def __init__(self, family: m.Family) -> None:
        self.family = family
        self.calls: list[tuple[str, float, dict]] = []

    def inc(self, value=1.0, tags=None):
        self.calls.append(("inc", value, dict(tags or {})))

    def observe(self, value, tags=None):
        self.calls.append(("observe", value, dict(tags or {})))

    def set(self, value, tags=None):
        self.calls.append(("set", value, dict(tags or {})))


def test_counters_and_gauges_are_passed_on_in_sums_and_last_values(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(m.time, "monotonic", lambda: clock[0])
    metrics = m.ServeMetrics(Recording)
    requests, depth = metrics.requests.recorder, metrics.queue_depth.recorder
    ok, bad = {"route": "/v1/decide", "code": "200"}, {"route": "/v1/decide", "code": "400"}
    for _ in range(5):
        metrics.requests.inc(1, tags=ok)
    metrics.requests.inc(2, tags=bad)
    metrics.queue_depth.set(7, tags={"use_case": "obd"})
    metrics.queue_depth.set(3, tags={"use_case": "obd"})
    metrics.request_latency.observe(0.004, tags={"route": "/v1/decide"})
    # Within the interval nothing reached the counters and gauges; histograms record at once.
    assert requests.calls == [] and depth.calls == []
    assert metrics.request_latency.calls == [("observe", 0.004, {"route": "/v1/decide"})]
    clock[0] += m.FLUSH_INTERVAL_S
    metrics.requests.inc(1, tags=ok)  # due: everything pending goes out
    assert sorted(requests.calls, key=str) == sorted([("inc", 6.0, ok), ("inc", 2.0, bad)], key=str)
    assert depth.calls == []  # another recorder: passed on by its own call or a flush
    metrics.flush()
    assert depth.calls == [("set", 3, {"use_case": "obd"})]
    metrics.flush()  # nothing new: nothing passed on twice
    assert len(requests.calls) == 2 and len(depth.calls) == 1


def test_without_ray_every_recorder_is_a_no_op():
    metrics = m.ServeMetrics()
    metrics.requests.inc(1, tags={"route": "/", "code": "200"})
    metrics.queue_depth.set(1, tags={"use_case": "obd"})
    metrics.flush()
