"""The gateway's data plane: its HTTP server, router and scorers on their own event loop.

One thread runs a uvloop event loop (asyncio's when uvloop is missing) that owns
everything on the request path: the ``HttpServer`` listening on the configured port,
the ``Router``, the use cases' batchers and the decision log's client side. Ray's
replica keeps its own loop for what Ray does (health checks, handle calls, autoscaling
metrics); requests that arrive through Ray (a ``DeploymentHandle``, Ray's proxy) are
handed to this loop, so the router and batchers are only ever touched from one loop.

Admission (``admission``), the loop-lag monitor and the metrics flush (once a second:
admitted/shed counts, the largest loop lag) run here too. No Ray.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nudgeserve.serve.engine.batcher import predicted_wait_s
from nudgeserve.serve.http.admission import Admission, LoopLag
from nudgeserve.serve.http.server import HttpServer

logger = logging.getLogger("nudgeserve.http")

METRICS_INTERVAL_S = 1.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop comes with ray[serve]'s uvicorn[standard]
        return asyncio.new_event_loop()


class DataPlane:
    """Runs ``build()`` (returning the router) on a new loop thread and serves HTTP with it.

    build: called on the data plane's loop (inside a running loop); returns the router
    (``handle(request)``, ``metrics``, ``scorers`` with their ``batchers``).
    listen: (host, port) to serve HTTP on, or None (requests come only through ``call``).
    budget_s: admission's latency budget (0: admit everything). retry_after_s, max_body:
    as the server settings.
    """

    def __init__(
        self,
        build: Callable[[], Any],
        listen: tuple[str, int] | None,
        *,
        budget_s: float,
        retry_after_s: float,
        max_body: int,
    ) -> None:
        self._build = build
        self.listen = listen
        self.budget_s = budget_s
        self.retry_after_s = retry_after_s
        self.max_body = max_body
        self.loop = new_event_loop()
        self.router: Any = None
        self.server: HttpServer | None = None
        self.admission: Admission | None = None
        self.lag: LoopLag | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nudgeserve-data-plane", daemon=True)
        self._flushed = (0, 0)
        self._stopped = False

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Build and start serving; raises what building or binding raised."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _setup(self) -> None:
        self.router = self._build()
        # Everything built so far (modules, the model, warm-up garbage) lives as long as
        # the process: move it out of the collector's reach, so a full collection under
        # load walks only what requests allocate (it otherwise walked the whole heap of
        # torch and Ray objects: tens of milliseconds, the tail of the latency).
        gc.collect()
        gc.freeze()
        self.lag = LoopLag(self.loop)
        self.lag.start()
        self.admission = Admission(
            self.predicted_wait_s, self.lag, self.budget_s, self.retry_after_s
        )
        if self.listen is not None:
            self.server = HttpServer(
                self.router.handle,
                loop=self.loop,
                admit=self.admission,
                max_body=self.max_body,
                retry_after_s=self.retry_after_s,
            )
            await self.server.start(*self.listen)
            logger.info("data plane serving HTTP on %s:%d", *self.server.address)
        self.loop.call_later(METRICS_INTERVAL_S, self._flush_metrics)

    def predicted_wait_s(self) -> float:
        """The longest wait a request admitted now is predicted to see before its answer
        can leave: its batcher's queue, or the decision log's backlog (the age of the
        oldest batch still waiting for its commit), whichever is longer."""
        scorers = self.router.scorers.values()
        wait = predicted_wait_s([b for s in scorers for b in getattr(s, "batchers", {}).values()])
        for scorer in scorers:
            commit_wait = getattr(scorer, "commit_wait_s", None)
            if commit_wait is not None:
                wait = max(wait, commit_wait())
        return wait

    def _flush_metrics(self) -> None:
        m = self.router.metrics
        admitted, shed = self.admission.admitted, self.admission.shed
        a0, s0 = self._flushed
        if admitted > a0:
            m.admission.inc(admitted - a0, tags={"decision": "admitted"})
        if shed > s0:
            m.admission.inc(shed - s0, tags={"decision": "shed"})
        self._flushed = (admitted, shed)
        m.loop_lag.set(self.lag.take_max(), tags={})
        m.flush()
        for scorer in self.router.scorers.values():
            metrics = getattr(scorer, "metrics", None)
            if metrics is not None and metrics is not m:
                metrics.flush()
        if not self._stopped:
            self.loop.call_later(METRICS_INTERVAL_S, self._flush_metrics)

    # -- calls from other threads ------------------------------------------------------------

    def call(self, coroutine: Awaitable[Any]) -> concurrent.futures.Future:
        """Run ``coroutine`` on the data plane's loop (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]

    def drain(self) -> None:
        """From now on new HTTP requests get 503 and ``/v2/health/ready`` answers 503."""
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        if self.router is not None:
            self.router.draining = True
        if self.server is not None:
            self.server.drain()

    def stop(self, grace_s: float = 5.0, close: Callable[[], None] | None = None) -> None:
        """Drain, wait up to ``grace_s`` for the requests in flight, stop listening, run
        ``close`` (on the loop's thread, e.g. closing the scorers and the log), stop."""
        if self._stopped or not self._thread.is_alive():
            return
        self._stopped = True

        async def shutdown() -> None:
            self._drain()
            if self.server is not None:
                await self.server.wait_idle(grace_s)
                await self.server.close()
            if self.lag is not None:
                self.lag.stop()
            if close is not None:
                close()

        t0 = time.monotonic()
        try:
            self.call(shutdown()).result(grace_s + 60.0)
        except Exception as exc:  # stopping must go on
            logger.warning("data plane did not stop cleanly: %r", exc)

        def finish() -> None:
            # Requests still running after the grace period are cancelled, not abandoned.
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.stop()

        self.loop.call_soon_threadsafe(finish)
        self._thread.join(max(1.0, grace_s + 60.0 - (time.monotonic() - t0)))
