"""Online learning: one ``BanditLearner`` actor per use case owns the bandit state; replicas
serve from snapshots of it.

What the server calls
---------------------
::

    from nudgeserve.serve.ray.learner import LearnerClient, LearnerConfig, policy_key, stop_learner

    config = LearnerConfig(
        use_case="obd",
        decision_log="<state_dir>/decisions.sqlite",  # DecisionLogConfig.path, same file
        catalog=tuple(str(i) for i in range(80)),      # arm ids, as the log records actions
        reward_kind="click",
        linear_dim=9, linear_prior_mean=(1.0,) + (0.0,) * 8,  # optional linear bandit
        feature_space=info.checkpoint_id,                 # what the features depend on
        state_dir="<state_dir>/learner",
    )

    # Every replica, at start (the first one creates the actor, the others attach to it;
    # blocks until the actor answers, at most timeout_s):
    client = LearnerClient.connect(config, featurizer=make_featurize)
    # On the request path (no remote call, no lock: a reference read):
    snap = client.snapshot()
    successes, failures = snap.arm_counts(policy_key(experiment, variant))  # float64[n_arms]
    bandit = snap.linear_bandit(policy_key(experiment, variant))  # LinearBandit or None
    # Replica shutdown:           client.close()
    # Application shutdown:       stop_learner(config)   (persists, then ends the actor)

Feedback needs **no call**: the learner reads the decision log itself (below). Decisions
are learned from once their reward window closes; nothing else has to be wired.

- ``arm_counts(key)``: per catalog arm, how many shown slots got a positive
  ``reward_kind`` outcome (successes) and how many did not (failures). Add the policy's
  Beta prior: ``alpha = prior_alpha + successes``, ``beta = prior_beta + failures`` for
  ``nudgeserve.kernels.thompson_bernoulli_slate``. ``arm_counts()`` (no key, or
  ``ALL``) pools every variant's decisions of the use case.
- ``linear_bandit(key)``: a ``nudgeserve.models.policies.linear_bandit.LinearBandit`` (treat it as
  read-only; it is shared by the requests that use this snapshot) for ``linucb_slate`` /
  ``thompson_slate``, or None when ``linear_dim`` is 0. Keys with no data yet get the
  prior. It was learned on features of ``snap.feature_space``: a replica whose model
  differs must not use it (``snap.linear_prior`` instead) until the learner is restarted
  with the new feature space (then it relearns from the whole log, see "Persistence").
- ``policy_key(experiment, variant)``: ``""`` for decisions outside experiments, else
  ``"experiment/variant"``: every experiment arm learns only from its own traffic, so arms
  stay comparable; ``ALL`` (``"*"``) pools them.
- ``featurizer``: a picklable zero-argument factory, called once inside the actor, that
  returns ``featurize(records) -> list[float64[K, d] | None]``: for each
  ``DecisionRecord``, the linear bandit's features of its K chosen actions by slot (None
  when it cannot say: that decision then only updates the arm counts). The server builds
  it from its model (e.g. replaying the record's ``features`` through the model that
  decided); ``LoggedFeatures(dim)`` reads them from the record's ``features`` where a
  server logs them there. Without a featurizer the linear bandit stays at its prior.

How feedback reaches the learner: the decision log is the source
---------------------------------------------------------------------
The learner polls the decision log's SQLite file every ``poll_interval_s`` and takes, in
``decisions.rowid`` order, every decision whose time is at least ``reward_delay_s`` old
(its *reward window* has closed), together with the feedback joined to it by then. Each
shown slot becomes one trial: reward = the sum of that decision's joined
``reward_kind`` values for the slot's action, plus those for the decision as a whole
(``action`` None); a Bernoulli success when the reward is > 0.

Why this design and not a push from the feedback endpoint:

- **Nothing lost.** Non-clicks are never sent as feedback; only the log knows that a
  shown slot got no click, so the failures of the Beta posteriors and the zero rewards of
  the regression must come from the decisions anyway. Orphaned feedback that is joined
  later (when its decision is written) is included, and a replica that dies between
  committing feedback and telling anyone loses nothing: the learner reads what was
  committed.
- **Nothing counted twice.** The watermark is the last ``decisions.rowid`` applied.
  SQLite assigns rowids under the single write lock in commit order and the log never
  deletes decisions, so rowid order is commit order: once rowid ``w`` is visible, every
  smaller rowid is too, and ``rowid > w`` is exactly the set not yet applied. Each batch
  is applied together with its new watermark (``BanditState.update`` refuses a watermark
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
poll_interval_s = 0.1, seen by both replicas 0.18 s later with refresh_s = 0.25). Two replicas therefore never differ by more than the
versions published in one such interval. The request path never waits for the learner:
it reads the last snapshot. While the actor is unreachable (restarting) replicas keep
serving their last snapshot; ``LearnerClient.staleness_s()`` says how old it is (export
it as a metric) and the bound resumes once fetches succeed.

Persistence
-----------
The state is written to ``<state_dir>/<use_case>.safetensors`` (the arrays, with the
watermark and settings as JSON in the header; written to a temporary file and renamed, so
a crash never leaves half a file) every ``persist_every_s``, and on ``stop_learner`` /
``BanditLearner.shutdown``; it is loaded at start. It is a cache: the decision log can
always rebuild it. A saved state is discarded (and the log replayed from the start) when
it was learned under other settings (catalog, reward kind, linear settings, feature
space: the warning names them) or from another log (the decision at its watermark is not
the one it recorded).

Placement: the actor is named ``nudgeserve-learner-<use case>`` in the Ray namespace
``namespace``, detached (it outlives the replica that created it; ``stop_learner`` ends
it), restarted by Ray if its process dies (it reloads the saved state and replays the
rest), and pinned to the node of the replica that created it, because the decision log is
a local SQLite file. A cluster whose replicas write logs on several nodes needs one
learner per log file; this module does not merge them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from nudgeserve.models.policies.linear_bandit import LinearBandit
from nudgeserve.serve.decisions import DecisionRecord
from nudgeserve.serve.errors import ConfigError, NotReady, NudgeError

logger = logging.getLogger(__name__)

__all__ = [
    "ALL",
    "BanditLearner",
    "BanditSnapshot",
    "BanditState",
    "DecisionLogReader",
    "LearnerClient",
    "LearnerConfig",
    "LearnerConfigError",
    "LearnerConfigMismatch",
    "LearnerError",
    "LearnerUnavailable",
    "LoggedFeatures",
    "OnlineLearner",
    "Trial",
    "get_or_create_learner",
    "policy_key",
    "stop_learner",
]

# The key that pools every experiment arm of a use case.
ALL = "*"
# Version of the saved-state file layout.
STATE_FORMAT = 1
# Header key of the saved state's JSON metadata.
_META_KEY = "nudgeserve.learner"

Featurize = Callable[[Sequence[DecisionRecord]], Sequence[np.ndarray | None]]


# ------------------------------------------------------------------------------- errors


class LearnerError(NudgeError):
    """Root of the learner's errors."""


class LearnerConfigError(LearnerError, ConfigError):
    """A ``LearnerConfig`` setting is invalid; the message names it."""


class LearnerConfigMismatch(LearnerError, ConfigError):
    """A learner with this name already runs with other settings (stop it first)."""


class LearnerUnavailable(LearnerError, NotReady):
    """The learner actor did not answer in time."""


# ------------------------------------------------------------------------------- config


class LearnerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one use case's learner (checked when built; errors name the setting).

    use_case: the use case whose decisions are learned from (``DecisionRecord.use_case``).
    decision_log: path of the decision log's SQLite file (the one the replicas write).
    catalog: the arm ids, as the log records actions; arm i is ``catalog[i]``. Actions
        outside it (inline candidates) update only the linear bandit.
    reward_kind: the feedback ``kind`` that is the reward (``click``, ``conversion``, ...).
    reward_delay_s: a decision is learned from this long after its time (its reward
        window); later feedback does not reach the bandits (module docstring).
    poll_interval_s: pause between two polls of the log.
    refresh_s: pause between two snapshot fetches of each ``LearnerClient``.
    fetch_timeout_s: longest wait for one fetch.
    linear_dim: the linear bandit's feature dimension d (0: no linear bandit).
    linear_ridge: its ridge lambda (> 0).
    linear_prior_mean: float[d] prior mean of theta; empty = zeros.
    feature_space: names what the features depend on (e.g. the model checkpoint id); a
        saved state from another feature space is discarded and relearned.
    state_dir: directory of the saved state; empty = no persistence (relearn at start).
    persist_every_s: how often the state is saved while running.
    max_batch: most decisions read from the log per step.
    namespace: the Ray namespace of the actor.
    """

    use_case: str
    decision_log: str
    catalog: tuple[str, ...]
    reward_kind: str = "click"
    reward_delay_s: float = 60.0
    poll_interval_s: float = 1.0
    refresh_s: float = 1.0
    fetch_timeout_s: float = 10.0
    linear_dim: int = 0
    linear_ridge: float = 1.0
    linear_prior_mean: tuple[float, ...] = ()
    feature_space: str = ""
    state_dir: str = ""
    persist_every_s: float = 60.0
    max_batch: int = 10_000
    namespace: str = "nudgeserve"

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> LearnerConfigError:
            value = getattr(self, name)
            shown = value if not isinstance(value, tuple) or len(value) < 8 else "[...]"
            return LearnerConfigError(f"learner.{name} = {shown!r} is invalid: {allowed}")

        for name in ("use_case", "decision_log", "reward_kind", "namespace"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise bad(name, "must be a non-empty string")
        if not isinstance(self.catalog, tuple) or not self.catalog:
            raise bad("catalog", "must list at least one arm id")
        if not all(isinstance(c, str) for c in self.catalog):
            raise bad("catalog", "arm ids must be strings (as the decision log records them)")
        if len(set(self.catalog)) != len(self.catalog):
            raise bad("catalog", "arm ids must be unique")
        for name, low, positive in (
            ("reward_delay_s", 0.0, False),
            ("poll_interval_s", 0.0, True),
            ("refresh_s", 0.0, True),
            ("fetch_timeout_s", 0.0, True),
            ("linear_ridge", 0.0, True),
            ("persist_every_s", 0.0, True),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "must be a finite number")
            if v < low or (positive and v <= low):
                raise bad(name, f"must be {'>' if positive else '>='} {low:g}")
        for name, low, high in (("linear_dim", 0, 256), ("max_batch", 1, 10_000_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise bad(name, f"must be an integer in [{low}, {high}]")
        prior = self.linear_prior_mean
        if prior and (len(prior) != self.linear_dim or not all(math.isfinite(p) for p in prior)):
            raise bad(
                "linear_prior_mean",
                f"must be empty or {self.linear_dim} finite numbers (linear_dim)",
            )
        if not isinstance(self.feature_space, str) or not isinstance(self.state_dir, str):
            raise bad(
                "feature_space" if not isinstance(self.feature_space, str) else "state_dir",
                "must be a string",
            )

    @property
    def actor_name(self) -> str:
        """The learner actor's name in ``namespace``."""
        return f"nudgeserve-learner-{self.use_case}"

    @property
    def state_path(self) -> Path | None:
        """Where the state is saved (None without ``state_dir``)."""
        return Path(self.state_dir) / f"{self.use_case}.safetensors" if self.state_dir else None

    def fingerprint(self) -> dict[str, Any]:
        """The settings a saved state is only valid under (compared when loading)."""
        return {
            "use_case": self.use_case,
            "catalog": list(self.catalog),
            "reward_kind": self.reward_kind,
            "linear_dim": self.linear_dim,
            "linear_ridge": self.linear_ridge,
            "linear_prior_mean": list(self.prior_mean()) if self.linear_dim else [],
            "feature_space": self.feature_space,
        }

    def prior_mean(self) -> np.ndarray:
        """float64[linear_dim]: the prior mean of theta."""
        if self.linear_prior_mean:
            return np.asarray(self.linear_prior_mean, dtype=np.float64)
        return np.zeros(self.linear_dim)


def policy_key(experiment: str, variant: str) -> str:
    """The key a decision's arm counts and linear bandit are kept under: ``""`` outside
    experiments, else ``"experiment/variant"``."""
    return f"{experiment}/{variant}" if experiment else ""


# -------------------------------------------------------------------------------- state


class Trial(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One shown slot and its reward: the unit the bandits learn from.

    key: ``policy_key`` of the decision; arm: index into the catalog, -1 when the action
    is not a catalog arm; reward: the summed ``reward_kind`` value (0 = none);
    x: float64[d] the linear bandit's features of the shown action, or None.
    """

    key: str
    arm: int
    reward: float
    x: Any = None


@dataclass(frozen=True)
class BanditSnapshot:
    """An immutable copy of the learner's state at one version (what replicas serve from).

    epoch: identifies the learner process that made it (a restarted learner counts its
    versions anew); version: increases by one with every applied batch (0: nothing
    learned yet); watermark: the last decision-log rowid included; updated_at: the learner's clock
    (seconds since the epoch) when this version was made; n_arms: catalog size;
    feature_space: what the linear bandit's features were computed with.
    """

    use_case: str
    epoch: str
    version: int
    watermark: int
    updated_at: float
    n_arms: int
    feature_space: str
    counts: Mapping[str, tuple[np.ndarray, np.ndarray]]
    trials: Mapping[str, int]
    linear: Mapping[str, LinearBandit]
    linear_prior: LinearBandit | None
    _zeros: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def arm_counts(self, key: str = ALL) -> tuple[np.ndarray, np.ndarray]:
        """``(successes, failures)``, read-only float64[n_arms] each, for ``key``
        (``policy_key``; ``ALL`` pools every key). Zeros for a key with no trials."""
        hit = self.counts.get(key)
        if hit is not None:
            return hit
        return self._zeros, self._zeros

    def linear_bandit(self, key: str = ALL) -> LinearBandit | None:
        """The linear bandit for ``key`` (the prior when it has no trials yet), or None
        when the learner has no linear bandit. Treat it as read-only."""
        return self.linear.get(key, self.linear_prior)

    def n_trials(self, key: str = ALL) -> int:
        """Shown slots learned from for ``key``."""
        return self.trials.get(key, 0)

    def keys(self) -> list[str]:
        """The policy keys with trials (``ALL`` included once anything was learned)."""
        return sorted(self.trials)


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


class BanditState:
    """Per-arm reward counts and linear bandits of one use case, with the log watermark.

    Plain Python (no Ray, no I/O): the learner actor owns one. ``update`` applies a batch
    of trials together with the watermark it brings the state to and is idempotent: a
    batch whose watermark is not ahead of the state's is ignored.
    """

    def __init__(
        self,
        n_arms: int,
        *,
        linear_dim: int = 0,
        linear_ridge: float = 1.0,
        linear_prior_mean: np.ndarray | None = None,
    ) -> None:
        if isinstance(n_arms, bool) or not isinstance(n_arms, int) or n_arms < 1:
            raise ValueError(f"n_arms must be a positive int, got {n_arms!r}")
        self.n_arms = n_arms
        self.linear_dim = int(linear_dim)
        self.linear_ridge = float(linear_ridge)
        self._prior_mean = None if linear_prior_mean is None else np.asarray(linear_prior_mean)
        self.linear_prior = (
            LinearBandit(self.linear_dim, ridge=self.linear_ridge, prior_mean=self._prior_mean)
            if self.linear_dim
            else None
        )
        self.successes: dict[str, np.ndarray] = {}
        self.failures: dict[str, np.ndarray] = {}
        self.trials: dict[str, int] = {}
        self.linear: dict[str, LinearBandit] = {}
        self.watermark = 0
        self.watermark_id = ""
        self.version = 0
        self.updated_at = 0.0

    @classmethod
    def from_config(cls, config: LearnerConfig) -> BanditState:
        return cls(
            len(config.catalog),
            linear_dim=config.linear_dim,
            linear_ridge=config.linear_ridge,
            linear_prior_mean=config.prior_mean() if config.linear_dim else None,
        )

    def update(
        self, trials: Sequence[Trial], through: int, through_id: str, now: float | None = None
    ) -> bool:
        """Apply ``trials`` (every slot of the decisions with log rowid in
        ``(watermark, through]``) and move the watermark to ``through``, whose decision id
        is ``through_id``. Returns False, changing nothing, when ``through`` is not ahead
        of the watermark (the batch was applied already).

        Raises ValueError naming a bad trial (arm out of range, non-finite reward,
        features of the wrong shape) before anything is changed.
        """
        if isinstance(through, bool) or not isinstance(through, int):
            raise TypeError(f"through must be an int rowid, got {type(through).__name__}")
        if through <= self.watermark:
            return False
        groups: dict[str, list[int]] = {}
        arms = np.empty(len(trials), dtype=np.int64)
        rewards = np.empty(len(trials))
        xs: list[np.ndarray | None] = []
        for i, t in enumerate(trials):
            if not isinstance(t, Trial):
                raise TypeError(f"trials[{i}] must be a Trial, got {type(t).__name__}")
            if not -1 <= t.arm < self.n_arms:
                raise ValueError(f"trials[{i}].arm = {t.arm} is outside [-1, {self.n_arms})")
            if not math.isfinite(t.reward):
                raise ValueError(f"trials[{i}].reward must be finite, got {t.reward!r}")
            x = None
            if t.x is not None and self.linear_dim:
                x = np.asarray(t.x, dtype=np.float64)
                if x.shape != (self.linear_dim,) or not np.isfinite(x).all():
                    raise ValueError(
                        f"trials[{i}].x must be {self.linear_dim} finite numbers, got shape "
                        f"{list(x.shape)}"
                    )
            arms[i], rewards[i] = t.arm, t.reward
            xs.append(x)
            groups.setdefault(t.key, []).append(i)
        if trials:
            groups[ALL] = list(range(len(trials)))
        for key, rows in groups.items():
            take = np.asarray(rows, dtype=np.intp)
            self._update_counts(key, arms[take], rewards[take])
            with_x = [i for i in rows if xs[i] is not None]
            if with_x:
                bandit = self.linear.get(key)
                if bandit is None:
                    bandit = self.linear[key] = self.linear_prior.copy()
                bandit.update(np.stack([xs[i] for i in with_x]), rewards[with_x])
            self.trials[key] = self.trials.get(key, 0) + len(rows)
        self.watermark = through
        self.watermark_id = through_id
        if trials:
            self.version += 1
            self.updated_at = time.time() if now is None else now
        return True

    def _update_counts(self, key: str, arms: np.ndarray, rewards: np.ndarray) -> None:
        if key not in self.successes:
            self.successes[key] = np.zeros(self.n_arms)
            self.failures[key] = np.zeros(self.n_arms)
        catalog = arms >= 0
        won = catalog & (rewards > 0)
        lost = catalog & ~(rewards > 0)
        # New arrays, not in-place: snapshots handed out keep their values.
        self.successes[key] = self.successes[key] + np.bincount(arms[won], minlength=self.n_arms)
        self.failures[key] = self.failures[key] + np.bincount(arms[lost], minlength=self.n_arms)

    def snapshot(
        self, use_case: str = "", feature_space: str = "", epoch: str = ""
    ) -> BanditSnapshot:
        """An immutable copy for replicas (arrays read-only, linear bandits copied)."""
        counts = {
            key: (_readonly(self.successes[key].copy()), _readonly(self.failures[key].copy()))
            for key in self.successes
        }
        return BanditSnapshot(
            use_case=use_case,
            epoch=epoch,
            version=self.version,
            watermark=self.watermark,
            updated_at=self.updated_at,
            n_arms=self.n_arms,
            feature_space=feature_space,
            counts=counts,
            trials=dict(self.trials),
            linear={key: bandit.copy() for key, bandit in self.linear.items()},
            linear_prior=self.linear_prior.copy() if self.linear_prior is not None else None,
            _zeros=_readonly(np.zeros(self.n_arms)),
        )

    # -- persistence ------------------------------------------------------------------

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, meta)``: everything needed by ``from_arrays``."""
        arrays: dict[str, np.ndarray] = {}
        count_keys = sorted(self.successes)
        for i, key in enumerate(count_keys):
            arrays[f"counts/{i}/successes"] = self.successes[key]
            arrays[f"counts/{i}/failures"] = self.failures[key]
        linear_keys = sorted(self.linear)
        for i, key in enumerate(linear_keys):
            for name, arr in self.linear[key].state_dict().items():
                arrays[f"linear/{i}/{name}"] = arr
        meta = {
            "format": STATE_FORMAT,
            "n_arms": self.n_arms,
            "watermark": self.watermark,
            "watermark_id": self.watermark_id,
            "version": self.version,
            "updated_at": self.updated_at,
            "count_keys": count_keys,
            "linear_keys": linear_keys,
            "trials": self.trials,
        }
        return arrays, meta

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], config: LearnerConfig
    ) -> BanditState:
        """Inverse of ``to_arrays`` (raises ValueError on a malformed state)."""
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"saved state format {meta.get('format')!r}, expected {STATE_FORMAT}")
        state = cls.from_config(config)
        if meta["n_arms"] != state.n_arms:
            raise ValueError(f"saved state has {meta['n_arms']} arms, expected {state.n_arms}")
        for i, key in enumerate(meta["count_keys"]):
            for name, target in (("successes", state.successes), ("failures", state.failures)):
                arr = np.asarray(arrays[f"counts/{i}/{name}"], dtype=np.float64)
                if arr.shape != (state.n_arms,):
                    raise ValueError(f"saved counts {key!r}/{name} have shape {arr.shape}")
                target[key] = arr.copy()
        for i, key in enumerate(meta["linear_keys"]):
            prefix = f"linear/{i}/"
            part = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            bandit = LinearBandit.from_state_dict(part)
            if bandit.dim != state.linear_dim:
                raise ValueError(f"saved linear bandit {key!r} has dim {bandit.dim}")
            state.linear[key] = bandit
        state.trials = {str(k): int(v) for k, v in meta["trials"].items()}
        state.watermark = int(meta["watermark"])
        state.watermark_id = str(meta["watermark_id"])
        state.version = int(meta["version"])
        state.updated_at = float(meta["updated_at"])
        return state


def save_state(state: BanditState, config: LearnerConfig, path: Path) -> None:
    """Write ``state`` atomically (temporary file, fsync, rename) to ``path``."""
    from safetensors.numpy import save_file

    arrays, meta = state.to_arrays()
    meta["settings"] = config.fingerprint()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # safetensors needs at least one tensor; the watermark doubles as one.
    arrays = {**arrays, "watermark": np.array([state.watermark], dtype=np.int64)}
    save_file(arrays, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state(config: LearnerConfig, path: Path) -> BanditState | None:
    """The saved state at ``path`` if it exists and was learned under ``config``'s
    settings; else None (a mismatching or unreadable file is renamed aside with a
    warning naming why, and the learner relearns from the log)."""
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        arrays = {}
        with safe_open(str(path), framework="numpy") as fh:
            meta = json.loads((fh.metadata() or {})[_META_KEY])
            for name in fh.keys():
                arrays[name] = fh.get_tensor(name)
        saved = meta.get("settings", {})
        wanted = config.fingerprint()
        differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
        if differ:
            reason = "it was learned with other settings: " + ", ".join(differ)
        else:
            return BanditState.from_arrays(arrays, meta, config)
    except Exception as exc:  # safetensors' own errors too: any unreadable file is a cache miss
        reason = f"it is unreadable ({type(exc).__name__}: {exc})"
    aside = path.with_name(f"{path.name}.discarded-{int(time.time())}")
    os.replace(path, aside)
    logger.warning(
        "learner %s: not loading %s because %s; moved it to %s and relearning from the "
        "decision log",
        config.use_case,
        path,
        reason,
        aside,
    )
    return None


# ----------------------------------------------------------------------- reading the log


class LogBatch(msgspec.Struct, frozen=True):
    """Decisions read from the log in rowid order, with their rewards per slot.

    records: the use case's decisions (other use cases' are skipped); rewards: one
    float64[K] per record; through: the last rowid read (of any use case), 0 if none;
    through_id: its decision id; scanned: decisions read (all use cases).
    """

    records: list[DecisionRecord]
    rewards: list[Any]
    through: int
    through_id: str
    scanned: int


_SQL_DECISIONS = (
    "SELECT rowid, decision_id, time, record FROM decisions WHERE rowid > ? ORDER BY rowid LIMIT ?"
)
# Walks the decisions of a rowid range and probes feedback by its primary key prefix.
_SQL_REWARDS = (
    "SELECT d.decision_id, f.action, f.value FROM decisions AS d CROSS JOIN feedback AS f "
    "ON f.decision_id = d.decision_id WHERE d.rowid > ? AND d.rowid <= ? AND f.kind = ?"
)


class DecisionLogReader:
    """Reads final decisions and their joined rewards from the decision log's SQLite file.

    Opens the file read-only in spirit (it never writes) but in ``mode=rw`` so a WAL file
    can be read while the writers run; a missing file or schema reads as empty (the log
    may not exist yet when the learner starts).
    """

    def __init__(self, path: str, use_case: str, reward_kind: str, busy_timeout_ms=10_000):
        self.path = path
        self.use_case = use_case
        self.reward_kind = reward_kind
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._decoder = msgspec.msgpack.Decoder(DecisionRecord)

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not os.path.exists(self.path):
            return None
        uri = f"file:{Path(self.path).resolve().as_posix()}?mode=rw"
        conn = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            timeout=self.busy_timeout_ms / 1000,
            check_same_thread=False,
        )
        has = conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
            "AND name IN ('decisions', 'feedback')"
        ).fetchone()[0]
        if has < 2:
            conn.close()
            return None
        self._conn = conn
        return conn

    def decision_id_at(self, rowid: int) -> str | None:
        """The decision id stored at ``rowid`` (None if none, or no log yet)."""
        conn = self._connect()
        if conn is None:
            return None
        row = conn.execute("SELECT decision_id FROM decisions WHERE rowid = ?", (rowid,)).fetchone()
        return None if row is None else row[0]

    def read(self, after: int, cutoff_time: float, limit: int) -> LogBatch:
        """Decisions with rowid > ``after`` in rowid order, up to ``limit`` of them and
        stopping before the first whose time is after ``cutoff_time`` (its reward window
        is still open; later rowids wait for it, so the watermark never skips a row)."""
        conn = self._connect()
        if conn is None:
            return LogBatch([], [], after, "", 0)
        # One read transaction: the decisions and the feedback come from one snapshot.
        conn.execute("BEGIN")
        try:
            rows = conn.execute(_SQL_DECISIONS, (after, limit)).fetchall()
            kept = []
            for row in rows:
                if row[2] > cutoff_time:
                    break
                kept.append(row)
            if not kept:
                return LogBatch([], [], after, "", 0)
            through, through_id = kept[-1][0], kept[-1][1]
            feedback = conn.execute(_SQL_REWARDS, (after, through, self.reward_kind)).fetchall()
        finally:
            conn.execute("COMMIT")
        by_decision: dict[str, list[tuple[str | None, float]]] = {}
        for decision_id, action, value in feedback:
            by_decision.setdefault(decision_id, []).append((action, value))
        records, rewards = [], []
        for _, decision_id, _, blob in kept:
            record = self._decoder.decode(blob)
            if record.use_case != self.use_case:
                continue
            slot_of = {a: s for s, a in enumerate(record.actions)}
            reward = np.zeros(len(record.actions))
            for action, value in by_decision.get(decision_id, ()):
                if action is None:
                    reward += value
                elif action in slot_of:
                    reward[slot_of[action]] += value
            records.append(record)
            rewards.append(reward)
        return LogBatch(records, rewards, through, through_id, len(kept))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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


def _featurize_fn(featurizer: Any) -> Featurize | None:
    if featurizer is None:
        return None
    made = featurizer()
    fn = getattr(made, "featurize", made)
    if not callable(fn):
        raise TypeError(f"featurizer() must return a callable, got {type(made).__name__}")
    return fn


# ------------------------------------------------------------------------------ learner


class OnlineLearner:
    """The learner without Ray: reads the log, updates a ``BanditState``, publishes
    snapshots, saves the state. ``BanditLearner`` (the actor) runs one of these.

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
        self.reader = DecisionLogReader(config.decision_log, config.use_case, config.reward_kind)
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
        found = self.reader.decision_id_at(self.state.watermark)
        if found is None and not os.path.exists(self.config.decision_log):
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
                batch = self.reader.read(self.state.watermark, cutoff, self.config.max_batch)
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
        self.reader.close()


# -------------------------------------------------------------------------------- actor


class BanditLearner:
    """The Ray actor: one ``OnlineLearner`` polling in a background thread.

    Create it with ``get_or_create_learner`` (or ``LearnerClient.connect``), not directly.
    Its methods run in a small thread pool (``max_concurrency``), so a snapshot fetch
    never waits for a poll.
    """

    def __init__(self, config: LearnerConfig, featurizer: Any = None) -> None:
        self._learner = OnlineLearner(config, _featurize_fn(featurizer))
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


_remote_class: Any = None


def _remote() -> Any:
    global _remote_class
    if _remote_class is None:
        import ray

        _remote_class = ray.remote(BanditLearner)
    return _remote_class


def get_or_create_learner(config: LearnerConfig, featurizer: Any = None) -> Any:
    """The use case's learner actor handle, created if it does not run yet.

    Ray must be initialised (a replica, or a driver after ``ray.init``). Concurrent calls
    from several replicas get the same actor (Ray's ``get_if_exists``).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return (
        _remote()
        .options(
            name=config.actor_name,
            namespace=config.namespace,
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1,
            max_concurrency=4,
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        )
        .remote(config, featurizer)
    )


def stop_learner(config: LearnerConfig, timeout_s: float = 60.0) -> bool:
    """Save the learner's state and end its actor; False when none was running."""
    import ray

    try:
        actor = ray.get_actor(config.actor_name, namespace=config.namespace)
    except ValueError:
        return False
    try:
        ray.get(actor.shutdown.remote(), timeout=timeout_s)
    finally:
        ray.kill(actor, no_restart=True)
    return True


# ------------------------------------------------------------------------------- client


class LearnerClient:
    """A replica's view of the learner: the latest snapshot, refreshed in the background.

    fetch: ``fetch(epoch, version) -> BanditSnapshot | None`` (None: the held snapshot is
    still the latest); ``connect`` builds it over Ray, tests may pass
    ``OnlineLearner.snapshot_if_changed``.
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
        self.actor: Any = None  # the learner's actor handle, when connected over Ray
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

    @classmethod
    def connect(
        cls,
        config: LearnerConfig,
        featurizer: Any = None,
        *,
        timeout_s: float = 60.0,
        start: bool = True,
    ) -> LearnerClient:
        """Attach to (or create) the use case's learner, fetch its snapshot and start the
        background refresh. Raises ``LearnerConfigMismatch`` when the running learner has
        other settings, ``LearnerUnavailable`` when it does not answer in ``timeout_s``."""
        import ray

        actor = get_or_create_learner(config, featurizer)
        try:
            running = ray.get(actor.config.remote(), timeout=timeout_s)
            first = ray.get(actor.snapshot_if_changed.remote("", -1), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise LearnerUnavailable(
                f"learner {config.actor_name} did not answer within {timeout_s:g} s"
            ) from None
        if running != config:
            differ = [
                f for f in config.__struct_fields__ if getattr(running, f) != getattr(config, f)
            ]
            raise LearnerConfigMismatch(
                f"learner {config.actor_name} already runs with other settings ("
                + ", ".join(differ)
                + "); stop it first (nudgeserve.serve.ray.learner.stop_learner)"
            )
        timeout = config.fetch_timeout_s

        def fetch(epoch: str, version: int) -> BanditSnapshot | None:
            return ray.get(actor.snapshot_if_changed.remote(epoch, version), timeout=timeout)

        client = cls(fetch, config.refresh_s, initial=first)
        client.actor = actor
        if start:
            client.start()
        return client

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
