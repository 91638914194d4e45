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


def _realtime(rows):
    return {
        t["target"].split(":")[0]: t
        for t in load.evaluate_realtime_targets(rows, load.capacities(rows))
    }


def test_realtime_targets_read_the_open_loop_points_and_the_capacity():
    rows = [
        load.Row("ours", "decide", result("open", 1000.0, 1000.0, 8.0)),
        load.Row("ours", "decide", result("open", 2000.0, 2000.0, 16.0)),
        load.Row("ours", "decide", result("open", 4000.0, 4000.0, 45.0)),
        load.Row("bare-hop", "decide", result("open", 1000.0, 1000.0, 2.0)),
        load.Row("bare-hop", "decide", result("open", 4000.0, 4000.0, 3.0)),
        load.Row("bare-hop", "decide", result("open", 6000.0, 5000.0, 90.0)),
        load.Row("ours", "decide", result("open", 6000.0, 3000.0, 400.0, errors=5)),
    ]
    got = _realtime(rows)
    assert got["decide open loop 1,000/s"]["status"] == "met"
    assert "bare hop p99 2.00 ms" in got["decide open loop 1,000/s"]["detail"]
    assert got["decide open loop 2,000/s"]["status"] == "missed"  # 16 ms >= 15 ms
    capacity = next(v for k, v in got.items() if k.startswith("decide capacity"))
    # 4,000/s each: the absolute figure and the share of the bare hop's both hold.
    assert capacity["status"] == "met" and "1.00x" in capacity["detail"], capacity
    assert got["v2 open loop 2,000/s"]["status"] == "not measured"
    separate = next(v for k, v in got.items() if k.startswith("placement separate"))
    assert separate["status"] == "not measured"


def test_realtime_capacity_needs_a_bare_hop_capacity_below_the_sweep_top():
    rows = [
        load.Row("ours", "decide", result("open", 4000.0, 4000.0, 20.0)),
        load.Row("bare-hop", "decide", result("open", 4000.0, 4000.0, 2.0)),
    ]
    capacity = next(v for k, v in _realtime(rows).items() if k.startswith("decide capacity"))
    # Both passed the top rate: the bare hop's ceiling is unknown, so the share is too.
    assert capacity["status"] == "missed" and "extend --decide-rates" in capacity["detail"]


@pytest.mark.parametrize(
    ("sep_rps", "sep_p99", "status"),
    [(900.0, 14.0, "met"), (800.0, 14.0, "missed"), (900.0, 16.0, "missed")],
)
def test_separate_placement_target_compares_closed_loop_at_32(sep_rps, sep_p99, status):
    rows = [
        load.Row("ours", "decide", result("closed", 32, 1000.0, 10.0)),
        load.Row("ours-separate", "decide", result("closed", 32, sep_rps, sep_p99)),
    ]
    separate = next(v for k, v in _realtime(rows).items() if k.startswith("placement separate"))
    assert separate["status"] == status, separate


def test_separate_config_sets_only_the_placement(tmp_path):
    import yaml

    out = load.separate_config(None, tmp_path / "sep.yaml")
    raw = yaml.safe_load(out.read_text())
    default = yaml.safe_load((load.REPO_ROOT / "configs" / "default.yaml").read_text())
    args = raw["applications"][0]["args"]
    assert args["server"]["placement"] == "separate"
    args["server"]["placement"] = default["applications"][0]["args"]["server"]["placement"]
    assert raw == default
