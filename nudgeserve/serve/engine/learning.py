"""Online learning from the decision log, without Ray: ``OnlineLearner`` follows the log
and keeps one use case's ``BanditState``; ``LearnerClient`` is a replica's view of it.

``nudgeserve.serve.ray.learner`` runs one ``OnlineLearner`` per use case in a detached
actor and connects each replica's ``LearnerClient`` to it over Ray; tests run both in one
process. What a replica reads from a snapshot::

    snap = client.snapshot()  # no remote call, no lock: a reference read
    successes, failures = snap.arm_counts(policy_key(experiment, variant))  # float64[n_arms]
    bandit = snap.linear_bandit(policy_key(experiment, variant))  # LinearBandit or None

Feedback needs **no call**: the learner reads the decision log itself (below). Decisions
are learned from once their reward window closes; nothing else has to be wired.

- ``arm_counts(key)``: per catalog arm, how many shown slots got a positive
  ``reward_kind`` outcome (successes) and how many did not (failures). Add the policy's
  Beta prior: ``alpha = prior_alpha + successes``, ``beta = prior_beta + failures`` for
  ``nudgeserve.kernels.thompson_bernoulli_slate``. ``arm_counts()`` (no key, or
  ``ALL``) pools every variant's decisions of the use case.
- ``linear_bandit(key)``: a ``nudgeserve.models.policies.linear_bandit.LinearBandit``
  (treat it as read-only; it is shared by the requests that use this snapshot) for
  ``linucb_slate`` / ``thompson_slate``, or None when ``linear_dim`` is 0. Keys with no
  data yet get the prior. It was learned on features of ``snap.feature_space``: a
  replica whose model differs must not use it (``snap.linear_prior`` instead) until the
  learner is restarted with the new feature space (then it relearns from the whole log,
  see "Persistence").
- ``policy_key(experiment, variant)``: ``""`` for decisions outside experiments, else
  ``"experiment/variant"``: every experiment arm learns only from its own traffic, so arms
  stay comparable; ``ALL`` (``"*"``) pools them.
- ``featurizer``: a picklable zero-argument factory, called once where the learner runs,
  that returns ``featurize(records) -> list[float64[K, d] | None]``: for each
  ``DecisionRecord``, the linear bandit's features of its K chosen actions by slot (None
  when it cannot say: that decision then only updates the arm counts). The server builds
  it from its model (e.g. replaying the record's ``features`` through the model that
  decided); ``LoggedFeatures(dim)`` reads them from the record's ``features`` where a
  server logs them there. Without a featurizer the linear bandit stays at its prior.

How feedback reaches the learner: the decision log is the source
---------------------------------------------------------------------
The learner polls the decision log (``decisions.LogFollower``) every ``poll_interval_s``
and takes, in commit (rowid) order, every decision whose time is at least
``reward_delay_s`` old (its *reward window* has closed), together with the feedback
joined to it by then. Each shown slot becomes one trial: reward = the sum of that
decision's joined ``reward_kind`` values for the slot's action, plus those for the
decision as a whole (``action`` None); a Bernoulli success when the reward is > 0.

Why this design and not a push from the feedback endpoint:

- **Nothing lost.** Non-clicks are never sent as feedback; only the log knows that a
  shown slot got no click, so the failures of the Beta posteriors and the zero rewards of
  the regression must come from the decisions anyway. Orphaned feedback that is joined
  later (when its decision is written) is included, and a replica that dies between
  committing feedback and telling anyone loses nothing: the learner reads what was
  committed.
- **Nothing counted twice.** The watermark is the last log rowid applied. SQLite assigns
  rowids under the single write lock in commit order and the log never deletes
  decisions, so rowid order is commit order: once rowid ``w`` is visible, every smaller
  rowid is too, and ``rowid > w`` is exactly the set not yet applied. Each batch is
  applied together with its new watermark (``BanditState.update`` refuses a watermark
  that is not ahead of its own: replaying a batch is a no-op), and the watermark is
  persisted in the same file as the state, so a restart continues exactly where the
  saved state ends: what came after it is replayed from the log once.

The price is the reward window: feedback joined more than ``reward_delay_s`` after its
decision's time is stored and exported by the log but does not reach the bandits (a
decision's trials are final once applied). Choose ``reward_delay_s`` as the attribution
window of the reward (clicks: a minute is typical; Azure Personalizer calls the same
setting its "reward wait time").

Staleness bound
---------------
Let a decision be made at time ``t`` and committed to the log by ``t + c`` (``c``: the
decision log's group-commit latency, milliseconds). Then

1. **learner**: it is in the learner's state (a new snapshot version) by
   ``t + c + reward_delay_s + poll_interval_s + 2 P``, ``P`` being the time one poll takes
   (reading, featurizing and applying a batch: about 30 ms per 1,000 decisions). It is
   eligible once its own window has closed and every decision committed before it is
   eligible too (those have times before ``t + c``, so by ``t + c + reward_delay_s``);
   polls start ``poll_interval_s`` after the previous one ended, so the next one starts
   within ``poll_interval_s + P`` and applies it within ``P`` more;
2. **replicas**: every connected replica serves from that version or a newer one at most
   ``refresh_s + 2 F`` later, ``F`` being one fetch round trip (about a millisecond on one
   node; at most ``fetch_timeout_s``). Each replica's background thread starts a fetch
   ``refresh_s`` after the previous one ended, so a version published just after a fetch
   started is picked up by the next fetch, which starts within ``refresh_s + F`` and ends
   within ``F`` more.

So the staleness of what a replica serves, against the learner, is at most
``refresh_s + 2 F`` (one refresh interval), and against the feedback,
``c + reward_delay_s + poll_interval_s + 2 P + refresh_s + 2 F`` (with the defaults
60 + 1 + 1 s plus milliseconds; measured on one node in ``tests/integration/
test_learner.py``: published 1.09 s after the decisions with reward_delay_s = 1 and
poll_interval_s = 0.1, seen by both replicas 0.18 s later with refresh_s = 0.25). Two
replicas therefore never differ by more than the versions published in one such
interval. The request path never waits for the learner: it reads the last snapshot.
While the learner is unreachable (restarting) replicas keep serving their last
snapshot; ``LearnerClient.staleness_s()`` says how old it is (export it as a metric) and
the bound resumes once fetches succeed.

Persistence
-----------
The state is written to ``<state_dir>/<use_case>.safetensors`` (the arrays, with the
watermark and settings as JSON in the header; written to a temporary file and renamed, so
a crash never leaves half a file) every ``persist_every_s``, and on ``OnlineLearner.stop``;
it is loaded at start. It is a cache: the decision log can always rebuild it. A saved
state is discarded (and the log replayed from the start) when it was learned under other
settings (catalog, reward kind, linear settings, feature space: the warning names them)
or from another log (the decision at its watermark is not the one it recorded).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudgeserve.serve.decisions import DecisionRecord, LogBatch, LogFollower
from nudgeserve.serve.engine.learner_state import (
    ALL,
    BanditSnapshot,
    BanditState,
    LearnerConfig,
    LearnerUnavailable,
    Trial,
    load_state,
    policy_key,
    save_state,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Featurize",
    "LearnerClient",
    "LoggedFeatures",
    "OnlineLearner",
    "build_featurize",
]

Featurize = Callable[[Sequence[DecisionRecord]], Sequence[np.ndarray | None]]


# --------------------------------------------------------------------------- features


class LoggedFeatures:
    """A ``featurize`` for servers that log the linear bandit's features in the record:
    slot s's features are ``record.features[offset + s d : offset + (s + 1) d]``.

    A record whose ``features`` is too short gives None (arm counts only).
    """

    def __init__(self, dim: int, offset: int = 0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        self.dim, self.offset = dim, offset

    def __call__(self) -> LoggedFeatures:
        return self  # the factory is the function: one object to pass as ``featurizer``

    def featurize(self, records: Sequence[DecisionRecord]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for record in records:
            k = len(record.actions)
            need = self.offset + k * self.dim
            if len(record.features) < need:
                out.append(None)
                continue
            x = np.asarray(record.features[self.offset : need], dtype=np.float64)
            out.append(x.reshape(k, self.dim))
        return out


def build_featurize(featurizer: Any) -> Featurize | None:
    """Call the ``featurizer`` factory (module docstring) where the learner runs and
    return its ``featurize`` (None without a featurizer)."""
    if featurizer is None:
        return None
    made = featurizer()
    fn = getattr(made, "featurize", made)
    if not callable(fn):
        raise TypeError(f"featurizer() must return a callable, got {type(made).__name__}")
    return fn


# ------------------------------------------------------------------------------ learner


class OnlineLearner:
    """The learner: follows the log, updates a ``BanditState``, publishes snapshots,
    saves the state. ``serve.ray.learner.BanditLearner`` (the actor) runs one of these.

    featurize: see the module docstring (None: the linear bandit stays at its prior);
    clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        config: LearnerConfig,
        featurize: Featurize | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(config, LearnerConfig):
            raise TypeError(f"config must be a LearnerConfig, got {type(config).__name__}")
        self.config = config
        self.featurize = featurize
        self.clock = clock
        self.arm_index = {arm: i for i, arm in enumerate(config.catalog)}
        self.follower = LogFollower(config.decision_log, config.use_case, config.reward_kind)
        path = config.state_path
        loaded = load_state(config, path) if path is not None else None
        self.state = loaded or BanditState.from_config(config)
        # A loaded state is checked against the log before it is trusted (see _verify).
        self._verified = self.state.watermark == 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_persist = self.clock()
        self._persisted = (self.state.watermark, self.state.version) if loaded else None
        self.epoch = os.urandom(8).hex()
        self.polls = 0
        self.errors = 0
        self.last_error = ""
        self.decisions_applied = 0
        self._publish()

    def _publish(self) -> None:
        # One reference swap: readers (other threads) see the old or the new snapshot.
        self._snapshot = self.state.snapshot(
            self.config.use_case, self.config.feature_space, self.epoch
        )

    def snapshot(self) -> BanditSnapshot:
        """The latest published snapshot."""
        return self._snapshot

    def snapshot_if_changed(self, epoch: str, version: int) -> BanditSnapshot | None:
        """The latest snapshot, or None when it is ``(epoch, version)`` (the caller has it)."""
        snap = self._snapshot
        return None if (snap.epoch, snap.version) == (epoch, version) else snap

    def _verify(self) -> bool:
        """Whether the log holds, at the saved watermark, the decision the saved state
        recorded there; on a mismatch the state is reset and relearned from the log."""
        if self._verified:
            return True
        found = self.follower.decision_id_at(self.state.watermark)
        if found is None and not self.follower.log_exists():
            return False  # no log yet: wait for it before deciding
        if found != self.state.watermark_id:
            logger.warning(
                "learner %s: the saved state ends at decision %r (rowid %d) but the log has "
                "%r there: it is another log; relearning from the start",
                self.config.use_case,
                self.state.watermark_id,
                self.state.watermark,
                found,
            )
            self.state = BanditState.from_config(self.config)
            self._publish()
        self._verified = True
        return True

    def poll_once(self) -> int:
        """Apply every decision whose reward window has closed; returns the decisions of
        this use case applied. Errors propagate, with nothing applied from the failing
        batch (it is read again next time)."""
        with self._lock:
            self.polls += 1
            if not self._verify():
                return 0
            applied = 0
            while True:
                cutoff = self.clock() - self.config.reward_delay_s
                batch = self.follower.read(self.state.watermark, cutoff, self.config.max_batch)
                if batch.scanned == 0:
                    break
                trials = self._trials(batch)
                self.state.update(trials, batch.through, batch.through_id, now=self.clock())
                applied += len(batch.records)
                if batch.scanned < self.config.max_batch:
                    break
            if applied:
                self.decisions_applied += applied
                self._publish()
            return applied

    def _trials(self, batch: LogBatch) -> list[Trial]:
        xs: Sequence[np.ndarray | None] = [None] * len(batch.records)
        if self.featurize is not None and self.config.linear_dim and batch.records:
            xs = self.featurize(batch.records)
            if len(xs) != len(batch.records):
                raise ValueError(
                    f"featurize returned {len(xs)} results for {len(batch.records)} records"
                )
        trials = []
        for record, reward, x in zip(batch.records, batch.rewards, xs, strict=True):
            key = policy_key(record.experiment, record.variant)
            k = len(record.actions)
            if x is not None:
                x = np.asarray(x, dtype=np.float64)
                if x.shape != (k, self.config.linear_dim):
                    raise ValueError(
                        f"featurize gave shape {list(x.shape)} for decision "
                        f"{record.decision_id!r}; expected [{k}, {self.config.linear_dim}]"
                    )
            for s, action in enumerate(record.actions):
                arm = self.arm_index.get(action, -1)
                trials.append(Trial(key, arm, float(reward[s]), None if x is None else x[s]))
        return trials

    def persist(self) -> Path | None:
        """Save the state now unless the saved file already holds it (no-op without
        ``state_dir``); returns the path."""
        path = self.config.state_path
        if path is None:
            return None
        with self._lock:
            current = (self.state.watermark, self.state.version)
            if current != self._persisted or not path.exists():
                save_state(self.state, self.config, path)
                self._persisted = current
            self._last_persist = self.clock()
        return path

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and for humans."""
        snap = self._snapshot
        return {
            "use_case": self.config.use_case,
            "version": snap.version,
            "watermark": self.state.watermark,
            "decisions_applied": self.decisions_applied,
            "trials": snap.n_trials(ALL),
            "polls": self.polls,
            "errors": self.errors,
            "last_error": self.last_error,
            "updated_at": snap.updated_at,
        }

    # -- background loop --------------------------------------------------------------

    def start(self) -> None:
        """Poll (and periodically persist) in a daemon thread until ``stop``."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"learner-{self.config.use_case}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.poll_once()
                if (
                    self.config.state_path is not None
                    and self.clock() - self._last_persist >= self.config.persist_every_s
                ):
                    self.persist()
            except Exception as exc:  # keep learning after a transient failure
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("learner %s: poll failed", self.config.use_case)
            if self._stop.wait(self.config.poll_interval_s):
                return

    def stop(self, persist: bool = True) -> None:
        """Stop the loop (waits for a running poll) and save the state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if persist:
            self.persist()
        self.follower.close()


# ------------------------------------------------------------------------------- client


class LearnerClient:
    """A replica's view of the learner: the latest snapshot, refreshed in the background.

    fetch: ``fetch(epoch, version) -> BanditSnapshot | None`` (None: the held snapshot is
    still the latest); ``serve.ray.learner.connect_client`` fetches from the actor,
    tests may pass ``OnlineLearner.snapshot_if_changed``.
    refresh_s: pause between the end of one fetch and the start of the next.
    initial: the first snapshot (else one fetch is made before returning).
    """

    def __init__(
        self,
        fetch: Callable[[str, int], BanditSnapshot | None],
        refresh_s: float,
        initial: BanditSnapshot | None = None,
    ) -> None:
        if not (isinstance(refresh_s, (int, float)) and refresh_s > 0):
            raise ValueError(f"refresh_s must be > 0, got {refresh_s!r}")
        self._fetch = fetch
        self.refresh_s = float(refresh_s)
        self.fetches = 0
        self.failures = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if initial is None:
            started = time.monotonic()
            initial = fetch("", -1)
            if initial is None:
                raise LearnerUnavailable("the learner returned no snapshot")
        else:
            started = time.monotonic()
        self._snapshot = initial
        self._fetched_at = started

    def snapshot(self) -> BanditSnapshot:
        """The latest snapshot held (no remote call)."""
        return self._snapshot

    def staleness_s(self) -> float:
        """Seconds since the start of the last successful fetch: the held snapshot was
        the learner's latest at that moment or later."""
        return time.monotonic() - self._fetched_at

    def refresh(self) -> bool:
        """One fetch now; True when a newer snapshot arrived. Errors propagate."""
        started = time.monotonic()
        held = self._snapshot
        newer = self._fetch(held.epoch, held.version)
        self.fetches += 1
        self._fetched_at = started
        if newer is not None:
            self._snapshot = newer
            return True
        return False

    def start(self) -> None:
        """Refresh every ``refresh_s`` in a daemon thread (never on the request path)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="learner-client", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except Exception as exc:  # the learner restarting: keep the last snapshot
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("learner snapshot fetch failed: %s", self.last_error)

    def close(self) -> None:
        """Stop the background refresh (the snapshot stays readable)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
