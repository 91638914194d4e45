"""The learner actor: one ``BanditLearner`` per use case owns the bandit state; replicas
serve from snapshots of it.

What the learning does (reading the decision log, reward windows, the staleness bound,
persistence) is ``nudgeserve.serve.engine.learning``; this module runs it in a Ray actor
and connects replicas to it.

What the server calls
---------------------
::

    from nudgeserve.serve.ray.learner import connect_learner, stop_learners

    # Every replica of a use case with bandit policies, at start (the first one creates
    # the actor, the others attach to it; blocks until the actor answers):
    feed = connect_learner(config, settings)  # a BanditFeed; empty outside Ray
    # On the request path (no remote call, no lock: a reference read):
    snap = feed.snapshot()
    # Replica shutdown:           feed.close()
    # Application shutdown:       stop_learners(config)   (persist, then end the actors)

Below those, for one ``LearnerConfig``::

    client = connect_client(learner_config, featurizer=make_featurize)  # LearnerClient
    stop_learner(learner_config)

Placement: the actor is named ``nudgeserve-learner-<use case>`` in the Ray namespace
``LearnerConfig.namespace``, detached (it outlives the replica that created it;
``stop_learner`` ends it), restarted by Ray if its process dies (it reloads the saved
state and replays the rest of the log), and pinned to the node of the replica that
created it, because the decision log is a local SQLite file. A cluster whose replicas
write logs on several nodes needs one learner per log file; this module does not merge
them.
"""

from __future__ import annotations

from typing import Any

import ray

from nudgeserve.serve.config import ServeConfig, UseCase
from nudgeserve.serve.engine.bandits import BanditFeed, featurizer_for, learner_config
from nudgeserve.serve.engine.learner_state import (
    BanditSnapshot,
    LearnerConfig,
    LearnerConfigMismatch,
    LearnerUnavailable,
)
from nudgeserve.serve.engine.learning import LearnerClient, OnlineLearner, build_featurize
from nudgeserve.serve.ray._actors import get_or_create_actor, stop_actor

__all__ = [
    "BanditLearner",
    "connect_client",
    "connect_learner",
    "get_or_create_learner",
    "stop_learner",
    "stop_learners",
]


class BanditLearner:
    """The Ray actor: one ``OnlineLearner`` polling in a background thread.

    Create it with ``get_or_create_learner`` (or ``connect_client``), not directly.
    Its methods run in a small thread pool (``max_concurrency``), so a snapshot fetch
    never waits for a poll.
    """

    def __init__(self, config: LearnerConfig, featurizer: Any = None) -> None:
        self._learner = OnlineLearner(config, build_featurize(featurizer))
        self._learner.start()

    def config(self) -> LearnerConfig:
        return self._learner.config

    def snapshot_if_changed(self, epoch: str, version: int) -> BanditSnapshot | None:
        return self._learner.snapshot_if_changed(epoch, version)

    def poll_now(self) -> int:
        """Poll once now (beside the background loop); returns the snapshot version."""
        self._learner.poll_once()
        return self._learner.snapshot().version

    def persist(self) -> str | None:
        path = self._learner.persist()
        return None if path is None else str(path)

    def stats(self) -> dict[str, Any]:
        return self._learner.stats()

    def shutdown(self) -> None:
        """Stop polling and save the state (``stop_learner`` then ends the process)."""
        self._learner.stop(persist=True)


def get_or_create_learner(config: LearnerConfig, featurizer: Any = None) -> Any:
    """The use case's learner actor handle, created if it does not run yet.

    Ray must be initialised (a replica, or a driver after ``ray.init``). Concurrent calls
    from several replicas get the same actor.
    """
    return get_or_create_actor(
        BanditLearner,
        config.actor_name,
        config,
        featurizer,
        namespace=config.namespace,
        max_concurrency=4,
        pin_to_node=True,
    )


def stop_learner(config: LearnerConfig, timeout_s: float = 60.0) -> bool:
    """Save the learner's state and end its actor; False when none was running."""
    return stop_actor(
        config.actor_name,
        namespace=config.namespace,
        shutdown_method="shutdown",
        timeout_s=timeout_s,
    )


def connect_client(
    config: LearnerConfig,
    featurizer: Any = None,
    *,
    timeout_s: float = 60.0,
    start: bool = True,
) -> LearnerClient:
    """Attach to (or create) the use case's learner, fetch its snapshot and start the
    client's background refresh (unless ``start`` is False). Raises
    ``LearnerConfigMismatch`` when the running learner has other settings,
    ``LearnerUnavailable`` when it does not answer in ``timeout_s``."""
    actor = get_or_create_learner(config, featurizer)
    try:
        running = ray.get(actor.config.remote(), timeout=timeout_s)
        first = ray.get(actor.snapshot_if_changed.remote("", -1), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise LearnerUnavailable(
            f"learner {config.actor_name} did not answer within {timeout_s:g} s"
        ) from None
    if running != config:
        differ = [f for f in config.__struct_fields__ if getattr(running, f) != getattr(config, f)]
        raise LearnerConfigMismatch(
            f"learner {config.actor_name} already runs with other settings ("
            + ", ".join(differ)
            + "); stop it first (nudgeserve.serve.ray.learner.stop_learner)"
        )
    timeout = config.fetch_timeout_s

    def fetch(epoch: str, version: int) -> BanditSnapshot | None:
        return ray.get(actor.snapshot_if_changed.remote(epoch, version), timeout=timeout)

    client = LearnerClient(fetch, config.refresh_s, initial=first)
    if start:
        client.start()
    return client


def connect_learner(config: ServeConfig, settings: UseCase) -> BanditFeed:
    """Attach this replica to the use case's learner, creating the actor if needed
    (inside Ray only; outside it, and for use cases without bandit policies, an empty
    feed: the bandit policies then decide from their priors)."""
    learner = learner_config(config, settings)
    if learner is None or not ray.is_initialized():
        return BanditFeed()
    return BanditFeed(connect_client(learner, featurizer=featurizer_for(settings)))


def stop_learners(config: ServeConfig) -> list[str]:
    """Save and end every learner of ``config`` (application shutdown); returns the use
    cases whose learner was running."""
    stopped = []
    for settings in config.use_cases:
        learner = learner_config(config, settings)
        if learner is not None and stop_learner(learner):
            stopped.append(settings.name)
    return stopped
