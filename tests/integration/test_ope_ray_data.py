"""The Ray Data evaluator over Parquet gives the in-memory estimator's numbers.

One local Ray for the module (``local_ray`` in conftest.py), stopped at its end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from nudgeserve.models.evaluation import ope
from nudgeserve.models.evaluation._synthetic import make_synthetic_bandit

ray = pytest.importorskip("ray")

from nudgeserve.serve.ray.ope_data import evaluate_parquet_ray  # noqa: E402

RAY_TEMP_NAME = "ope"
N_ROWS = 12_000
N_BOOT = 120


@pytest.fixture(scope="module")
def local_ray(local_ray):
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    return local_ray


@pytest.fixture(scope="module")
def synthetic_logs():
    bandit = make_synthetic_bandit(n_contexts=30, n_actions=6, n_positions=3, seed=21)
    logs = bandit.sample(N_ROWS, seed=22)
    rows = np.arange(N_ROWS)
    dist = logs.per_row(bandit.softmax_policy(0.15))
    q = logs.per_row(bandit.biased_reward_model(0.05))
    ids = np.array([f"{i:06d}-{c}" for i, c in zip(rows, logs.context, strict=True)])
    joined = ope.OPELogs(
        decision_id=ids,
        action=logs.actions,
        position=logs.positions,
        reward=logs.rewards,
        propensity=logs.propensities,
        eval_probs=dist[rows, :, logs.positions],
        reward_hat=q[rows, :, logs.positions],
        logging_probs=logs.per_row(bandit.logging_policy)[rows, :, logs.positions],
    )
    arrays = dict(
        actions=logs.actions,
        rewards=logs.rewards,
        propensities=logs.propensities,
        action_dist=dist,
        positions=logs.positions,
        reward_hat=q,
        bootstrap_keys=ope.decision_keys(ids),
    )
    return joined, arrays


def _write_parts(joined, directory: Path, n_files: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    table = ope.logs_to_table(joined)
    bounds = np.linspace(0, table.num_rows, n_files + 1).astype(int)
    for k in range(n_files):
        part = table.slice(bounds[k], bounds[k + 1] - bounds[k])
        pq.write_table(part, directory / f"part-{k:03d}.parquet", row_group_size=1500)
    return directory


def _assert_same(a: dict, b: dict, names) -> None:
    for name in names:
        x, y = a[name], b[name]
        assert x.estimate == pytest.approx(y.estimate, rel=1e-9, abs=1e-12), name
        assert x.ci_low == pytest.approx(y.ci_low, rel=1e-9, abs=1e-12), name
        assert x.ci_high == pytest.approx(y.ci_high, rel=1e-9, abs=1e-12), name
        assert x.ess == pytest.approx(y.ess, rel=1e-9), name
        assert x.n == y.n
        assert x.warnings == y.warnings, name


def test_ray_data_matches_the_in_memory_estimators(local_ray, synthetic_logs, tmp_path):
    joined, arrays = synthetic_logs
    directory = _write_parts(joined, tmp_path / "logs", n_files=4)
    distributed = evaluate_parquet_ray([directory], n_bootstrap=N_BOOT, seed=3, batch_rows=2500)
    in_memory = ope.evaluate(**arrays, n_bootstrap=N_BOOT, seed=3)
    from_files = ope.evaluate_logs(ope.read_logs_parquet([directory]), n_bootstrap=N_BOOT, seed=3)
    # The array path has no logging distribution, so it lacks that one support check;
    # compare warnings with the single-process Parquet path and numbers with both.
    _assert_same(distributed, from_files, ope.ESTIMATORS)
    for name in ope.ESTIMATORS:
        assert distributed[name].estimate == pytest.approx(in_memory[name].estimate, rel=1e-9)
        assert distributed[name].ci_low == pytest.approx(in_memory[name].ci_low, rel=1e-9)
        assert distributed[name].ci_high == pytest.approx(in_memory[name].ci_high, rel=1e-9)
    assert distributed["on_policy"].estimate == pytest.approx(joined.reward.mean())


def test_partitioning_does_not_change_the_answer(local_ray, synthetic_logs, tmp_path):
    joined, _ = synthetic_logs
    one = _write_parts(joined, tmp_path / "one", n_files=1)
    many = _write_parts(joined, tmp_path / "many", n_files=7)
    a = evaluate_parquet_ray([one], n_bootstrap=N_BOOT, seed=5, batch_rows=N_ROWS)
    b = evaluate_parquet_ray(
        sorted(many.glob("*.parquet")), n_bootstrap=N_BOOT, seed=5, batch_rows=997
    )
    _assert_same(a, b, (*ope.ESTIMATORS, "on_policy"))


def test_estimator_subset_and_missing_columns(local_ray, synthetic_logs, tmp_path):
    joined, _ = synthetic_logs
    no_model = ope.OPELogs(
        joined.decision_id,
        joined.action,
        joined.position,
        joined.reward,
        joined.propensity,
        joined.eval_probs,
    )
    directory = _write_parts(no_model, tmp_path / "no_model", n_files=2)
    out = evaluate_parquet_ray([directory], n_bootstrap=20)
    assert set(out) == {"ips", "clipped_ips", "snips", "on_policy"}
    with pytest.raises(ValueError, match="reward_hat"):
        evaluate_parquet_ray([directory], ("dr",), n_bootstrap=20)
    bad = tmp_path / "bad.parquet"
    pq.write_table(ope.logs_to_table(no_model).drop_columns(["propensity"]), bad)
    with pytest.raises(ValueError, match="propensity"):
        evaluate_parquet_ray([bad], n_bootstrap=20)


def test_cli_ray_flag_gives_the_single_process_report(local_ray, synthetic_logs, tmp_path):
    import argparse
    import json

    from nudgeserve.commands import evaluate

    joined, _ = synthetic_logs
    directory = _write_parts(joined, tmp_path / "cli", n_files=3)

    def run(*extra):
        parser = argparse.ArgumentParser()
        evaluate.add_arguments(parser)
        out = tmp_path / f"r{len(extra)}.json"
        argv = ["parquet", str(directory), "--n-bootstrap", "60", "--json", str(out), *extra]
        assert evaluate.run(parser.parse_args(argv)) == 0
        return json.loads(out.read_text())

    with_ray, single = run("--ray", "--batch-rows", "3000"), run()
    for name in ope.ESTIMATORS:
        a, b = with_ray["results"][name], single["results"][name]
        assert a["estimate"] == pytest.approx(b["estimate"], rel=1e-9)
        assert a["ci_low"] == pytest.approx(b["ci_low"], rel=1e-9)
    assert with_ray["logging_policy_value"]["estimate"] == pytest.approx(joined.reward.mean())
