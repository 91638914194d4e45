"""A daily budget ledger whose counts survive restarts: ``BudgetKeeper``.

The caps themselves are kept by ``nudgeserve.models.policies.intervention.BudgetLedger``;
the keeper adds what a long-running process needs: the counts are written to a JSON file
(temporary file, then rename) after every allocation that spent budget, today's counts
are restored from it at start, and the caps can change without losing them. No Ray:
``nudgeserve.serve.ray.budget`` runs one keeper in the actor every replica shares.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nudgeserve.models.policies.intervention import BudgetLedger, BudgetState

logger = logging.getLogger(__name__)

__all__ = ["BudgetKeeper", "check_caps"]

# Version of the persisted state's layout.
STATE_FORMAT = 1


def check_caps(caps: Any) -> dict[str, int]:
    """``caps`` as ``{treatment: int >= 0}``; TypeError / ValueError name a bad entry."""
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
    seconds (tests inject a fake one). Knows nothing of Ray:
    ``serve.ray.budget.get_or_create_budget`` runs it as an actor; tests call it
    directly.
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
        self.ledger = BudgetLedger(check_caps(caps), clock=clock, utc_offset_s=utc_offset_s)
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
        caps = check_caps(caps)
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
