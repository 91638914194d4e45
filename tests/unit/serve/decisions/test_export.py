"""Parquet export: schema, one row per slot, rewards, filters, chunking; the CLI command."""

from __future__ import annotations

import argparse
import os
import sqlite3
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nudgeserve.commands import export as export_cmd
from nudgeserve.serve.decisions import (
    DecisionLog,
    FeedbackEvent,
    arrow_schema,
    export_parquet,
    read_export_metadata,
)
from nudgeserve.serve.decisions._sample import sample_clicks, sample_decisions

T0 = 1_700_000_000.0


def _ev(did, eid, kind, value=1.0, action=None, t=T0 + 10):
    return FeedbackEvent(
        decision_id=did, event_id=eid, kind=kind, value=value, time=t, action=action
    )


@pytest.fixture
def filled(open_log, db_path):
    """20 decisions (3 slots, 80 candidates) one second apart, with mixed feedback."""
    log = open_log(late_window_s=1e9)
    recs = sample_decisions(20, start_time=T0)
    log.append_many(recs)
    r0, r1 = recs[0], recs[1]
    log.record_feedback_many(
        [
            _ev("d0", "c1", "click", action=r0.actions[1]),
            _ev("d0", "c2", "click", action=r0.actions[1]),
            _ev("d0", "s1", "spend", 30.0),  # decision-level: every slot
            _ev("d0", "v1", "visit", action=r0.actions[0]),
            _ev("d1", "k1", "conversion", 1.0, action=r1.actions[2]),
            _ev("d1", "k1", "conversion", 1.0, action=r1.actions[2]),  # duplicate: once
            _ev("nobody", "c1", "click"),  # orphan: not exported
        ]
    )
    return log, recs


def test_schema_and_one_row_per_slot(filled, tmp_path):
    log, recs = filled
    out = tmp_path / "x.parquet"
    summary = log.export_parquet(out)
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == arrow_schema(summary.outcome_kinds)
    assert summary.outcome_kinds == ("click", "visit", "conversion", "spend")
    assert summary.decisions == 20 and summary.rows == table.num_rows == 60
    assert summary.reward_kind == "click" and summary.annotations == ()
    rows = table.to_pylist()
    first = rows[:3]
    assert [r["position"] for r in first] == [0, 1, 2]
    assert [r["action_id"] for r in first] == recs[0].actions
    assert [recs[0].candidates[r["action"]] for r in first] == recs[0].actions
    assert [r["score"] for r in first] == recs[0].scores
    assert [r["propensity"] for r in first] == pytest.approx([1 / 80] * 3)
    assert first[0]["time"] == datetime.fromtimestamp(T0, UTC)
    assert first[0]["candidates"] == recs[0].candidates
    assert first[0]["use_case"] == "obd" and first[0]["model_checkpoint"] == "0123456789ab"
    assert first[2]["features"] == pytest.approx(recs[0].features, rel=1e-6)
    assert {r["decision_id"] for r in rows} == {r.decision_id for r in recs}


def test_rewards_per_slot_and_decision_level(filled, tmp_path):
    log, _ = filled
    out = tmp_path / "x.parquet"
    summary = log.export_parquet(out)
    rows = pq.read_table(out).to_pylist()
    d0 = [(r["click"], r["visit"], r["spend"], r["n_feedback"]) for r in rows[:3]]
    assert d0 == [(0.0, 1.0, 30.0, 2), (2.0, 0.0, 30.0, 3), (0.0, 0.0, 30.0, 1)]
    d1 = [r["conversion"] for r in rows[3:6]]
    assert d1 == [0.0, 0.0, 1.0]
    assert [r["reward"] for r in rows] == [r["click"] for r in rows]
    assert all(r["click"] == r["conversion"] == 0 for r in rows[6:])
    assert summary.joined_events == 5


def test_since_until_filter_and_metadata(filled, tmp_path):
    log, _ = filled
    out = tmp_path / "x.parquet"
    since = datetime.fromtimestamp(T0 + 5, UTC)
    summary = log.export_parquet(out, since=since, until=T0 + 8)
    ids = set(pq.read_table(out).column("decision_id").to_pylist())
    assert ids == {"d5", "d6", "d7"} and summary.decisions == 3
    meta = read_export_metadata(out)
    assert meta["since"] == T0 + 5 and meta["until"] == T0 + 8
    assert meta["outcome_kinds"] == ["click", "visit", "conversion", "spend"]
    assert meta["reward_kind"] == "click"


def test_reward_kind_picks_the_reward_column(filled, tmp_path):
    log, _ = filled
    out = tmp_path / "x.parquet"
    log.export_parquet(out, reward_kind="spend")
    table = pq.read_table(out)
    assert table.column("reward").equals(table.column("spend"))
    with pytest.raises(ValueError, match="reward_kind"):
        log.export_parquet(out, reward_kind="refund")


def _uniform_eval(records):
    """An 'evaluation policy' that picks uniformly among each row's candidates."""
    rows = {"eval_probs": [], "reward_hat": []}
    for rec in records:
        n = len(rec.candidates)
        for _ in rec.actions:
            rows["eval_probs"].append([1.0 / n] * n)
            rows["reward_hat"].append(np.zeros(n))
    return rows


def test_annotate_adds_list_columns(filled, tmp_path):
    log, _ = filled
    out = tmp_path / "x.parquet"
    summary = log.export_parquet(out, annotate=_uniform_eval, chunk_decisions=6)
    assert summary.annotations == ("eval_probs", "reward_hat")
    table = pq.read_table(out)
    assert table.schema.field("eval_probs").type == pa.list_(pa.float64())
    assert table.column("eval_probs")[0].as_py() == [1 / 80] * 80
    assert read_export_metadata(out)["annotations"] == ["eval_probs", "reward_hat"]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda recs: [[0.5]], "mapping"),
        (lambda recs: {"score": []}, "taken"),
        (lambda recs: {"eval_probs": [[1.0]] * (3 * len(recs))}, "candidates"),
        (lambda recs: {"eval_probs": [[1.0] * 80]}, "rows"),
    ],
)
def test_bad_annotations_are_refused(filled, tmp_path, bad, match):
    log, _ = filled
    out = tmp_path / "x.parquet"
    with pytest.raises((TypeError, ValueError), match=match):
        log.export_parquet(out, annotate=bad)
    assert not out.exists()


def test_the_off_policy_evaluator_reads_the_export(filled, tmp_path):
    from nudgeserve.models.evaluation import ope

    log, _ = filled
    out = tmp_path / "x.parquet"
    log.export_parquet(out, annotate=_uniform_eval)
    logs = ope.read_logs_parquet([out])
    table = pq.read_table(out)
    assert logs.action.tolist() == table.column("action").to_pylist()
    assert logs.reward.tolist() == table.column("click").to_pylist()
    # The uniform "evaluation" policy is the uniform logging policy (propensity 1/80):
    # every importance weight is 1, so IPS must return the logged mean reward.
    result = ope.evaluate_logs(logs, ["ips"], n_bootstrap=20)["ips"]
    assert result.estimate == pytest.approx(np.mean(logs.reward))


def test_chunking_does_not_change_the_result(filled, tmp_path, db_path):
    filled[0].flush()
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    export_parquet(db_path, a)
    export_parquet(db_path, b, chunk_decisions=7)
    assert pq.ParquetFile(b).num_row_groups == 3
    assert pq.read_table(a).equals(pq.read_table(b))


def test_empty_log_gives_an_empty_file_with_the_schema(open_log, db_path, tmp_path):
    open_log().close()
    out = tmp_path / "x.parquet"
    summary = export_parquet(db_path, out)
    assert summary.rows == 0
    table = pq.read_table(out)
    assert table.num_rows == 0 and "propensity" in table.column_names


def test_kinds_found_in_the_data_get_columns(open_log, db_path, tmp_path):
    log = open_log(outcome_kinds=("click", "add_to_cart"), late_window_s=1e9)
    rec = sample_decisions(1, start_time=T0)[0]
    log.append(rec)
    log.record_feedback(_ev("d0", "a", "add_to_cart", 2.0, action=rec.actions[0]))
    log.close()
    out = tmp_path / "x.parquet"
    summary = export_parquet(db_path, out)  # default kinds, as the CLI would use
    assert summary.outcome_kinds == ("click", "visit", "conversion", "spend", "add_to_cart")
    assert pq.read_table(out).column("add_to_cart").to_pylist() == [2.0, 0.0, 0.0]


def test_export_while_another_writer_appends(open_log, db_path, tmp_path):
    log = open_log(durability="enqueue")
    recs = sample_decisions(3000)
    log.append_many(recs[:1000])
    log.flush()
    for rec in recs[1000:]:
        log.append(rec)
    summary = export_parquet(db_path, tmp_path / "x.parquet", chunk_decisions=100)
    table = pq.read_table(tmp_path / "x.parquet")
    assert 1000 <= summary.decisions <= 3000 and table.num_rows == 3 * summary.decisions
    # a snapshot: whole decisions only, each with all its slots
    assert set(pa.compute.value_counts(table.column("decision_id")).field(1).to_pylist()) == {3}


def test_bad_arguments_are_named(open_log, db_path, tmp_path):
    open_log().close()
    out = tmp_path / "x.parquet"
    with pytest.raises(ValueError, match="since"):
        export_parquet(db_path, out, since=datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="until"):
        export_parquet(db_path, out, until="yesterday")
    with pytest.raises(ValueError, match="until"):
        export_parquet(db_path, out, since=10.0, until=5.0)
    with pytest.raises(ValueError, match="outcome_kinds"):
        export_parquet(db_path, out, outcome_kinds=("click", "score"))
    with pytest.raises(ValueError, match="chunk_decisions"):
        export_parquet(db_path, out, chunk_decisions=0)
    with pytest.raises(FileNotFoundError, match="database"):
        export_parquet(tmp_path / "missing.db", out)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match="not a decision log"):
        export_parquet(other, out)
    assert not os.path.exists(out)


def _cli(*argv):
    """Run ``nudgeserve export`` with these arguments, as the CLI parses them."""
    parser = argparse.ArgumentParser()
    export_cmd.add_arguments(parser)
    return export_cmd.run(parser.parse_args([str(a) for a in argv]))


def test_export_command_writes_the_file(open_log, db_path, tmp_path, capsys):
    log = open_log(late_window_s=1e9)
    recs = sample_decisions(50, start_time=T0)
    log.append_many(recs)
    log.record_feedback_many(sample_clicks(recs, rate=0.2, seed=1))
    log.close()
    out = tmp_path / "x.parquet"
    rc = _cli(
        "--db",
        tmp_path / "decisions.db",
        "--out",
        out,
        "--since",
        "2023-11-14T22:13:30",
        "--until",
        T0 + 30,
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    table = pq.read_table(out)
    assert f"wrote {table.num_rows} rows" in stdout
    times = table.column("time").to_pylist()
    lo = datetime(2023, 11, 14, 22, 13, 30, tzinfo=UTC)
    assert min(times) == lo and max(times) == datetime.fromtimestamp(T0 + 29, UTC)
    assert table.num_rows == 20 * 3


def test_export_command_annotates_and_picks_the_reward(filled, tmp_path, db_path, capsys):
    filled[0].flush()
    out = tmp_path / "x.parquet"
    fn = "tests.unit.serve.decisions.test_export:_uniform_eval"
    assert _cli("--db", db_path, "--out", out, "--annotate", fn, "--reward", "spend") == 0
    assert "reward=spend" in capsys.readouterr().out
    table = pq.read_table(out)
    assert "eval_probs" in table.column_names
    assert table.column("reward").equals(table.column("spend"))


def test_export_command_reports_bad_input(filled, tmp_path, db_path, capsys):
    out = tmp_path / "x.parquet"
    assert _cli("--db", tmp_path / "nope.db", "--out", out) == 2
    assert "--db" in capsys.readouterr().err
    assert _cli("--db", db_path, "--out", out, "--since", "last tuesday") == 2
    assert "--since" in capsys.readouterr().err
    assert _cli("--db", db_path, "--out", out, "--annotate", "no_colon") == 2
    assert "--annotate" in capsys.readouterr().err
    assert _cli("--db", db_path, "--out", out, "--annotate", "json:no_such_function") == 2
    assert "--annotate" in capsys.readouterr().err
    assert _cli("--db", db_path, "--out", out, "--reward", "refund") == 2
    assert "reward_kind" in capsys.readouterr().err
    assert not out.exists()


def test_parse_time_formats():
    assert export_cmd.parse_time("1700000000") == 1_700_000_000.0
    assert export_cmd.parse_time("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert export_cmd.parse_time("2023-11-15T00:13:20+02:00") == 1_700_000_000.0
    week_ago = datetime.now(UTC) - timedelta(days=7)
    assert export_cmd.parse_time("-7d") == pytest.approx(week_ago.timestamp(), abs=5)
    with pytest.raises(ValueError):
        export_cmd.parse_time("nan")


def test_export_command_help_parses():
    parser = argparse.ArgumentParser()
    export_cmd.add_arguments(parser)
    args = parser.parse_args(["--db", "a.db", "--out", "b.parquet", "--outcome", "click"])
    assert args.outcome == ["click"] and str(args.db) == "a.db"


def test_log_object_exports_after_flush(tmp_path):
    with DecisionLog(tmp_path / "d.db", durability="enqueue", max_delay_ms=5000) as log:
        log.append_many(sample_decisions(4))
        assert log.export_parquet(tmp_path / "x.parquet").decisions == 4
