"""Slot propensities: every policy logs P(action at slot), checked against the kernels'
own sampling (the Plackett-Luce math itself: ``tests/unit/models/policies/test_slates.py``);
the bandit policies read the learner's state; the learner's features of a logged decision
are the ones the policy saw."""

from __future__ import annotations

import numpy as np
import pytest

from nudgeserve.models import load_obd
from nudgeserve.serve.config import (
    Control,
    EpsilonGreedy,
    Greedy,
    LinearBanditPolicy,
    PlackettLuce,
    Thompson,
)
from nudgeserve.serve.engine.bandits import ReplayBanditFeatures
from nudgeserve.serve.engine.learner_state import LearnerConfig
from nudgeserve.serve.engine.learning import OnlineLearner
from nudgeserve.serve.engine.policy_labels import policy_label
from nudgeserve.serve.engine.record_builder import RecordBuilder
from nudgeserve.serve.engine.selection import SelectionState, select_slates
from nudgeserve.serve.engine.types import DecisionItem, DecisionMeta
from nudgeserve.serve.protocol.decide import ObdContext, ObdItemFeatures


def test_logged_propensities_match_how_often_the_kernels_choose():
    """Sampling the same row under many seeds: the share of draws putting an action at a
    slot approaches the logged propensity, for every stochastic policy."""
    rng = np.random.default_rng(3)
    n_draws = 20_000
    row = rng.normal(size=12).astype(np.float32)
    scores = np.repeat(row[None, :], n_draws, axis=0)
    seeds = np.arange(n_draws, dtype=np.uint64)
    state = SelectionState(n_catalog=12, arm_counts=lambda key: (np.arange(12.0), np.full(12, 5.0)))
    for policy in (
        EpsilonGreedy(epsilon=0.3),
        PlackettLuce(temperature=0.5),
        Thompson(prior_alpha=1.0, prior_beta=1.0),
    ):
        idx, prop = select_slates(
            scores, [3] * n_draws, [policy] * n_draws, seeds, None, state, [""] * n_draws
        )
        for slot in range(3):
            counts = np.bincount(idx[:, slot], minlength=12) / n_draws
            for action in np.unique(idx[:, slot]):
                logged = prop[idx[:, slot] == action, slot]
                assert np.allclose(logged, logged[0]), policy  # one value per (action, slot)
                se = np.sqrt(logged[0] * (1 - logged[0]) / n_draws)
                assert abs(counts[action] - logged[0]) < 5 * se + 1e-3, (policy, slot, action)


def test_greedy_and_control_are_deterministic():
    scores = np.asarray([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]], dtype=np.float32)
    state = SelectionState(control_index=2, n_catalog=3)
    seeds = np.zeros(2, dtype=np.uint64)
    idx, prop = select_slates(scores, [2, 2], [Greedy(), Greedy()], seeds, None, state)
    assert idx.tolist() == [[1, 2], [0, 1]] and prop.tolist() == [[1, 1], [1, 1]]
    idx, prop = select_slates(scores, [2, 1], [Control(), Control()], seeds, None, state)
    assert idx[:, 0].tolist() == [2, 2] and idx[0, 1] == 1
    assert prop[0].tolist() == [1.0, 1.0] and prop[1, 0] == 1.0


def test_policy_labels_carry_their_parameters():
    assert policy_label(EpsilonGreedy(epsilon=0.2)) == "epsilon_greedy(epsilon=0.2)"
    assert policy_label(PlackettLuce(temperature=0.5)) == "plackett_luce(temperature=0.5)"
    assert policy_label(Thompson()) == "thompson(prior_alpha=1, prior_beta=1)"
    assert (
        policy_label(LinearBanditPolicy(alpha=0.3, epsilon=0.1))
        == "linear(method=ucb, alpha=0.3, epsilon=0.1)"
    )
    assert policy_label(Control()) == "control"


# ----------------------------------------------------------------- learning bandits


def obd_items(log, rows, policy, experiment="exp", variant="ts", inline=()):
    return [
        DecisionItem(
            context=ObdContext(
                [str(u) for u in log.user_features[r]], [float(a) for a in log.affinity[r]]
            ),
            candidates=None,
            inline=tuple(inline),
            excluded=np.zeros(0, np.int64),
            k=3,
            policy=policy,
            seed=1000 + i,
            meta=DecisionMeta(
                decision_id=f"d{r}-{i}",
                unit_id=f"u{i}",
                experiment=experiment,
                variant=variant,
                policy=policy_label(policy),
                inline_ids=tuple(f"new-{j}" for j in range(len(inline))),
            ),
        )
        for i, r in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def obd_log():
    return load_obd("random", "all")


def test_thompson_follows_the_learners_counts(engines, obd_log, tmp_path):
    """Decisions logged, clicks joined on item 42 only, the learner reads the log: the
    Thompson arm of that experiment now ranks item 42 first, with a high propensity."""
    from nudgeserve.serve.decisions import DecisionLog, FeedbackEvent

    engine = engines["obd"]
    # The prior says clicks are rare, so arms nobody clicked stay below item 42's 50 %.
    policy = Thompson(prior_alpha=1.0, prior_beta=50.0)
    log = DecisionLog(str(tmp_path / "d.sqlite"))
    builder = RecordBuilder(engine.info)
    items = obd_items(obd_log, range(200), Greedy())
    outcomes = engine.decide_batch(items)
    records = builder.records(items, outcomes, now=0.0)
    # Show item 42 in slot 0 of every logged decision, clicked half the time.
    records = [
        type(r)(
            **{**{f: getattr(r, f) for f in r.__struct_fields__}, "actions": ["42", *r.actions[1:]]}
        )
        if "42" not in r.actions
        else r
        for r in records
    ]
    log.append_many(records)
    log.record_feedback_many(
        [FeedbackEvent(r.decision_id, "c", "click", action="42", time=1.0) for r in records[::2]]
    )
    log.close()
    learner = OnlineLearner(
        LearnerConfig(
            use_case="obd",
            decision_log=str(tmp_path / "d.sqlite"),
            catalog=tuple(str(i) for i in range(80)),
            reward_delay_s=0.0,
        ),
        clock=lambda: 10.0,
    )
    assert learner.poll_once() == 200
    snap = learner.snapshot()
    successes, failures = snap.arm_counts("exp/ts")
    assert successes[42] == 100 and failures[42] == 100
    try:
        engine.set_bandit_snapshot(snap)
        fresh = obd_items(obd_log, range(300, 340), policy)
        decided = engine.decide_batch(fresh)
        other_arm = engine.decide_batch(obd_items(obd_log, range(300, 340), policy, variant="x"))
    finally:
        engine.set_bandit_snapshot(None)
    firsts = [int(o.indices[0]) for o in decided]
    assert firsts.count(42) == len(firsts)
    assert all(o.propensities[0] > 0.99 for o in decided)
    # Another arm of the experiment learns from its own traffic only: still the prior.
    assert [int(o.indices[0]) for o in other_arm].count(42) < 5


def test_the_learner_sees_the_features_the_linear_policy_saw(engines, obd_log):
    engine = engines["obd"]
    inline = (ObdItemFeatures(0.7, "a", "b", "c"),)
    items = obd_items(obd_log, range(5), LinearBanditPolicy(), inline=inline)
    captured = {}
    original = engine.bandit_features

    def spy(user_buckets, scores, items=None, rows=None, inline_tables=None):
        x = original(user_buckets, scores, items, rows, inline_tables)
        captured["x"] = x
        return x

    engine.bandit_features = spy
    try:
        outcomes = engine.decide_batch(items)
    finally:
        del engine.bandit_features
    records = RecordBuilder(engine.info).records(items, outcomes, now=0.0)
    factory = ReplayBanditFeatures(engine.settings)
    factory.engine = engine  # the learner builds its own; the same weights here
    got = factory.featurize(records)
    for row, (x_logged, outcome) in enumerate(zip(got, outcomes, strict=True)):
        want = captured["x"][row, outcome.indices]
        np.testing.assert_allclose(x_logged, want, rtol=1e-5, atol=1e-8)
    other = [
        type(records[0])(
            **{
                **{f: getattr(records[0], f) for f in records[0].__struct_fields__},
                "model_checkpoint": "other",
            }
        )
    ]
    assert factory.featurize(other) == [None]
