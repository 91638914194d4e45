"""The overload benchmark's analysis, on traces built by hand."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import overload
from benchmarks._load_client import Trace


def trace(rows):
    """rows: (scheduled s, latency ms, status, json error, retry-after, client lag ms)."""
    t, lat, st, js, ra, lag = zip(*rows, strict=True)
    return Trace(
        np.array(t, float),
        np.array(lat, float) / 1e3,
        np.array(st),
        np.array(js, bool),
        np.array(ra, bool),
        np.array(lag, float) / 1e3,
    )


def test_step_schedule_is_two_poisson_pieces():
    offsets, drop = overload.step_schedule(2000.0, 3.0, 100.0, 2.0, seed=1)
    assert drop == 3.0 and np.all(np.diff(offsets) >= 0)
    high, low = offsets[offsets < 3.0], offsets[offsets >= 3.0]
    # Poisson counts: 6,000 +- a few sigma (sqrt 6000 ~ 77), 200 +- ~14 (sigma 14).
    assert 5700 < len(high) < 6300 and 140 < len(low) < 260
    assert offsets.max() < 5.0


def test_analysis_splits_accepted_refused_and_recovery():
    rows = (
        [(0.1, 50.0, 200, False, False, 0.0)]  # warm-up: left out
        + [(1.0 + i / 100, 12.0, 200, False, False, 1.0) for i in range(100)]
        + [(1.0 + i / 100, 2.0, 503, True, True, 1.0) for i in range(50)]
        + [(2.5, 1.0, 0, False, False, 0.0)]  # a connection failure during the overload
        + [(3.2, 40.0, 200, False, False, 0.0)]  # after the drop, still slow
        + [(3.6 + i / 10, 3.0, 200, False, False, 0.0) for i in range(5)]
    )
    fig = overload.analyse(trace(rows), drop_s=3.0, unloaded_p99_ms=4.0)
    assert fig["accepted"] == 100 and fig["accepted_p99_ms"] == pytest.approx(12.0)
    assert fig["accepted_p99_vs_unloaded"] == pytest.approx(3.0)
    assert fig["refused"] == 50 and fig["refused_p99_ms"] == pytest.approx(2.0)
    assert fig["refused_json_error"] == fig["refused_retry_after"] == 50
    assert fig["refused_statuses"] == [503] and fig["other_failures"] == 1
    # The last request over 3x the unloaded p99 (12 ms) was sent 0.2 s after the drop.
    assert fig["recovery_s"] == pytest.approx(0.2)
    assert fig["accepted_p99_from_send_ms"] == pytest.approx(11.0)
    verdicts = {v["target"].split(" ")[0]: v["status"] for v in overload.verdicts(fig, 4.0)}
    assert verdicts == {"accepted": "met", "refused": "met", "refused:": "met", "full": "met"}


def test_a_late_client_marks_missed_targets_as_client_bound():
    rows = [(1.0 + i / 100, 80.0, 200, False, False, 30.0) for i in range(100)]
    rows += [(1.0 + i / 100, 40.0, 503, True, False, 30.0) for i in range(20)]
    fig = overload.analyse(trace(rows), drop_s=3.0, unloaded_p99_ms=4.0)
    statuses = [v["status"] for v in overload.verdicts(fig, 4.0)]
    # The two latency targets are the client's; the missing Retry-After is the server's.
    assert statuses == ["client-bound", "client-bound", "missed", "met"], statuses
    assert fig["recovery_s"] == 0.0  # nothing sent after the drop: nothing late
