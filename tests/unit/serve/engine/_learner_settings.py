"""The learner settings the engine's learner tests share: a small catalog and a linear
bandit of dimension ``DIM``."""

from __future__ import annotations

from nudgeserve.serve.engine.learner_state import LearnerConfig

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
