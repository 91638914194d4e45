"""Admission by latency budget, and the event loop's lag.

A request is admitted when the wait it would see is predicted to fit the budget
(``server.admission.latency_budget_ms``): the longest predicted wait of the use cases'
batchers (``engine.batcher``) plus the event loop's current lag. Otherwise it is answered
at once with 503, JSON ``{"error": ...}`` and ``Retry-After``, before its body is decoded.
A fixed queue length cannot do this: how long a queue of N takes depends on what the N
cost, and a queue sized for cheap requests holds seconds of expensive ones.

``LoopLag`` measures how late the loop runs a timer that should fire every ``interval_s``:
the time a newly read request waits before the loop gets to it. It decays at once when
the load drops, so full speed comes back within one interval.

Only the decision and inference routes are subject to admission: health, metrics,
feedback and admin routes are cheap, and refusing feedback would lose outcomes.
No Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from nudgeserve.serve.http.server import error_response

ADMITTED_ROUTES = ("/v1/decide", "/v2/models/")


class LoopLag:
    """How late ``loop`` runs a periodic timer: ``smooth_s`` (an exponential average over
    the last few ticks: sustained lag, not one pause) and ``max_s`` (the largest since the
    last ``take_max``, for the metric)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float = 0.01) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self.smooth_s = 0.0
        self.max_s = 0.0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = time.perf_counter() + self.interval_s
        self._handle = self.loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        lag = max(now - self._due, 0.0)
        self.smooth_s += 0.3 * (lag - self.smooth_s)
        if lag > self.max_s:
            self.max_s = lag
        self._due = now + self.interval_s
        self._handle = self.loop.call_later(self.interval_s, self._tick)

    def current_s(self) -> float:
        """The sustained lag: the smoothed lateness, or how overdue the next tick is when
        that is more (the loop is stuck right now)."""
        return max(self.smooth_s, time.perf_counter() - self._due)

    def take_max(self) -> float:
        out, self.max_s = self.max_s, 0.0
        return out

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Admission:
    """Admits or refuses requests (see the module docstring); counts both.

    predicted_wait_s: the longest predicted wait of the batchers (seconds). budget_s:
    the latency budget; 0 turns admission off. retry_after_s: the refusal's
    ``Retry-After``.
    """

    def __init__(
        self,
        predicted_wait_s: Callable[[], float],
        lag: LoopLag | None,
        budget_s: float,
        retry_after_s: float,
    ) -> None:
        self.predicted_wait_s = predicted_wait_s
        self.lag = lag
        self.budget_s = budget_s
        self.admitted = 0
        self.shed = 0
        retry = (b"retry-after", b"%d" % max(1, round(retry_after_s)))
        self.refusal = error_response(
            503,
            f"overloaded: the predicted wait exceeds the latency budget of "
            f"{budget_s * 1000:g} ms (server.admission.latency_budget_ms); retry later",
            (retry,),
        )

    def __call__(self, method: str, path: str) -> bytes | None:
        if method != "POST" or not path.startswith(ADMITTED_ROUTES) or self.budget_s <= 0:
            return None
        wait = self.predicted_wait_s()
        if self.lag is not None:
            wait += self.lag.current_s()
        if wait > self.budget_s:
            self.shed += 1
            return self.refusal
        self.admitted += 1
        return None
