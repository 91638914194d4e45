"""The learner without Ray: ``BanditState`` against its closed form, reading a real
decision log (reward windows, watermark, orphans), persistence and restarts, and the
client's background refresh."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nudgeserve.models.policies.linear_bandit import LinearBandit
from nudgeserve.serve.decisions import DecisionLog, DecisionRecord, FeedbackEvent
from nudgeserve.serve.ray.learner import (
    ALL,
    BanditState,
    LearnerClient,
    LearnerConfig,
    LearnerConfigError,
    LoggedFeatures,
    OnlineLearner,
    Trial,
    load_state,
    policy_key,
    save_state,
)

CATALOG = tuple(str(i) for i in range(6))
DIM = 3


def learner_config(tmp_path, **overrides) -> LearnerConfig:
    settings = dict(
        use_case="obd",
        decision_log=str(tmp_path / "decisions.db"),
        catalog=CATALOG,
        reward_kind="click",
        reward_delay_s=30.0,
        linear_dim=DIM,
        linear_ridge=0.5,
        linear_prior_mean=(1.0, 0.0, 0.0),
        feature_space="ckpt-a",
        state_dir=str(tmp_path / "learner"),
    )
    settings.update(overrides)
    return LearnerConfig(**settings)


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


# ------------------------------------------------------------------------ BanditState


def random_trials(rng, n, n_arms=6, keys=("", "e/a", "e/b")):
    return [
        Trial(
            str(rng.choice(keys)),
            int(rng.integers(-1, n_arms)),
            float(rng.integers(0, 2)),
            rng.normal(size=DIM),
        )
        for _ in range(n)
    ]


def expected_state(trials, n_arms=6, ridge=0.5, prior=(1.0, 0.0, 0.0)):
    """Closed form per key: Bernoulli counts and the ridge solution."""
    out = {}
    for key in {t.key for t in trials} | {ALL}:
        mine = [t for t in trials if key in (ALL, t.key)]
        arms = np.array([t.arm for t in mine])
        won = np.array([t.reward > 0 for t in mine])
        succ = np.bincount(arms[(arms >= 0) & won], minlength=n_arms)
        fail = np.bincount(arms[(arms >= 0) & ~won], minlength=n_arms)
        x = np.stack([t.x for t in mine])
        r = np.array([t.reward for t in mine])
        a = ridge * np.eye(DIM) + x.T @ x
        theta = np.linalg.solve(a, ridge * np.asarray(prior) + x.T @ r)
        out[key] = (succ, fail, theta, len(mine))
    return out


def test_state_matches_closed_form_and_replayed_batches_are_ignored():
    rng = np.random.default_rng(1)
    state = BanditState(6, linear_dim=DIM, linear_ridge=0.5, linear_prior_mean=[1.0, 0.0, 0.0])
    first, second = random_trials(rng, 40), random_trials(rng, 25)
    assert state.update(first, through=7, through_id="d7", now=1.0)
    assert state.update(second, through=12, through_id="d12", now=2.0)
    before = state.snapshot()
    # The same batches again (a retried poll, a replay after restart): no change.
    assert not state.update(second, through=12, through_id="d12")
    assert not state.update(first, through=7, through_id="d7")
    after = state.snapshot()
    assert (state.version, state.watermark, state.watermark_id) == (2, 12, "d12")
    for key, (succ, fail, theta, n) in expected_state(first + second).items():
        for snap in (before, after):
            np.testing.assert_array_equal(snap.arm_counts(key)[0], succ)
            np.testing.assert_array_equal(snap.arm_counts(key)[1], fail)
            np.testing.assert_allclose(snap.linear_bandit(key).theta, theta, rtol=1e-9)
            assert snap.n_trials(key) == n
    # Unknown keys read as "nothing learned": zero counts and the prior bandit.
    s, f = after.arm_counts("other/x")
    assert not s.any() and not f.any() and s.shape == (6,)
    np.testing.assert_array_equal(after.linear_bandit("other/x").theta, [1.0, 0.0, 0.0])


def test_bad_trials_change_nothing():
    state = BanditState(4, linear_dim=2)
    good = Trial("", 1, 1.0, np.ones(2))
    with pytest.raises(ValueError, match=r"trials\[1\].arm = 4 is outside \[-1, 4\)"):
        state.update([good, Trial("", 4, 1.0)], through=3, through_id="d3")
    with pytest.raises(ValueError, match=r"trials\[0\].reward must be finite"):
        state.update([Trial("", 1, float("nan"))], through=3, through_id="d3")
    with pytest.raises(ValueError, match=r"trials\[1\].x must be 2 finite numbers"):
        state.update([good, Trial("", 1, 1.0, np.ones(3))], through=3, through_id="d3")
    with pytest.raises(TypeError, match=r"trials\[0\] must be a Trial"):
        state.update([("", 1, 1.0)], through=3, through_id="d3")
    assert (state.version, state.watermark, state.trials) == (0, 0, {})
    # A batch with no trials of this use case still moves the watermark, not the version.
    assert state.update([], through=5, through_id="d5")
    assert (state.version, state.watermark) == (0, 5)


def test_snapshots_are_frozen_copies():
    state = BanditState(3, linear_dim=2)
    state.update([Trial("", 0, 1.0, np.ones(2))], through=1, through_id="d1")
    snap = state.snapshot("obd", "space", "epoch")
    state.update([Trial("", 0, 1.0, np.ones(2))] * 3, through=2, through_id="d2")
    assert snap.arm_counts()[0].tolist() == [1, 0, 0]
    assert snap.linear_bandit().n_updates == 1
    assert state.snapshot().arm_counts()[0].tolist() == [4, 0, 0]
    with pytest.raises(ValueError):
        snap.arm_counts()[0][0] = 9.0


def test_saved_state_round_trips_and_other_settings_are_discarded(tmp_path):
    config = learner_config(tmp_path)
    rng = np.random.default_rng(4)
    state = BanditState.from_config(config)
    trials = random_trials(rng, 30)
    state.update(trials, through=9, through_id="d9", now=5.0)
    path = config.state_path
    save_state(state, config, path)
    loaded = load_state(config, path)
    a, b = state.snapshot(), loaded.snapshot()
    assert (loaded.watermark, loaded.watermark_id, loaded.version) == (9, "d9", 1)
    assert a.trials == b.trials and a.keys() == b.keys()
    for key in a.keys():
        for x, y in zip(a.arm_counts(key), b.arm_counts(key), strict=True):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a.linear_bandit(key).A_inv, b.linear_bandit(key).A_inv)
        np.testing.assert_array_equal(a.linear_bandit(key).theta, b.linear_bandit(key).theta)

    other = learner_config(tmp_path, feature_space="ckpt-b", reward_kind="conversion")
    assert load_state(other, path) is None
    assert not path.exists()
    (aside,) = path.parent.glob("*.discarded-*")
    aside.write_bytes(b"not a safetensors file")
    aside.rename(path)
    assert load_state(config, path) is None  # unreadable: moved aside too
    assert not path.exists()


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


# -------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"catalog": ()}, r"learner.catalog = \(\) is invalid: must list at least one arm id"),
        ({"catalog": ("1", "1")}, "learner.catalog .* arm ids must be unique"),
        ({"catalog": (1, 2)}, "learner.catalog .* arm ids must be strings"),
        ({"reward_delay_s": -1.0}, "learner.reward_delay_s = -1.0 is invalid: must be >= 0"),
        ({"refresh_s": 0.0}, "learner.refresh_s = 0.0 is invalid: must be > 0"),
        ({"poll_interval_s": float("inf")}, "learner.poll_interval_s .* finite"),
        ({"linear_dim": 300}, r"learner.linear_dim = 300 is invalid: must be an integer in"),
        ({"linear_prior_mean": (1.0,)}, "learner.linear_prior_mean .* 3 finite numbers"),
        ({"use_case": ""}, "learner.use_case = '' is invalid: must be a non-empty string"),
    ],
)
def test_bad_settings_are_named(tmp_path, change, message):
    with pytest.raises(LearnerConfigError, match=message):
        learner_config(tmp_path, **change)
    assert issubclass(LearnerConfigError, ValueError)
