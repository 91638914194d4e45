"""Daily intervention caps shared by every replica: one ``BudgetLedger`` in one Ray actor.

What the server calls
---------------------
::

    from nudgeserve.serve.ray.budget import BudgetClient, stop_budget

    # Every replica of an intervention use case with daily caps, at start (the first one
    # creates the actor, the others attach to it):
    ledger = BudgetClient.connect("interventions", {"Mens E-Mail": 5000},
                                  state_path="<state_dir>/budget/interventions.json")
    # Per batch, inside the rule (``models.intervention.decide_interventions``): one call.
    granted, available = ledger.allocate(preferences, names)
    # Application shutdown (optional; a local ``nudgeserve run`` ends Ray anyway):
    stop_budget("interventions")

Consistency
-----------
Caps are never exceeded, whatever the number of replicas and concurrent requests:

- **One ledger, serialised.** The actor (``BudgetKeeper``) is a plain synchronous Ray actor
  with one thread (``max_concurrency=1``): Ray runs its calls one at a time, in arrival
  order. A batch's whole allocation is one call that reads today's counts, grants units in
  batch order while a cap has room, and writes the new counts before returning. Two
  batches never see the same remaining budget, so the sum granted per treatment and day
  is at most its cap.
- **Exact propensities.** The call also returns which treatments still had budget just
  before each unit was served (``available``); the rule's propensities condition on it,
  so they stay exact while a cap runs out inside a batch.
- **Restarts.** The counts are persisted (``state_path``: JSON, written to a temporary
  file and renamed) before the grant leaves the actor. The actor is detached and restarted
  by Ray if its process dies (``max_restarts=-1``), and a restarted actor reloads the
  counts of the current day: interventions granted before a crash still count. A grant
  whose decision is then not served (its replica died first) stays spent: the error is
  on the side of fewer interventions, never more.
- **Unavailable actor.** ``allocate`` waits at most ``timeout_s``; after that it raises
  ``BudgetUnavailable`` (503), failing that batch: a decision is never made on a budget
  that could not be checked.

Cost: one actor round trip per batch (about a millisecond on one node), not per unit. A
use case with no caps configured needs no actor (the rule then runs without a ledger).

Days start at midnight UTC + ``utc_offset_s``. Placement: the actor is named
``nudgeserve-budget-<use case>`` in the Ray namespace ``nudgeserve`` and pinned to the node
of the replica that created it (its state file is local). Changing the caps and redeploying
keeps today's counts (``BudgetKeeper.set_caps``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudgeserve.models.policies.intervention import BudgetLedger, BudgetState
from nudgeserve.serve.errors import NotReady

logger = logging.getLogger(__name__)

__all__ = [
    "BudgetClient",
    "BudgetKeeper",
    "BudgetUnavailable",
    "budget_actor_name",
    "get_or_create_budget",
    "stop_budget",
]

NAMESPACE = "nudgeserve"
# Version of the persisted state's layout.
STATE_FORMAT = 1


class BudgetUnavailable(NotReady):
    """The shared budget did not answer in time (503): the batch is not decided."""


def budget_actor_name(use_case: str) -> str:
    """The budget actor's name for ``use_case`` (in namespace ``nudgeserve``)."""
    if not isinstance(use_case, str) or not use_case:
        raise ValueError(f"use_case must be a non-empty name, got {use_case!r}")
    return f"nudgeserve-budget-{use_case}"


def _check_caps(caps: Any) -> dict[str, int]:
    if not isinstance(caps, Mapping):
        raise TypeError(f"caps must be a mapping of treatment -> int, got {type(caps).__name__}")
    out = {}
    for name, cap in caps.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"caps keys must be treatment names, got {name!r}")
        if isinstance(cap, bool) or not isinstance(cap, int | np.integer) or cap < 0:
            raise ValueError(f"caps[{name!r}] must be an int >= 0, got {cap!r}")
        out[name] = int(cap)
    return out


class BudgetKeeper:
    """The actor's body: a ``BudgetLedger`` whose counts survive restarts.

    caps: ``{treatment: interventions allowed per day}``. state_path: the JSON file the
    counts are written to after every allocation that spent budget, and read at start
    (None: memory only). utc_offset_s: where the day boundary falls. clock: epoch
    seconds (tests inject a fake one). Knows nothing of Ray: ``get_or_create_budget``
    runs it as an actor; tests call it directly.
    """

    def __init__(
        self,
        caps: Mapping[str, int],
        *,
        state_path: str | os.PathLike[str] | None = None,
        utc_offset_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._offset = float(utc_offset_s)
        self._path = None if state_path is None else Path(state_path)
        self.ledger = BudgetLedger(_check_caps(caps), clock=clock, utc_offset_s=utc_offset_s)
        self.allocations = 0
        self.restored: dict[str, int] = {}
        if self._path is not None:
            self._restore()

    def _restore(self) -> None:
        assert self._path is not None
        try:
            saved = json.loads(self._path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # An unreadable file must not take the budget down; it is logged loudly
            # because today's earlier grants are then not counted.
            logger.error("budget state %s unreadable (%s): starting today at 0", self._path, exc)
            return
        if saved.get("format") != STATE_FORMAT:
            logger.error(
                "budget state %s has format %r, not %d: ignored",
                self._path,
                saved.get("format"),
                STATE_FORMAT,
            )
            return
        today = self.ledger.state().day
        if saved.get("day") != today:
            return
        for name, used in dict(saved.get("used", {})).items():
            remaining = self.ledger.remaining(name)
            if remaining is None or not isinstance(used, int) or used <= 0:
                continue
            # Never more than the cap: a lowered cap keeps the day closed, not negative.
            amount = min(used, remaining)
            if amount > 0:
                self.ledger.try_spend(name, amount)
                self.restored[name] = amount

    def _persist(self) -> None:
        if self._path is None:
            return
        state = self.ledger.state()
        payload = {
            "format": STATE_FORMAT,
            "day": state.day,
            "used": state.used,
            "caps": state.caps,
            "written_at": self._clock(),
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f)
            os.replace(tmp, self._path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def allocate(
        self, preferences: np.ndarray, names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``BudgetLedger.allocate`` (same arguments and results), then persist the counts
        if anything capped was granted."""
        before = self.ledger.state()
        granted, available = self.ledger.allocate(preferences, tuple(names))
        self.allocations += 1
        after = self.ledger.state()
        if after.used != before.used or after.day != before.day:
            self._persist()
        return granted, available

    def state(self) -> BudgetState:
        """Today's counts and the caps."""
        return self.ledger.state()

    def caps(self) -> dict[str, int]:
        return dict(self.ledger.state().caps)

    def set_caps(self, caps: Mapping[str, int]) -> BudgetState:
        """Replace the caps, keeping what was used today (clamped to the new caps)."""
        caps = _check_caps(caps)
        old = self.ledger.state()
        if caps == old.caps:
            return old
        ledger = BudgetLedger(caps, clock=self._clock, utc_offset_s=self._offset)
        for name, used in old.used.items():
            remaining = ledger.remaining(name)
            amount = min(used, remaining) if remaining is not None else 0
            if amount > 0:
                ledger.try_spend(name, amount)
        self.ledger = ledger
        self._persist()
        return ledger.state()

    def info(self) -> dict[str, Any]:
        """The process serving the ledger (``pid``), allocations made since it started and
        the counts it restored from the state file at start (``restored``)."""
        return {"pid": os.getpid(), "allocations": self.allocations, "restored": self.restored}


_remote_class: Any = None


def _remote() -> Any:
    global _remote_class
    if _remote_class is None:
        import ray

        _remote_class = ray.remote(BudgetKeeper)
    return _remote_class


def get_or_create_budget(
    use_case: str,
    caps: Mapping[str, int],
    *,
    state_path: str | os.PathLike[str] | None = None,
    utc_offset_s: float = 0.0,
    namespace: str = NAMESPACE,
) -> Any:
    """The use case's budget actor handle, created if it does not run yet (Ray must be
    initialised). Concurrent calls from several replicas get the same actor."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    caps = _check_caps(caps)
    node = ray.get_runtime_context().get_node_id()
    return (
        _remote()
        .options(
            name=budget_actor_name(use_case),
            namespace=namespace,
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1,
            # One call at a time: this is what makes the caps hold (module docstring).
            max_concurrency=1,
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        )
        .remote(
            caps,
            state_path=None if state_path is None else os.fspath(state_path),
            utc_offset_s=utc_offset_s,
        )
    )


def stop_budget(use_case: str, *, namespace: str = NAMESPACE) -> bool:
    """End the use case's budget actor (its counts stay in the state file); False when
    none was running."""
    import ray

    try:
        actor = ray.get_actor(budget_actor_name(use_case), namespace=namespace)
    except ValueError:
        return False
    ray.kill(actor, no_restart=True)
    return True


class BudgetClient:
    """A replica's handle on the shared ledger: ``allocate`` is one actor call.

    Satisfies ``models.intervention.Ledger``, so the rule takes it where it takes a
    ``BudgetLedger``. ``allocate`` blocks (``ray.get``): call the rule from a worker
    thread, not from the replica's event loop.
    """

    def __init__(self, actor: Any, *, timeout_s: float = 5.0, use_case: str = "") -> None:
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.actor = actor
        self.timeout_s = float(timeout_s)
        self.use_case = use_case

    @classmethod
    def connect(
        cls,
        use_case: str,
        caps: Mapping[str, int],
        *,
        state_path: str | os.PathLike[str] | None = None,
        utc_offset_s: float = 0.0,
        timeout_s: float = 5.0,
        start_timeout_s: float = 60.0,
        namespace: str = NAMESPACE,
    ) -> BudgetClient:
        """Attach to (or create) the use case's actor and make it hold ``caps`` (a
        redeploy with new caps keeps today's counts). Raises BudgetUnavailable when it
        does not answer within ``start_timeout_s``."""
        import ray

        actor = get_or_create_budget(
            use_case,
            caps,
            state_path=state_path,
            utc_offset_s=utc_offset_s,
            namespace=namespace,
        )
        try:
            ray.get(actor.set_caps.remote(_check_caps(caps)), timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise BudgetUnavailable(
                f"budget actor {budget_actor_name(use_case)} did not answer within "
                f"{start_timeout_s:g} s"
            ) from None
        return cls(actor, timeout_s=timeout_s, use_case=use_case)

    def allocate(
        self, preferences: np.ndarray, names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``BudgetLedger.allocate`` on the shared ledger (one remote call)."""
        import ray

        prefs = np.ascontiguousarray(preferences, dtype=np.int64)
        try:
            return ray.get(self.actor.allocate.remote(prefs, tuple(names)), timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise BudgetUnavailable(
                f"the shared budget of {self.use_case or 'this use case'} did not answer "
                f"within {self.timeout_s:g} s; the batch was not decided"
            ) from None
        except ray.exceptions.RayActorError as exc:
            raise BudgetUnavailable(
                f"the shared budget of {self.use_case or 'this use case'} is unavailable "
                f"({type(exc).__name__}); the batch was not decided"
            ) from None

    def state(self) -> BudgetState:
        """Today's counts and caps on the shared ledger."""
        import ray

        return ray.get(self.actor.state.remote(), timeout=self.timeout_s)
