"""The load benchmark's bare-hop ceiling: ratios to it, capacity, the PNG, and the app itself.

Only the last tests start a server: the bare-hop app under uvicorn in a subprocess on a
free loopback port (no Ray, no model), as the benchmark starts it.
"""

from __future__ import annotations

import argparse
import json
import math
import struct

import msgspec
import numpy as np
import pytest

from benchmarks import _load_workload as wl
from benchmarks import load
from benchmarks._bare_hop_app import decide_answer, v2_answers
from benchmarks._load_client import HttpTarget, LoadResult, request_once
from benchmarks._load_plot import write_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


# --- fractions of the ceiling ------------------------------------------------------------


def test_fractions_of_bare_hop_compare_the_same_api_and_point():
    rows = [
        load.Row("bare-hop", "decide", result("open", 1000.0, 1000.0, 2.0)),
        load.Row("bare-hop", "decide", result("closed", 8, 8000.0, 4.0)),
        load.Row("bare-hop", "v2", result("open", 1000.0, 990.0, 1.0)),
        load.Row("ours", "decide", result("open", 1000.0, 980.0, 10.0)),
        load.Row("ours", "decide", result("closed", 8, 2000.0, 12.0)),
        load.Row("ours", "decide", result("closed", 32, 2500.0, 40.0)),  # no bare point
        load.Row("plain-serve", "decide", result("open", 1000.0, 400.0, math.inf, incomplete=9)),
        load.Row("triton", "v2", result("open", 1000.0, 900.0, 3.0)),
    ]
    load.add_ratios(rows)
    bare_open, bare_closed, bare_v2, ours_open, ours_closed, ours_32, plain, triton = rows
    assert ours_open.rps_vs_bare_hop == pytest.approx(0.98)
    assert ours_open.p99_vs_bare_hop == pytest.approx(5.0)
    assert ours_closed.rps_vs_bare_hop == pytest.approx(0.25)
    assert ours_closed.p99_vs_bare_hop == pytest.approx(3.0)
    assert ours_32.rps_vs_bare_hop is None and ours_32.p99_vs_bare_hop is None
    # An unanswered p99 has no finite ratio; the throughput fraction still stands.
    assert plain.rps_vs_bare_hop == pytest.approx(0.4) and plain.p99_vs_bare_hop is None
    # v2 is compared with the bare hop's v2 point, not its decide point.
    assert triton.rps_vs_bare_hop == pytest.approx(900.0 / 990.0)
    assert triton.p99_vs_bare_hop == pytest.approx(3.0)
    for bare in (bare_open, bare_closed, bare_v2):
        assert bare.rps_vs_bare_hop is None and bare.p99_vs_bare_hop is None
    # The existing ratios are still there.
    assert ours_open.rps_vs_plain == pytest.approx(980.0 / 400.0)


def test_rows_as_dict_carry_the_new_fields_and_the_table_shows_them(capsys):
    rows = [
        load.Row("bare-hop", "decide", result("open", 1000.0, 1000.0, 2.0)),
        load.Row("ours", "decide", result("open", 1000.0, 500.0, 8.0)),
    ]
    load.add_ratios(rows)
    d = rows[1].as_dict()
    assert d["rps_vs_bare_hop"] == pytest.approx(0.5)
    assert d["p99_vs_bare_hop"] == pytest.approx(4.0)
    json.dumps([r.as_dict() for r in rows])  # serialisable
    load.print_table(rows)
    out = capsys.readouterr().out.splitlines()
    assert "rps/bare" in out[0] and "p99/bare" in out[0]
    assert out[-1].split()[-2:] == ["0.50x", "4.00x"]
    assert out[-2].split()[-2:] == ["-", "-"]


# --- capacity ----------------------------------------------------------------------------


def sweep(system, api, points):
    return [load.Row(system, api, result("open", rate, rate, p99)) for rate, p99 in points]


def test_capacity_is_the_highest_rate_with_p99_under_50ms():
    rows = (
        sweep("bare-hop", "decide", [(1000, 1.0), (2000, 2.0), (4000, 30.0), (6000, 400.0)])
        + sweep("ours", "decide", [(1000, 8.0), (2000, 45.0), (4000, 51.0), (6000, math.inf)])
        + [load.Row("ours", "decide", result("closed", 8, 9999.0, 1.0))]  # closed: ignored
        + sweep("ours", "v2", [(500, 5.0), (1000, 9.0)])
        + sweep("bare-hop", "v2", [(500, 1.0), (1000, 2.0)])
    )
    caps = {(c["system"], c["api"]): c for c in load.capacities(rows)}
    assert set(caps) == {
        ("bare-hop", "decide"),
        ("ours", "decide"),
        ("ours", "v2"),
        ("bare-hop", "v2"),
    }
    ours, bare = caps["ours", "decide"], caps["bare-hop", "decide"]
    assert bare["capacity_rps"] == 4000 and not bare["at_sweep_top"]
    assert bare["vs_bare_hop"] is None
    assert ours["capacity_rps"] == 2000 and ours["rates"] == [1000, 2000, 4000, 6000]
    assert ours["vs_bare_hop"] == pytest.approx(0.5) and ours["vs_bare_hop_kind"] == "estimate"
    assert ours["p99_limit_ms"] == 50.0
    # Both passed the top rate: the ratio is 1 only because the sweep stopped there.
    v2 = caps["ours", "v2"]
    assert v2["capacity_rps"] == 1000 and v2["at_sweep_top"]
    assert v2["vs_bare_hop_kind"] == "not comparable"


def test_capacity_excludes_points_with_errors_or_unanswered_requests():
    rows = [
        load.Row("ours", "decide", result("open", 1000.0, 1000.0, 5.0)),
        load.Row("ours", "decide", result("open", 2000.0, 1500.0, 5.0, errors=3)),
        load.Row("ours", "decide", result("open", 3000.0, 2900.0, 5.0, incomplete=1)),
        load.Row("plain-serve", "decide", result("open", 1000.0, 800.0, 60.0)),
        load.Row("bare-hop", "decide", result("open", 1000.0, 1000.0, 1.0)),
        load.Row("bare-hop", "decide", result("open", 3000.0, 3000.0, 2.0)),
    ]
    caps = {c["system"]: c for c in load.capacities(rows)}
    assert caps["ours"]["capacity_rps"] == 1000
    assert caps["ours"]["vs_bare_hop"] == pytest.approx(1 / 3)
    assert caps["ours"]["vs_bare_hop_kind"] == "upper bound"  # bare-hop passed its top rate
    assert caps["plain-serve"]["capacity_rps"] is None
    assert caps["plain-serve"]["vs_bare_hop"] is None


def test_capacity_without_bare_hop_has_no_ratio(capsys):
    caps = load.capacities(sweep("ours", "decide", [(1000, 5.0), (2000, 9.0)]))
    assert caps[0]["capacity_rps"] == 2000 and caps[0]["vs_bare_hop"] is None
    load.print_capacities(caps)
    out = capsys.readouterr().out
    assert ">= 2000/s" in out and "bare-hop" not in out


# --- PNG ---------------------------------------------------------------------------------


def test_plot_is_a_png(tmp_path):
    rows = (
        sweep("ours", "decide", [(500, 4.0), (1000, 6.0), (2000, 80.0), (4000, math.inf)])
        + sweep("bare-hop", "decide", [(500, 1.0), (1000, 1.2), (2000, 1.5), (4000, 3.0)])
        + sweep("triton", "v2", [(500, 3.0), (1000, 4.0)])
        + sweep("plain-serve", "v2", [(500, 30.0), (1000, math.inf)])
        + [load.Row("ours", "v2", result("closed", 8, 1000.0, 5.0))]
    )
    path = write_plot(rows, tmp_path / "sub" / "load.png", cpus=2, date="2026-01-01")
    assert path == tmp_path / "sub" / "load.png"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])
    assert width > height  # two panels side by side


def test_plot_needs_open_loop_points(tmp_path):
    with pytest.raises(ValueError, match="open-loop"):
        write_plot([load.Row("ours", "v2", result("closed", 8, 1.0, 1.0))], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --- command line ------------------------------------------------------------------------


def test_defaults_run_every_system_and_sweep_decide_past_the_knee():
    args = load.build_parser().parse_args([])
    assert args.systems == ["ours", "ours-separate", "plain-serve", "triton", "bare-hop"]
    assert args.decide_rates == [500.0, 1000.0, 2000.0, 3000.0, 4000.0, 6000.0]
    assert args.plot_path is None and load.plot_path(args) is None
    args = load.build_parser().parse_args(["--systems", "bare-hop,ours"])
    assert args.systems == ["bare-hop", "ours"]


def test_plot_goes_next_to_the_json_unless_given(tmp_path):
    args = load.build_parser().parse_args(["--json", str(tmp_path / "run.json")])
    assert load.plot_path(args) == tmp_path / "run.png"
    args = load.build_parser().parse_args(
        ["--json", str(tmp_path / "run.json"), "--plot", str(tmp_path / "other.png")]
    )
    assert load.plot_path(args) == tmp_path / "other.png"


# --- the app -----------------------------------------------------------------------------


def test_fixed_answers_have_the_real_shapes():
    from nudgeserve.serve.protocol.decide import DecideResponse

    answer = msgspec.json.decode(decide_answer(3), type=DecideResponse)
    assert [a.rank for a in answer.actions] == [1, 2, 3]
    assert set(json.loads(decide_answer(3))) == set(DecideResponse.__struct_fields__)
    wl.decide_validator(5)(decide_answer(5))
    as_json, binary, head_len = v2_answers(80, 3)
    wl.validate_v2_response(as_json)
    head = json.loads(binary[:head_len])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(binary) - head_len == 960


@pytest.fixture(scope="module")
def bare_hop(tmp_path_factory):
    """The bare hop started as the benchmark starts it (``load.running``: ManagedServer on
    a free port), its log in a temp dir instead of ``.bench/``."""
    args = argparse.Namespace(k=3, url=None)
    with load.running("bare-hop", args, tmp_path_factory.mktemp("bare-hop")) as base:
        yield int(base.rsplit(":", 1)[1]), base


def test_bare_hop_answers_a_decision(bare_hop):
    port, _ = bare_hop
    body = json.dumps(
        {
            "use_case": "obd",
            "context": {"user_features": ["a", "b", "c", "d"], "affinity": [0.5] * 80},
            "candidates": [{"id": i} for i in range(80)],
            "k": 3,
        }
    ).encode()
    status, answer = request_once(HttpTarget("127.0.0.1", port, "/v1/decide", [body]))
    assert status == 200
    wl.decide_validator(3)(answer)
    decision = json.loads(answer)
    assert len(decision["decision_id"]) == 32 and decision["use_case"] == "obd"
    assert {"id", "rank", "score", "propensity"} == set(decision["actions"][0])
    # A body that is not JSON is refused: it is decoded, not just read.
    status, _ = request_once(HttpTarget("127.0.0.1", port, "/v1/decide", [b"{nope"]))
    assert status == 400


def test_bare_hop_answers_v2_and_says_what_it_runs_on(bare_hop):
    port, base = bare_hop
    ctx = wl.ObdContexts(
        np.array([["a", "b", "c", "d"]], dtype=object), np.zeros((1, 80), dtype=np.float32)
    )
    body = wl.v2_json_bodies(ctx)[0]
    status, answer = request_once(
        HttpTarget("127.0.0.1", port, f"/v2/models/{wl.V2_MODEL}/infer", [body])
    )
    assert status == 200
    wl.validate_v2_response(answer)
    load.check_v2_contract(base)
    info = load.bare_hop_server(base)
    assert set(info) == {"loop", "http"} and info["http"] != "unknown"
