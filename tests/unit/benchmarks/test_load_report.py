"""The load benchmark's report logic: ratios against the baselines, target verdicts, CLI."""

from __future__ import annotations

import math

import pytest

from benchmarks import load
from benchmarks._load_client import LoadResult


def result(mode, offered, rps, p99, errors=0, incomplete=0):
    return LoadResult(
        mode,
        offered,
        3.0,
        ok=int(rps * 3),
        errors=errors,
        incomplete=incomplete,
        throughput_rps=rps,
        p50_ms=p99 / 3,
        p95_ms=p99 / 2,
        p99_ms=p99,
    )


def test_ratios_compare_the_same_point():
    rows = [
        load.Row("ours", "v2", result("closed", 32, 3000.0, 10.0)),
        load.Row("plain-serve", "v2", result("closed", 32, 300.0, 100.0)),
        load.Row("triton", "v2", result("closed", 32, 1000.0, 20.0)),
        load.Row("triton", "v2", result("closed", 8, 900.0, 5.0)),
        load.Row("ours", "decide", result("closed", 32, 2000.0, 15.0)),
        load.Row("plain-serve", "decide", result("closed", 32, 250.0, 90.0)),
    ]
    load.add_ratios(rows)
    ours_v2, plain_v2, triton_v2, _, ours_decide, _ = rows
    assert ours_v2.rps_vs_triton == pytest.approx(3.0)
    assert ours_v2.p99_vs_triton == pytest.approx(0.5)
    assert ours_v2.rps_vs_plain == pytest.approx(10.0)
    assert plain_v2.rps_vs_triton == pytest.approx(0.3) and plain_v2.rps_vs_plain is None
    assert triton_v2.rps_vs_triton is None
    # Triton serves no decision API: no Triton ratio there, only the plain one.
    assert ours_decide.rps_vs_triton is None and ours_decide.rps_vs_plain == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("ours_rps", "ours_p99", "status"),
    [(2500.0, 9.0, "met"), (1900.0, 9.0, "missed"), (2500.0, 21.0, "missed")],
)
def test_v2_target_needs_twice_triton_and_no_worse_p99(ours_rps, ours_p99, status):
    rows = [
        load.Row("ours", "v2", result("closed", 32, ours_rps, ours_p99)),
        load.Row("triton", "v2", result("closed", 32, 1000.0, 20.0)),
    ]
    v2, _ = load.evaluate_targets(rows)
    assert v2["status"] == status, v2


def test_decide_target_open_loop_must_deliver_the_offered_rate():
    delivered = result("open", 3000.0, 2990.0, 12.0)
    short = result("open", 3000.0, 2500.0, 12.0)
    slow = result("open", 3000.0, 3000.0, 25.0)
    lost = result("open", 3000.0, 2990.0, 12.0, incomplete=5)
    for res, status in ((delivered, "met"), (short, "missed"), (slow, "missed"), (lost, "missed")):
        (_, decide) = load.evaluate_targets([load.Row("ours", "decide", res)])
        assert decide["status"] == status, (res, decide)


def test_targets_not_measured_without_the_points():
    v2, decide = load.evaluate_targets([load.Row("triton", "v2", result("closed", 8, 1.0, 1.0))])
    assert v2["status"] == decide["status"] == "not measured"


def test_perf_analyzer_needs_integer_versions():
    assert load.perf_analyzer_problem({"versions": ["1", "2"]}) is None
    problem = load.perf_analyzer_problem({"versions": ["efdf3f90bb09"]})
    assert problem is not None and "efdf3f90bb09" in problem


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["--concurrency", "0,8"], "--concurrency"),
        (["--systems", "ours,torchserve"], "--systems"),
        (["--v2-rates", "fast"], "--v2-rates"),
        (["--duration", "0"], "--duration"),
        (["--k", "5", "--candidates", "3"], "--k"),
        (["--url", "localhost:8000"], "--url"),
    ],
)
def test_cli_rejects_bad_arguments(argv, word, capsys):
    with pytest.raises(SystemExit) as exc:
        load.main(argv)
    assert exc.value.code == 2
    assert word in capsys.readouterr().err


def test_table_shows_unanswered_as_inf(capsys):
    row = load.Row("ours", "decide", result("open", 100.0, 50.0, math.inf, incomplete=3))
    load.print_table([row])
    line = capsys.readouterr().out.splitlines()[-1]
    assert "inf" in line.split() and " 3 " in line
