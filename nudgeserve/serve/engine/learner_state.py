"""The online learner's settings and state (plain Python and NumPy: no Ray, no SQL).

``LearnerConfig`` (one use case's learner, checked when built), ``BanditState`` (per-arm
reward counts and linear bandits per ``policy_key``, with the decision-log watermark they
include), the ``BanditSnapshot`` replicas serve from, and the saved-state file
(``save_state`` / ``load_state``). ``nudgeserve.serve.engine.learning`` follows the
decision log and updates a state; ``nudgeserve.serve.ray.learner`` runs that in an actor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from nudgeserve.models.policies.linear_bandit import LinearBandit
from nudgeserve.serve.errors import ConfigError, NotReady, NudgeError

logger = logging.getLogger(__name__)

__all__ = [
    "ALL",
    "BanditSnapshot",
    "BanditState",
    "LearnerConfig",
    "LearnerConfigError",
    "LearnerConfigMismatch",
    "LearnerError",
    "LearnerUnavailable",
    "Trial",
    "load_state",
    "policy_key",
    "save_state",
]

# The key that pools every experiment arm of a use case.
ALL = "*"
# Version of the saved-state file layout.
STATE_FORMAT = 1
# Header key of the saved state's JSON metadata.
_META_KEY = "nudgeserve.learner"


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
        window); later feedback does not reach the bandits (``serve.engine.learning``).
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

    Plain Python (no Ray, no I/O): the online learner owns one. ``update`` applies a batch
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
