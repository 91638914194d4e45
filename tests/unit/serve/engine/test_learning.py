"""The learner without Ray: reading a real decision log (reward windows, watermark,
orphans), restarts from the saved state, featurizers, and the client's background
refresh."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nudgeserve.models.policies.linear_bandit import LinearBandit
from nudgeserve.serve.decisions import DecisionLog, DecisionRecord, FeedbackEvent
from nudgeserve.serve.engine.learner_state import ALL, policy_key
from nudgeserve.serve.engine.learning import LearnerClient, LoggedFeatures, OnlineLearner

from ._learner_settings import CATALOG, DIM, learner_config


class Clock:
    """The learner's clock, set by the test (reward windows without sleeping)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(
    decision_id: str,
    t: float,
    actions: list[str],
    x: np.ndarray,
    *,
    experiment: str = "",
    variant: str = "",
    use_case: str = "obd",
) -> DecisionRecord:
    return DecisionRecord(
        decision_id=decision_id,
        time=t,
        unit_id="u",
        experiment=experiment,
        variant=variant,
        model_version="1",
        policy="linear",
        candidates=[*CATALOG, "inline-1"],
        actions=actions,
        scores=[0.5] * len(actions),
        propensities=[0.5] * len(actions),
        features=x.reshape(-1).tolist(),
        use_case=use_case,
    )


def click(decision_id: str, event_id: str, action: str | None, kind="click", value=1.0):
    return FeedbackEvent(decision_id, event_id, kind, value=value, action=action)


# ---------------------------------------------------------------- reading the log


@pytest.fixture
def log(tmp_path):
    lg = DecisionLog(str(tmp_path / "decisions.db"))
    yield lg
    lg.close()


def xs(rng, k=2):
    return rng.normal(size=(k, DIM))


def test_learner_reads_final_decisions_with_their_rewards_once(tmp_path, log):
    config = learner_config(tmp_path)
    rng = np.random.default_rng(2)
    clock = Clock(time.time())
    t_old = clock.now - 100.0
    xa, xb, xc, xr = xs(rng), xs(rng), xs(rng), xs(rng)
    log.append_many(
        [
            record("a", t_old, ["1", "2"], xa),
            record("b", t_old, ["3", "inline-1"], xb, experiment="e", variant="v"),
            record("z", t_old, ["1", "2"], xs(rng), use_case="hillstrom"),
            record("c", t_old, ["1", "4"], xc),
            record("recent", clock.now, ["5", "1"], xr),
        ]
    )
    results = log.record_feedback_many(
        [
            click("a", "e1", "2"),
            click("a", "e2", "2"),  # a second click on one slot: reward 2, one success
            click("b", "e3", None),  # the decision as a whole: every slot
            click("c", "e4", "1", kind="visit"),  # not the reward kind
            click("recent", "e5", "5"),
            click("z", "e6", "1"),  # another use case
        ]
    )
    assert {r.status for r in results} == {"joined"}

    learner = OnlineLearner(config, LoggedFeatures(DIM).featurize, clock=clock)
    assert learner.snapshot().version == 0
    assert learner.poll_once() == 3  # a, b, c: "recent" waits for its reward window
    snap = learner.snapshot()
    assert (snap.version, snap.watermark, snap.n_trials(ALL)) == (1, 4, 6)
    succ, fail = snap.arm_counts(ALL)
    # a: "1" fail, "2" success; b: "3" success ("inline-1" is no arm); c: "1", "4" fail
    assert succ.tolist() == [0, 0, 1, 1, 0, 0]
    assert fail.tolist() == [0, 2, 0, 0, 1, 0]
    assert snap.arm_counts("")[0].tolist() == [0, 0, 1, 0, 0, 0]
    assert snap.arm_counts(policy_key("e", "v"))[0].tolist() == [0, 0, 0, 1, 0, 0]
    bandit = LinearBandit(DIM, ridge=0.5, prior_mean=np.array([1.0, 0.0, 0.0]))
    bandit.update(np.concatenate([xa, xc]), np.array([0.0, 2.0, 0.0, 0.0]))
    np.testing.assert_allclose(snap.linear_bandit("").theta, bandit.theta, rtol=1e-10)

    assert learner.poll_once() == 0  # nothing new: nothing counted twice
    assert learner.snapshot().version == 1
    clock.now += 31.0
    assert learner.poll_once() == 1
    snap = learner.snapshot()
    assert snap.arm_counts(ALL)[0].tolist() == [0, 0, 1, 1, 0, 1]
    assert snap.arm_counts(ALL)[1].tolist() == [0, 3, 0, 0, 1, 0]
    assert snap.watermark == 5


def test_orphaned_feedback_joined_later_is_learned(tmp_path, log):
    config = learner_config(tmp_path, state_dir="")
    clock = Clock(time.time())
    rng = np.random.default_rng(3)
    # The click arrives before its decision is logged (another replica's writer behind).
    (res,) = log.record_feedback_many([click("late", "e1", "4")])
    assert res.status == "orphaned"
    log.append(record("late", clock.now - 60.0, ["4", "0"], xs(rng)))
    learner = OnlineLearner(config, None, clock=clock)
    assert learner.poll_once() == 1
    assert learner.snapshot().arm_counts()[0].tolist() == [0, 0, 0, 0, 1, 0]
    # Without a featurizer the linear bandit stays at its prior.
    np.testing.assert_array_equal(learner.snapshot().linear_bandit().theta, [1.0, 0.0, 0.0])


def test_restart_resumes_from_the_saved_watermark(tmp_path, log):
    """Decisions applied before the save are not applied again; those after it are
    replayed from the log once."""
    config = learner_config(tmp_path)
    clock = Clock(time.time())
    rng = np.random.default_rng(5)
    log.append_many([record(f"d{i}", clock.now - 50.0, ["0", "1"], xs(rng)) for i in range(4)])
    log.record_feedback_many([click("d0", "c", "0"), click("d2", "c", "1")])
    first = OnlineLearner(config, LoggedFeatures(DIM).featurize, clock=clock)
    first.poll_once()
    first.stop(persist=True)
    log.append_many([record(f"d{i}", clock.now - 40.0, ["2", "1"], xs(rng)) for i in (4, 5)])
    log.record_feedback_many([click("d5", "c", "2")])
    first_cold = OnlineLearner(config, LoggedFeatures(DIM).featurize, clock=clock)
    assert first_cold.snapshot().n_trials() == 8  # loaded, not relearned
    first_cold.poll_once()
    resumed = first_cold.snapshot()

    fresh_config = learner_config(tmp_path, state_dir="")
    fresh = OnlineLearner(fresh_config, LoggedFeatures(DIM).featurize, clock=clock)
    fresh.poll_once()
    everything = fresh.snapshot()
    assert resumed.n_trials() == everything.n_trials() == 12
    for a, b in zip(resumed.arm_counts(), everything.arm_counts(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        resumed.linear_bandit().theta, everything.linear_bandit().theta, rtol=1e-10
    )
    assert everything.arm_counts()[0].tolist() == [1, 1, 1, 0, 0, 0]


def test_state_from_another_log_is_relearned(tmp_path):
    config = learner_config(tmp_path)
    clock = Clock(time.time())
    rng = np.random.default_rng(6)
    with DecisionLog(config.decision_log) as lg:
        lg.append_many([record(f"old{i}", clock.now - 50, ["0", "1"], xs(rng)) for i in range(3)])
    learner = OnlineLearner(config, None, clock=clock)
    learner.poll_once()
    learner.stop(persist=True)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"decisions.db{suffix}").unlink(missing_ok=True)
    with DecisionLog(config.decision_log) as lg:
        lg.append_many([record(f"new{i}", clock.now - 50, ["5", "4"], xs(rng)) for i in range(3)])
        lg.record_feedback_many([click("new1", "c", "5")])
    again = OnlineLearner(config, None, clock=clock)
    again.poll_once()
    snap = again.snapshot()
    assert snap.arm_counts()[0].tolist() == [0, 0, 0, 0, 0, 1]
    assert snap.arm_counts()[1].tolist() == [0, 0, 0, 0, 3, 2]


def test_featurizer_errors_apply_nothing(tmp_path, log):
    config = learner_config(tmp_path, state_dir="")
    clock = Clock(time.time())
    log.append(record("d", clock.now - 50, ["0", "1"], np.zeros((2, DIM))))
    learner = OnlineLearner(config, LoggedFeatures(DIM + 1).featurize, clock=clock)
    learner.featurize = lambda records: [np.zeros((2, DIM + 1)) for _ in records]
    with pytest.raises(ValueError, match=r"featurize gave shape \[2, 4\] for decision 'd'"):
        learner.poll_once()
    assert learner.state.watermark == 0 and learner.snapshot().version == 0
    learner.featurize = LoggedFeatures(DIM).featurize
    assert learner.poll_once() == 1


def test_logged_features_read_each_slot():
    x = np.arange(2 * DIM, dtype=float).reshape(2, DIM)
    rec = record("d", 0.0, ["0", "1"], x)
    (got,) = LoggedFeatures(DIM).featurize([rec])
    np.testing.assert_array_equal(got, x)
    (short,) = LoggedFeatures(DIM + 1).featurize([rec])
    assert short is None
    (shifted,) = LoggedFeatures(2, offset=2).featurize([rec])
    np.testing.assert_array_equal(shifted, [[2.0, 3.0], [4.0, 5.0]])


# -------------------------------------------------------------------------- client


def test_client_picks_up_new_versions_in_the_background(tmp_path, log):
    config = learner_config(tmp_path, state_dir="")
    clock = Clock(time.time())
    learner = OnlineLearner(config, None, clock=clock)
    client = LearnerClient(learner.snapshot_if_changed, refresh_s=0.05)
    client.start()
    try:
        assert client.snapshot().version == 0
        log.append(record("d", clock.now - 50, ["3", "1"], np.zeros((2, DIM))))
        learner.poll_once()
        published = time.monotonic()
        deadline = published + 2.0
        while client.snapshot().version != 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert client.snapshot().version == 1
        # Seen within one refresh interval plus two (in-process) fetches.
        assert time.monotonic() - published < 0.05 + 1.0
        assert client.snapshot().arm_counts()[1].tolist() == [0, 1, 0, 1, 0, 0]
        assert client.staleness_s() < 1.0
        assert client.refresh() is False  # nothing newer
    finally:
        client.close()
    # A restarted learner (new epoch) at the same version number is still fetched.
    restarted = OnlineLearner(config, None, clock=clock)
    restarted.poll_once()
    assert restarted.snapshot().version == client.snapshot().version == 1
    reattached = LearnerClient(restarted.snapshot_if_changed, 0.05, initial=client.snapshot())
    assert reattached.refresh() is True
    assert reattached.snapshot().epoch == restarted.epoch
