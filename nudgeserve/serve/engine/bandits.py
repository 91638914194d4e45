"""What the online learner needs from the served use cases, and what replicas hold of it.

A use case whose policies (its own, an experiment variant's or a holdout's) include
``thompson`` or ``linear`` gets one learner (``learner_config``): it reads the decision
log and keeps per-arm reward counts and the linear bandit, per experiment arm
(``learner_state.policy_key``). Every replica serving the use case holds a
``BanditFeed`` and hands the latest snapshot to its engine before each batch; the
request path never waits for the learner (staleness bound:
``nudgeserve.serve.engine.learning``). The learner actor and the connection to it are
``nudgeserve.serve.ray.learner``.

The linear bandit's features of a logged decision are recomputed inside the learner by
``ReplayBanditFeatures`` from what the log holds (the replay vector and the chosen
actions' scores) with the model that decided, so they equal the features the policy saw
when it chose. Decisions made by another checkpoint are learned from for the arm counts
only (the learner's ``feature_space`` is the checkpoint's id).

No HTTP, no Ray here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from nudgeserve.serve.config import LinearBanditPolicy, ObdUseCase, ServeConfig, Thompson, UseCase
from nudgeserve.serve.engine.describe import describe
from nudgeserve.serve.engine.learner_state import LearnerConfig
from nudgeserve.serve.engine.obd import ObdEngine

logger = logging.getLogger("ray.serve")


def needs_learner(config: ServeConfig, settings: UseCase) -> bool:
    """Whether any policy of ``settings`` learns (``thompson`` or ``linear``)."""
    return any(
        isinstance(p, Thompson | LinearBanditPolicy) for p in config.policies_for(settings.name)
    )


def learner_config(config: ServeConfig, settings: UseCase) -> LearnerConfig | None:
    """The ``LearnerConfig`` of ``settings``' learner (None when it needs none).

    Paths are made absolute: the learner actor may run in another working directory.
    """
    if not needs_learner(config, settings):
        return None
    info = describe(settings)
    linear = any(isinstance(p, LinearBanditPolicy) for p in config.policies_for(settings.name))
    dim = info.bandit_dim if linear else 0
    prior = (1.0,) + (0.0,) * (dim - 1) if dim else ()
    state_dir = os.path.abspath(config.state_dir)
    learning = settings.learning
    return LearnerConfig(
        use_case=settings.name,
        decision_log=os.path.abspath(config.decision_log.log_config(state_dir).path),
        catalog=tuple(str(x) for x in info.catalog),
        reward_kind=learning.reward,
        reward_delay_s=learning.reward_delay_s,
        poll_interval_s=learning.poll_interval_s,
        refresh_s=learning.refresh_s,
        linear_dim=dim,
        linear_ridge=learning.ridge,
        linear_prior_mean=prior,
        feature_space=info.checkpoint_id,
        state_dir=os.path.join(state_dir, "learner"),
        persist_every_s=learning.persist_every_s,
    )


def featurizer_for(settings: UseCase) -> Any:
    """The picklable factory the learner builds its ``featurize`` with (None: the use case
    has no linear bandit features)."""
    return ReplayBanditFeatures(settings) if isinstance(settings, ObdUseCase) else None


class ReplayBanditFeatures:
    """The linear bandit's features of logged OBD decisions, replayed through the model.

    A zero-argument factory (what ``ray.learner.connect_client`` takes as
    ``featurizer``): the learner calls it once, in its own process, which loads the use
    case's checkpoint on the CPU; ``featurize(records)`` then gives, per
    ``DecisionRecord``, float64[K, d]: slot s's ``[score_s, u * v_s]``
    (``ObdEngine.bandit_features``), or None for a decision of another use case or
    checkpoint (its features live in another space).
    """

    def __init__(self, settings: ObdUseCase) -> None:
        self.settings = settings
        self.engine: ObdEngine | None = None

    def __call__(self) -> ReplayBanditFeatures:
        engine = ObdEngine(self.settings)
        engine.load(device="cpu", warm=False)
        self.engine = engine
        return self

    def featurize(self, records: list[Any]) -> list[np.ndarray | None]:
        engine = self.engine
        if engine is None:
            raise RuntimeError("ReplayBanditFeatures was not built: call it first")
        info = engine.info
        n_fields, n_items = info.n_user_fields, engine.n_items
        index = {str(x): j for j, x in enumerate(info.catalog)}
        out: list[np.ndarray | None] = [None] * len(records)
        usable = [
            i
            for i, r in enumerate(records)
            if r.use_case == info.name
            and r.model_checkpoint == info.checkpoint_id
            and len(r.features) >= n_fields + n_items
        ]
        if not usable:
            return out
        buckets = np.asarray(
            [records[i].features[:n_fields] for i in usable], dtype=np.float64
        ).astype(np.int64)
        for row, i in enumerate(usable):
            record = records[i]
            k = len(record.actions)
            tail = np.asarray(record.features[n_fields + n_items :], np.float32).reshape(-1, 4)
            inline_ids = [c for c in record.candidates if c not in index]
            table = None
            if len(tail):
                if len(tail) != len(inline_ids):
                    continue  # the record does not carry its inline items' features
                table = engine._inline.logged_table(tail)
            columns = []
            for action in record.actions:
                j = index.get(action)
                columns.append(j if j is not None else n_items + inline_ids.index(action))
            scores = np.full((1, n_items + len(inline_ids)), np.nan, dtype=np.float32)
            scores[0, columns] = np.asarray(record.scores, dtype=np.float32)
            x = engine.bandit_features(buckets[row : row + 1], scores, inline_tables=[table])
            out[i] = x[0, columns].reshape(k, -1)
        return out


class BanditFeed:
    """A replica's connection to its use case's learner (or none).

    ``snapshot()`` is the latest ``BanditSnapshot`` (None without a learner): a reference
    read, no remote call. ``close()`` stops the background refresh.
    """

    def __init__(self, client: Any = None) -> None:
        self.client = client

    def snapshot(self) -> Any:
        return None if self.client is None else self.client.snapshot()

    def staleness_s(self) -> float:
        return 0.0 if self.client is None else self.client.staleness_s()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
