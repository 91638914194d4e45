"""Daily intervention caps shared by every replica: one ``BudgetKeeper`` in one Ray actor.

What the server calls
---------------------
::

    from nudgeserve.serve.ray.budget import BudgetClient, stop_budget

    # Every replica of an intervention use case with daily caps, at start (the first one
    # creates the actor, the others attach to it):
    ledger = BudgetClient.connect("interventions", {"Mens E-Mail": 5000},
                                  state_path="<state_dir>/budget/interventions.json")
    # Per batch, inside the rule (``models.policies.intervention.decide_interventions``):
    # one call.
    granted, available = ledger.allocate(preferences, names)
    # Application shutdown (optional; a local ``nudgeserve run`` ends Ray anyway):
    stop_budget("interventions")

Consistency
-----------
Caps are never exceeded, whatever the number of replicas and concurrent requests:

- **One ledger, serialised.** The actor (``serve.engine.budget_keeper.BudgetKeeper``, a
  ``BudgetLedger`` whose counts survive restarts) is a plain synchronous Ray actor
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

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray

from nudgeserve.models.policies.intervention import BudgetState
from nudgeserve.serve.engine.budget_keeper import BudgetKeeper, check_caps
from nudgeserve.serve.errors import NotReady
from nudgeserve.serve.ray._actors import NAMESPACE, get_or_create_actor, stop_actor

__all__ = [
    "BudgetClient",
    "BudgetUnavailable",
    "budget_actor_name",
    "get_or_create_budget",
    "stop_budget",
]


class BudgetUnavailable(NotReady):
    """The shared budget did not answer in time (503): the batch is not decided."""


def budget_actor_name(use_case: str) -> str:
    """The budget actor's name for ``use_case`` (in namespace ``nudgeserve``)."""
    if not isinstance(use_case, str) or not use_case:
        raise ValueError(f"use_case must be a non-empty name, got {use_case!r}")
    return f"nudgeserve-budget-{use_case}"


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
    return get_or_create_actor(
        BudgetKeeper,
        budget_actor_name(use_case),
        check_caps(caps),
        state_path=None if state_path is None else os.fspath(state_path),
        utc_offset_s=utc_offset_s,
        namespace=namespace,
        # One call at a time: this is what makes the caps hold (module docstring).
        max_concurrency=1,
        pin_to_node=True,
    )


def stop_budget(use_case: str, *, namespace: str = NAMESPACE) -> bool:
    """End the use case's budget actor (its counts stay in the state file); False when
    none was running."""
    return stop_actor(budget_actor_name(use_case), namespace=namespace)


class BudgetClient:
    """A replica's handle on the shared ledger: ``allocate`` is one actor call.

    Satisfies ``models.policies.intervention.Ledger``, so the rule takes it where it takes a
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
        actor = get_or_create_budget(
            use_case,
            caps,
            state_path=state_path,
            utc_offset_s=utc_offset_s,
            namespace=namespace,
        )
        try:
            ray.get(actor.set_caps.remote(check_caps(caps)), timeout=start_timeout_s)
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
        return ray.get(self.actor.state.remote(), timeout=self.timeout_s)
