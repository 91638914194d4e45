"""Off-policy estimators: truth recovery on synthetic bandits with exact policy values,
interval coverage, the documented behaviour of clipping and self-normalization, the
bootstrap's keying, warnings and input validation (the bootstrap kernel itself:
``tests/unit/kernels/test_bootstrap.py``; policies' distributions:
``tests/unit/models/policies/test_slates.py``).

Every random draw is seeded; a failing assertion prints the seed or replication.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nudgeserve.models.evaluation import ope
from nudgeserve.models.evaluation._synthetic import make_synthetic_bandit

N_REPLICATIONS = 200
N_ROWS = 1000
N_BOOT = 200


# ------------------------------------------------------------------ coverage and bias


@pytest.fixture(scope="module")
def replications():
    """200 seeded replications on a 2-slot bandit: results with an exact and a biased model."""
    bandit = make_synthetic_bandit(n_contexts=20, n_actions=5, n_positions=2, seed=7)
    policy = bandit.softmax_policy(0.1)
    truth = bandit.policy_value(policy)
    biased = bandit.biased_reward_model(0.1)
    exact_runs, biased_runs = [], []
    for rep in range(N_REPLICATIONS):
        logs = bandit.sample(N_ROWS, seed=10_000 + rep)
        common = dict(
            positions=logs.positions,
            n_bootstrap=N_BOOT,
            seed=rep,
            max_weight=1e6,  # no clipping: clipped IPS must then behave exactly as IPS
        )
        dist = logs.per_row(policy)
        args = (logs.actions, logs.rewards, logs.propensities, dist)
        exact_runs.append(
            ope.evaluate(*args, reward_hat=logs.per_row(bandit.expected_reward), **common)
        )
        biased_runs.append(ope.evaluate(*args, reward_hat=logs.per_row(biased), **common))
    return truth, exact_runs, biased_runs


def _coverage(runs, name, truth):
    return np.mean([r[name].ci_low <= truth <= r[name].ci_high for r in runs])


@pytest.mark.parametrize("name", ope.ESTIMATORS)
def test_every_interval_covers_the_truth_at_about_95_percent(replications, name):
    truth, runs, _ = replications
    coverage = _coverage(runs, name, truth)
    assert 0.85 <= coverage <= 0.99, f"{name}: coverage {coverage:.3f} of truth {truth:.4f}"


def test_ips_is_unbiased(replications):
    truth, runs, _ = replications
    estimates = np.array([r["ips"].estimate for r in runs])
    se = estimates.std(ddof=1) / math.sqrt(len(estimates))
    assert abs(estimates.mean() - truth) < 4 * se, (estimates.mean(), truth, se)


def test_dr_stays_unbiased_with_a_biased_model_while_dm_does_not(replications):
    truth, _, biased = replications
    dr = np.array([r["dr"].estimate for r in biased])
    dm = np.array([r["dm"].estimate for r in biased])
    assert abs(dr.mean() - truth) < 4 * dr.std(ddof=1) / math.sqrt(len(dr))
    assert dm.mean() - truth > 0.05  # the model is shifted up by 0.1 (clipped at 1)
    assert 0.85 <= _coverage(biased, "dr", truth) <= 0.99
    assert _coverage(biased, "dm", truth) < 0.2


def test_self_normalized_and_dr_estimators_have_less_variance_than_ips(replications):
    _, runs, _ = replications
    sd = {k: np.std([r[k].estimate for r in runs]) for k in ("ips", "snips", "dr")}
    assert sd["snips"] < sd["ips"] and sd["dr"] < sd["ips"], sd


def test_synthetic_policy_value_matches_a_large_on_policy_sample():
    bandit = make_synthetic_bandit(n_contexts=10, n_actions=4, n_positions=3, seed=3)
    logs = bandit.sample(400_000, seed=1)
    truth = bandit.policy_value(bandit.logging_policy)
    se = logs.rewards.std() / math.sqrt(len(logs))
    assert abs(logs.rewards.mean() - truth) < 4 * se
    expected = bandit.logging_policy[logs.context, logs.actions, logs.positions]
    np.testing.assert_array_equal(logs.propensities, expected)


# ------------------------------------------------------------------ exact formulas


def _reference(actions, rewards, props, pi, q, max_weight):
    """Per-row loops of the textbook formulas (independent of the vectorised code)."""
    n = len(actions)
    w = [pi[i][actions[i]] / props[i] for i in range(n)]
    dm_rows = [sum(p * v for p, v in zip(pi[i], q[i], strict=True)) for i in range(n)]
    res = [w[i] * (rewards[i] - q[i][actions[i]]) for i in range(n)]
    return {
        "ips": sum(w[i] * rewards[i] for i in range(n)) / n,
        "clipped_ips": sum(min(w[i], max_weight) * rewards[i] for i in range(n)) / n,
        "snips": sum(w[i] * rewards[i] for i in range(n)) / sum(w),
        "dm": sum(dm_rows) / n,
        "dr": (sum(dm_rows) + sum(res)) / n,
        "sndr": sum(dm_rows) / n + sum(res) / sum(w),
        "ess": sum(w) ** 2 / sum(x * x for x in w),
    }


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    n_actions=st.integers(2, 6),
    max_weight=st.floats(0.5, 10.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_estimates_equal_the_textbook_formulas(n, n_actions, max_weight, seed):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(n_actions), size=n)
    behaviour = rng.dirichlet(np.ones(n_actions), size=n)
    actions = np.array([rng.choice(n_actions, p=p) for p in behaviour])
    props = behaviour[np.arange(n), actions]
    rewards = rng.random(n)
    q = rng.random((n, n_actions))
    out = ope.evaluate(
        actions, rewards, props, pi, reward_hat=q, max_weight=max_weight, n_bootstrap=20, seed=seed
    )
    ref = _reference(actions, rewards, props, pi, q, max_weight)
    for name in ope.ESTIMATORS:
        assert out[name].estimate == pytest.approx(ref[name], rel=1e-10, abs=1e-12), name
    assert out["ips"].ess == pytest.approx(ref["ess"], rel=1e-10)
    assert out["dm"].ess == n


def test_kish_ess_on_a_hand_example():
    # weights 1, 1, 4 -> (sum w)^2 / sum w^2 = 36 / 18 = 2
    actions = np.array([0, 0, 1])
    props = np.array([0.5, 0.5, 0.25])
    pi = np.array([[0.5, 0.5], [0.5, 0.5], [0.0, 1.0]])
    res = ope.ips(actions, np.ones(3), props, pi, n_bootstrap=10)
    assert res.ess == pytest.approx(2.0)
    assert res.max_weight == pytest.approx(4.0)
    assert res.estimate == pytest.approx((1 + 1 + 4) / 3)


def test_on_policy_weights_are_one_and_every_estimator_gives_the_mean_reward():
    rng = np.random.default_rng(0)
    n, a = 500, 4
    behaviour = rng.dirichlet(np.ones(a), size=n)
    actions = (rng.random(n)[:, None] > behaviour.cumsum(axis=1)).sum(axis=1)
    props = behaviour[np.arange(n), actions]
    rewards = rng.integers(0, 2, n).astype(float)
    out = ope.evaluate(actions, rewards, props, behaviour, n_bootstrap=50)
    for name in ("ips", "clipped_ips", "snips"):
        assert out[name].estimate == pytest.approx(rewards.mean())
        assert out[name].ess == pytest.approx(n)
    on = ope.on_policy_value(rewards, n_bootstrap=50)
    assert on.estimate == pytest.approx(rewards.mean())
    assert (on.ci_low, on.ci_high) == pytest.approx((out["ips"].ci_low, out["ips"].ci_high))


# ------------------------------------------------------------------ clipping and SN


def test_clipping_above_the_largest_weight_changes_nothing():
    bandit = make_synthetic_bandit(seed=1)
    logs = bandit.sample(800, seed=2)
    dist = logs.per_row(bandit.greedy_policy())[:, :, 0]
    w_max = (dist[np.arange(len(logs)), logs.actions] / logs.propensities).max()
    out = ope.evaluate(
        logs.actions, logs.rewards, logs.propensities, dist, max_weight=w_max * 1.01, n_bootstrap=50
    )
    assert out["clipped_ips"].estimate == out["ips"].estimate
    assert out["clipped_ips"].ci_low == out["ips"].ci_low
    assert not any("clipped" in w for w in out["clipped_ips"].warnings)


def test_clipping_pulls_the_estimate_toward_zero_and_says_so():
    bandit = make_synthetic_bandit(seed=1)
    logs = bandit.sample(800, seed=2)
    dist = logs.per_row(bandit.greedy_policy())[:, :, 0]
    w = dist[np.arange(len(logs)), logs.actions] / logs.propensities
    clip = float(np.quantile(w[w > 0], 0.5))
    out = ope.evaluate(
        logs.actions, logs.rewards, logs.propensities, dist, max_weight=clip, n_bootstrap=50
    )
    expected = np.mean(np.minimum(w, clip) * logs.rewards)
    assert out["clipped_ips"].estimate == pytest.approx(expected)
    assert out["clipped_ips"].estimate < out["ips"].estimate
    assert out["clipped_ips"].max_weight == pytest.approx(clip)
    n_clipped = int((w > clip).sum())
    assert any(f"{n_clipped} rows" in m and "clipped" in m for m in out["clipped_ips"].warnings)


def test_self_normalization_ignores_a_common_scale_of_the_propensities():
    bandit = make_synthetic_bandit(seed=4)
    logs = bandit.sample(600, seed=5)
    dist = logs.per_row(bandit.softmax_policy(0.2))[:, :, 0]
    q = logs.per_row(bandit.expected_reward)[:, :, 0]
    a = ope.evaluate(
        logs.actions, logs.rewards, logs.propensities, dist, reward_hat=q, n_bootstrap=50
    )
    b = ope.evaluate(
        logs.actions, logs.rewards, logs.propensities * 0.5, dist, reward_hat=q, n_bootstrap=50
    )
    assert b["ips"].estimate == pytest.approx(2 * a["ips"].estimate)
    assert b["snips"].estimate == pytest.approx(a["snips"].estimate)
    assert b["sndr"].estimate == pytest.approx(a["sndr"].estimate)
    # Halved propensities double every weight: the mean-weight check must notice.
    assert any("mean importance weight" in m for m in b["ips"].warnings)
    assert not any("mean importance weight" in m for m in a["ips"].warnings)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40))
def test_snips_stays_within_the_observed_rewards(seed, n):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.full(3, 0.3), size=n)
    props = rng.uniform(0.01, 1.0, n)
    actions = rng.integers(0, 3, n)
    rewards = rng.normal(size=n)
    res = ope.snips(actions, rewards, props, pi, n_bootstrap=10)
    w = pi[np.arange(n), actions]
    if w.sum() > 0:
        seen = rewards[w > 0]
        assert seen.min() - 1e-12 <= res.estimate <= seen.max() + 1e-12
    else:
        assert math.isnan(res.estimate)


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_is_seeded_and_keyed_by_row_not_by_order():
    bandit = make_synthetic_bandit(seed=2)
    logs = bandit.sample(500, seed=3)
    dist = logs.per_row(bandit.softmax_policy(0.2))[:, :, 0]
    keys = np.arange(500, dtype=np.uint64) * 7919
    args = (logs.actions, logs.rewards, logs.propensities, dist)
    a = ope.ips(*args, n_bootstrap=100, seed=1, bootstrap_keys=keys)
    again = ope.ips(*args, n_bootstrap=100, seed=1, bootstrap_keys=keys)
    other = ope.ips(*args, n_bootstrap=100, seed=2, bootstrap_keys=keys)
    perm = np.random.default_rng(0).permutation(500)
    shuffled = ope.ips(*(x[perm] for x in args), n_bootstrap=100, seed=1, bootstrap_keys=keys[perm])
    assert a == again
    assert (a.ci_low, a.ci_high) != (other.ci_low, other.ci_high)
    assert shuffled.estimate == pytest.approx(a.estimate, rel=1e-12)
    assert (shuffled.ci_low, shuffled.ci_high) == pytest.approx((a.ci_low, a.ci_high), rel=1e-12)


def test_statistics_of_parts_merge_to_the_whole_and_survive_serialization():
    bandit = make_synthetic_bandit(n_positions=2, seed=5)
    logs = bandit.sample(900, seed=6)
    pi = logs.per_row(bandit.softmax_policy(0.3))
    q = logs.per_row(bandit.expected_reward)
    rows = np.arange(len(logs))
    table = ope.OPELogs(
        decision_id=np.array([f"d{i}" for i in rows]),
        action=logs.actions,
        position=logs.positions,
        reward=logs.rewards,
        propensity=logs.propensities,
        eval_probs=pi[rows, :, logs.positions],
        reward_hat=q[rows, :, logs.positions],
    )

    def part(sl):
        sub = ope.OPELogs(**{k: (v[sl] if v is not None else None) for k, v in vars(table).items()})
        return ope.logs_statistics(sub, with_reward_model=True, n_bootstrap=64, seed=9)

    whole = part(slice(None))
    merged = part(slice(0, 300)).merge(
        ope.OPEStatistics.from_bytes(part(slice(300, None)).to_bytes())
    )
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
    np.testing.assert_allclose(merged.boot_sums, whole.boot_sums, rtol=1e-12)
    np.testing.assert_array_equal(merged.logged_counts, whole.logged_counts)
    a, b = ope.summarize(whole), ope.summarize(merged)
    for name in ope.ESTIMATORS:
        assert b[name].estimate == pytest.approx(a[name].estimate, rel=1e-12)
        assert b[name].ci_high == pytest.approx(a[name].ci_high, rel=1e-12)


# ------------------------------------------------------------------ positions and layouts


def test_per_position_distributions_equal_the_selected_rows():
    bandit = make_synthetic_bandit(n_positions=3, seed=8)
    logs = bandit.sample(700, seed=9)
    dist = logs.per_row(bandit.softmax_policy(0.2))
    q = logs.per_row(bandit.expected_reward)
    rows = np.arange(len(logs))
    three = ope.evaluate(
        logs.actions,
        logs.rewards,
        logs.propensities,
        dist,
        positions=logs.positions,
        reward_hat=q,
        n_bootstrap=50,
    )
    two = ope.evaluate(
        logs.actions,
        logs.rewards,
        logs.propensities,
        dist[rows, :, logs.positions],
        reward_hat=q[rows, :, logs.positions],
        n_bootstrap=50,
    )
    for name in ope.ESTIMATORS:
        assert three[name].estimate == pytest.approx(two[name].estimate, rel=1e-12)
        assert three[name].ci_low == pytest.approx(two[name].ci_low, rel=1e-12)


def test_a_broadcast_context_free_policy_is_not_materialized_and_gives_the_same_answer():
    rng = np.random.default_rng(0)
    n, a, p = 5000, 80, 3
    per_item = rng.dirichlet(np.ones(a), size=p).T  # [A, P]
    actions = rng.integers(0, a, n)
    positions = rng.integers(0, p, n)
    rewards = (rng.random(n) < 0.01).astype(float)
    props = np.full(n, 1.0 / a)
    view = np.broadcast_to(per_item, (n, a, p))
    full = np.ascontiguousarray(view)
    x = ope.evaluate(actions, rewards, props, view, positions=positions, n_bootstrap=30)
    y = ope.evaluate(actions, rewards, props, full, positions=positions, n_bootstrap=30)
    assert x == y


def test_table_roundtrip_matches_the_array_path_with_decision_keys(tmp_path):
    import pyarrow.parquet as pq

    bandit = make_synthetic_bandit(n_positions=2, seed=10)
    logs = bandit.sample(1200, seed=11)
    dist = logs.per_row(bandit.softmax_policy(0.2))
    q = logs.per_row(bandit.expected_reward)
    rows = np.arange(len(logs))
    ids = np.array([f"dec-{i:05d}" for i in rows])
    joined = ope.OPELogs(
        ids,
        logs.actions,
        logs.positions,
        logs.rewards,
        logs.propensities,
        dist[rows, :, logs.positions],
        q[rows, :, logs.positions],
    )
    table = ope.logs_to_table(joined)
    assert table.column_names == [c.name for c in ope.OPE_LOG_COLUMNS if c.name != "logging_probs"]
    pq.write_table(table.slice(0, 500), tmp_path / "a.parquet")
    pq.write_table(table.slice(500), tmp_path / "b.parquet")
    from_parquet = ope.evaluate_logs(ope.read_logs_parquet([tmp_path]), n_bootstrap=80, seed=4)
    from_arrays = ope.evaluate(
        logs.actions,
        logs.rewards,
        logs.propensities,
        dist,
        positions=logs.positions,
        reward_hat=q,
        n_bootstrap=80,
        seed=4,
        bootstrap_keys=ope.decision_keys(ids),
    )
    for name in ope.ESTIMATORS:
        a, b = from_parquet[name], from_arrays[name]
        assert a.estimate == pytest.approx(b.estimate, rel=1e-10), name
        assert (a.ci_low, a.ci_high) == pytest.approx((b.ci_low, b.ci_high), rel=1e-10), name
        assert a.ess == pytest.approx(b.ess, rel=1e-10)


def test_ragged_candidate_lists_are_evaluated_row_by_row():
    # Three decisions with 2, 3 and 1 candidates (our own logs: candidate sets vary).
    eval_probs = ope.RaggedRows(np.array([0.5, 0.5, 0.2, 0.3, 0.5, 1.0]), np.array([0, 2, 5, 6]))
    reward_hat = ope.RaggedRows(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), np.array([0, 2, 5, 6]))
    logs = ope.OPELogs(
        np.array(["x", "y", "z"]),
        np.array([1, 2, 0]),
        np.zeros(3, np.int64),
        np.array([1.0, 0.0, 1.0]),
        np.array([0.5, 0.25, 1.0]),
        eval_probs,
        reward_hat,
    )
    out = ope.evaluate_logs(logs, n_bootstrap=20)
    w = np.array([0.5 / 0.5, 0.5 / 0.25, 1.0])
    dm = np.array([0.5 * 0.1 + 0.5 * 0.2, 0.2 * 0.3 + 0.3 * 0.4 + 0.5 * 0.5, 0.6])
    q_logged = np.array([0.2, 0.5, 0.6])
    r = np.array([1.0, 0.0, 1.0])
    assert out["ips"].estimate == pytest.approx(np.mean(w * r))
    assert out["dm"].estimate == pytest.approx(dm.mean())
    assert out["dr"].estimate == pytest.approx(np.mean(dm + w * (r - q_logged)))
    assert out["ips"].ess == pytest.approx(w.sum() ** 2 / (w**2).sum())


# ------------------------------------------------------------------ warnings


def test_weak_overlap_is_flagged():
    rng = np.random.default_rng(1)
    n, a = 2000, 50
    actions = rng.integers(0, a, n)
    props = np.full(n, 1.0 / a)
    dist = np.zeros((n, a))
    dist[:, 7] = 1.0  # deterministic target: only ~1/50 of rows carry weight 50
    out = ope.evaluate(actions, rng.random(n), props, dist, n_bootstrap=50)
    assert out["ips"].ess == pytest.approx((actions == 7).sum())
    assert any("weak overlap" in m for m in out["ips"].warnings)
    assert any("weak overlap" in m for m in out["snips"].warnings)
    calm = ope.evaluate(actions, rng.random(n), props, np.full((n, a), 1.0 / a), n_bootstrap=50)
    assert calm["ips"].warnings == ()


def test_missing_support_is_flagged_from_the_logging_distribution():
    rng = np.random.default_rng(2)
    n = 1000
    logging = np.tile([0.5, 0.5, 0.0], (n, 1))
    actions = rng.integers(0, 2, n)
    target = np.tile([0.25, 0.25, 0.5], (n, 1))
    out = ope.evaluate(
        actions, rng.random(n), np.full(n, 0.5), target, logging_dist=logging, n_bootstrap=50
    )
    text = " ".join(out["ips"].warnings)
    assert "missing support" in text and "50%" in text
    assert "never seen in the logs" in text
    assert out["dm"].warnings == () if "dm" in out else True


def test_never_logged_actions_are_flagged_without_a_logging_distribution():
    n = 300
    actions = np.zeros(n, dtype=np.int64)
    dist = np.tile([0.9, 0.1], (n, 1))
    out = ope.ips(actions, np.ones(n), np.full(n, 0.9), dist, n_bootstrap=20)
    assert any("10% of the evaluation policy's probability" in m for m in out.warnings)


# ------------------------------------------------------------------ validation


def _valid():
    n = 4
    return dict(
        actions=np.array([0, 1, 1, 0]),
        rewards=np.array([1.0, 0.0, 1.0, 0.0]),
        propensities=np.full(n, 0.5),
        action_dist=np.full((n, 2), 0.5),
    )


@pytest.mark.parametrize(
    ("change", "error", "word"),
    [
        (dict(propensities=np.array([0.5, 0.0, 0.5, 0.5])), ValueError, "propensities"),
        (dict(propensities=np.array([0.5, 1.5, 0.5, 0.5])), ValueError, "propensities"),
        (dict(rewards=np.array([1.0, np.nan, 0.0, 0.0])), ValueError, "rewards"),
        (dict(rewards=np.ones(3)), ValueError, "rewards"),
        (dict(actions=np.array([0.0, 1.0, 1.0, 0.0])), TypeError, "actions"),
        (dict(actions=np.array([0, 2, 1, 0])), ValueError, "actions"),
        (dict(action_dist=np.full((4, 2), 0.4)), ValueError, "action_dist"),
        (dict(action_dist=np.full((4, 3, 2), 1 / 3)), ValueError, "positions"),
        (dict(action_dist=np.array([["a", "b"]] * 4)), TypeError, "action_dist"),
        (dict(reward_hat=np.ones((4, 3))), ValueError, "reward_hat"),
        (dict(estimators=("dr",)), ValueError, "reward_hat"),
        (dict(estimators=("magic",)), ValueError, "estimators"),
        (dict(n_bootstrap=1), ValueError, "n_bootstrap"),
        (dict(confidence=1.0), ValueError, "confidence"),
        (dict(max_weight=0.0), ValueError, "max_weight"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(bootstrap_keys=np.arange(3)), ValueError, "bootstrap_keys"),
        (dict(logging_dist=np.tile([0.3, 0.7], (4, 1))), ValueError, "logging_dist"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(change, error, word):
    kwargs = {**_valid(), **change}
    with pytest.raises(error, match=word):
        ope.evaluate(**kwargs)


def test_empty_logs_are_rejected():
    with pytest.raises(ValueError, match="no rows"):
        ope.evaluate(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros((0, 2)))


def test_parquet_without_a_required_column_is_rejected(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"decision_id": ["a"], "action": [0]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="position"):
        ope.read_logs_parquet([tmp_path / "x.parquet"])
    with pytest.raises(ValueError, match="no such"):
        ope.read_logs_parquet([tmp_path / "missing.parquet"])


def test_decision_keys_are_stable_and_distinct():
    ids = np.array([f"{i:08x}-id" for i in range(10_000)])
    keys = ope.decision_keys(ids)
    assert keys.dtype == np.uint64 and np.unique(keys).size == ids.size
    np.testing.assert_array_equal(keys, ope.decision_keys(list(ids)))
    np.testing.assert_array_equal(keys, ope.decision_keys(np.array(ids, dtype=object)))
    np.testing.assert_array_equal(keys, ope.decision_keys(np.char.encode(ids, "utf-8")))
    assert ope.decision_keys(["a"])[0] != ope.decision_keys(["b"])[0]
    with pytest.raises(TypeError, match="decision ids"):
        ope.decision_keys(np.array([1.5, 2.5]))


def test_few_rewarded_rows_are_flagged():
    n = 400
    actions = np.zeros(n, dtype=np.int64)
    rewards = np.zeros(n)
    rewards[:3] = 1.0
    out = ope.ips(actions, rewards, np.full(n, 0.5), np.tile([0.5, 0.5], (n, 1)), n_bootstrap=20)
    assert any("only 3 rows carry both weight and a nonzero reward" in m for m in out.warnings)


# ------------------------------------------------------------------ the evaluate command


def _run_cli(argv):
    import argparse

    from nudgeserve.commands import evaluate

    parser = argparse.ArgumentParser(prog="nudgeserve evaluate")
    evaluate.add_arguments(parser)
    return evaluate.run(parser.parse_args(argv))


def test_cli_estimates_bts_from_the_random_log_against_its_on_policy_rate(tmp_path, capsys):
    from nudgeserve.models import load_obd

    out = tmp_path / "report.json"
    code = _run_cli(
        [
            "obd",
            "--logs",
            "random",
            "--policy",
            "bts",
            "--campaign",
            "men",
            "--no-model",
            "--n-bootstrap",
            "200",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "truth (on-policy click rate of the bts/men log)" in text
    assert "each item's share of each slot" in text
    import json

    report = json.loads(out.read_text())
    bts_ctr = load_obd("bts", "men").click.mean()
    assert report["truth"]["estimate"] == pytest.approx(bts_ctr)
    assert set(report["results"]) == {"ips", "clipped_ips", "snips"}
    ips = report["results"]["ips"]
    # The empirical bts distribution recovers the bts click rate within the interval.
    assert ips["ci_low"] <= bts_ctr <= ips["ci_high"]


def test_cli_random_policy_on_its_own_log_reproduces_the_click_rate(capsys):
    from nudgeserve.models import load_obd

    assert (
        _run_cli(
            [
                "obd",
                "--policy",
                "random",
                "--logs",
                "random",
                "--campaign",
                "women",
                "--no-model",
                "--n-bootstrap",
                "50",
                "--estimators",
                "ips,snips",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    ctr = load_obd("random", "women").click.mean()
    ips_line = next(line for line in text.splitlines() if line.startswith("ips "))
    assert f"{ctr:.5f}" in ips_line and "+0.0%" in ips_line


def test_cli_model_policy_uses_rows_the_model_did_not_train_on(capsys):
    assert _run_cli(["obd", "--policy", "model-softmax", "--n-bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "after the 8000 the click model trained on" in text
    for name in ope.ESTIMATORS:
        assert any(line.startswith(name + " ") for line in text.splitlines()), name


def test_cli_parquet_in_one_process_matches_the_library(tmp_path, capsys):
    import json

    import pyarrow.parquet as pq

    bandit = make_synthetic_bandit(seed=12)
    logs = bandit.sample(800, seed=13)
    joined = ope.OPELogs(
        np.array([f"d{i}" for i in range(800)]),
        logs.actions,
        logs.positions,
        logs.rewards,
        logs.propensities,
        logs.per_row(bandit.softmax_policy(0.3))[:, :, 0],
    )
    pq.write_table(ope.logs_to_table(joined), tmp_path / "x.parquet")
    out = tmp_path / "r.json"
    assert (
        _run_cli(
            ["parquet", str(tmp_path / "x.parquet"), "--n-bootstrap", "60", "--json", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    want = ope.evaluate_logs(joined, n_bootstrap=60)
    for name, res in want.items():
        assert report["results"][name]["estimate"] == pytest.approx(res.estimate, rel=1e-12)
        assert report["results"][name]["ci_high"] == pytest.approx(res.ci_high, rel=1e-12)
    assert report["logging_policy_value"]["estimate"] == pytest.approx(logs.rewards.mean())
    assert "ips" in capsys.readouterr().out


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    assert _run_cli(["parquet", str(tmp_path / "nope.parquet")]) == 2
    assert "no such Parquet file" in capsys.readouterr().err
    assert _run_cli(["obd", "--policy", "model-greedy", "--no-model"]) == 2
    assert "needs the click model" in capsys.readouterr().err
