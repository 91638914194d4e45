"""The learner's state without I/O on the log: ``BanditState`` against its closed form,
snapshots, the saved-state file, and the settings' checks."""

from __future__ import annotations

import numpy as np
import pytest

from nudgeserve.serve.engine.learner_state import (
    ALL,
    BanditState,
    LearnerConfigError,
    Trial,
    load_state,
    save_state,
)

from ._learner_settings import DIM, learner_config

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
