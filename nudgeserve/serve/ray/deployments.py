"""The Ray Serve deployments: the gateway (HTTP ingress) and the batched use-case scorers.

``UseCaseScorer`` is one use case's replica logic: it loads the model at start (and warms
up kernels and torch), and its ``decide``/``infer`` calls join micro-batches
(``engine.batcher``) that are featurized, scored and selected in one go. It runs either as its own deployment
(``placement: separate``: own replicas, GPU and autoscaling per use case) or inside the
gateway replica (``placement: colocated``: no process hop).

``Gateway`` is the ingress: HTTP routing only (``serve.http.router``), handing bodies to the
serving logic (``serving``, ``kserve``) and items to the scorers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import numpy as np

from nudgeserve.serve.config import ServeConfig, UseCase
from nudgeserve.serve.engine.bandits import BanditFeed
from nudgeserve.serve.engine.batcher import MicroBatcher
from nudgeserve.serve.engine.model_versions import ModelChoice, ModelWatch
from nudgeserve.serve.engine.record_builder import RecordBuilder, intervention_records
from nudgeserve.serve.engine.types import (
    DecisionItem,
    DecisionOutcome,
    InferOutcome,
    UnitsOutcome,
)
from nudgeserve.serve.engine.usecases import build_engine
from nudgeserve.serve.errors import DecisionNotLogged, Overloaded
from nudgeserve.serve.ray.learner import connect_learner
from nudgeserve.serve.ray.metrics import local_metrics_url, ray_metrics
from nudgeserve.serve.ray.model_registry import watch_models

logger = logging.getLogger("ray.serve")


# ``UseCaseScorer``'s decision_log argument: open the replica's own log from the config.
OWN_LOG = "own"


def open_decision_log(config: ServeConfig) -> Any:
    """The replica's ``DecisionLog`` (its directory created), or None when disabled."""
    from pathlib import Path

    from nudgeserve.serve.decisions import DecisionLog

    settings = config.decision_log
    if not settings.enabled:
        return None
    log_config = settings.log_config(config.state_dir)
    Path(log_config.path).parent.mkdir(parents=True, exist_ok=True)
    return DecisionLog.from_config(log_config)


class UseCaseScorer:
    """Batched scoring for one use case (a deployment body, or embedded in the gateway).

    settings: the use case's settings; config: the whole configuration (every policy the
    use case may decide with is warmed up; the learner and the decision log come from it).
    decision_log: ``OWN_LOG`` (this replica opens and owns its own log: placement
    ``separate``), an open ``DecisionLog`` shared with the gateway (``colocated``), or
    None: decisions are not logged.

    Every decision of a batch is committed to the log before any answer of the batch is
    returned; if that fails, every request of the batch fails with ``DecisionNotLogged``
    (503): a decision is never answered without its record. The batch itself ends when its
    records are queued (``DecisionLog.queue_many``), so the next batch scores while the
    log writer commits this one.

    ``load_model`` swaps in another checkpoint without failing a request: the new engine
    loads and warms up in a worker thread while batches keep running on the old one,
    then one assignment replaces it between two batches (a running batch keeps the
    engine it started with).
    """

    def __init__(
        self,
        settings: UseCase,
        config: ServeConfig | None = None,
        decision_log: Any = OWN_LOG,
        learner: bool = True,
    ) -> None:
        self.settings = settings
        self.config = config
        self._owns_log = decision_log == OWN_LOG
        if self._owns_log:
            decision_log = open_decision_log(config) if config is not None else None
        self.log = decision_log
        self.policies = tuple(config.policies_for(settings.name)) if config else ()
        engine = self._build(settings)
        self.warmup_s = engine.load()
        self._attach_budget(engine)
        # (engine, record builder): replaced together, in one assignment, by a reload.
        self.current = (engine, RecordBuilder(engine.info))
        self.feed = connect_learner(config, settings) if learner and config else BanditFeed()
        # A use-case deployment's replicas follow reloads through the model registry; in
        # the gateway, the gateway's own watch drives its scorers.
        self.watch: ModelWatch | None = None
        if self._owns_log and config is not None:
            self.watch = watch_models(config, self._apply_choice)
        self._reload_lock = asyncio.Lock()
        self.metrics = ray_metrics()
        self._tags = {"use_case": settings.name}
        self._waiting = 0
        # Batches queued on the log and not yet committed, oldest first: (queued at,
        # commit future). The writer commits in order, so done ones leave from the left.
        self._commits: collections.deque[tuple[float, asyncio.Future]] = collections.deque()
        batching = settings.batching
        self.batchers = {
            method: MicroBatcher(
                run,
                batching.max_batch_size,
                max_wait_s=batching.batch_wait_timeout_s,
                on_batch=self._queue_times,
            )
            for method, run in (("decide", self._decide_batch), ("infer", self._infer_batch))
        }

    def _build(self, settings: UseCase):
        return build_engine(settings, self.policies)

    def _attach_budget(self, engine: Any) -> None:
        """An intervention use case with daily caps decides on the ledger every replica
        shares (``budget``: one actor); outside Ray (tests) it keeps its own."""
        interventions = engine.interventions
        if interventions is None or not interventions.config.daily_caps:
            return
        import ray

        if not ray.is_initialized():
            return
        from pathlib import Path

        from nudgeserve.serve.ray.budget import BudgetClient

        settings = engine.settings.interventions
        state_dir = self.config.state_dir if self.config is not None else ".state"
        engine.set_ledger(
            BudgetClient.connect(
                engine.settings.name,
                interventions.config.daily_caps,
                state_path=Path(state_dir).resolve() / "budget" / f"{engine.settings.name}.json",
                utc_offset_s=settings.day_utc_offset_s,
                timeout_s=settings.budget_timeout_s,
            )
        )

    @property
    def engine(self):
        """The engine that scores the next batch."""
        return self.current[0]

    async def load_model(self, choice: ModelChoice) -> dict[str, Any]:
        """Serve ``choice``'s checkpoint and version from the next batch on (see the class
        docstring); returns what is served and how long loading took. A failed load
        leaves the current model serving."""
        async with self._reload_lock:
            engine = self.engine
            if choice.applies_to(engine.settings):
                return self.describe_model()
            settings = choice.settings(self.settings)
            t0 = time.perf_counter()
            new = self._build(settings)
            # Off the event loop: the replica keeps serving with the old engine meanwhile.
            await asyncio.to_thread(new.load)
            await asyncio.to_thread(self._attach_budget, new)
            self.current = (new, RecordBuilder(new.info))
            logger.info(
                "use case %s now serves version %s (checkpoint %s), loaded in %.2f s",
                settings.name,
                new.info.version,
                new.info.checkpoint_id,
                time.perf_counter() - t0,
            )
            return {**self.describe_model(), "load_s": time.perf_counter() - t0}

    async def _apply_choice(self, use_case: str, choice: ModelChoice) -> None:
        if use_case == self.settings.name:
            await self.load_model(choice)

    def describe_model(self) -> dict[str, Any]:
        info = self.engine.info
        return {
            "use_case": info.name,
            "model_name": info.model_name,
            "version": info.version,
            "model_checkpoint": info.checkpoint_id,
            "checkpoint": self.engine.settings.checkpoint,
        }

    async def ready(self) -> dict[str, Any]:
        """The loaded model's name and version, and warm-up seconds per step."""
        info = self.engine.info
        return {"model_name": info.model_name, "version": info.version, "warmup_s": self.warmup_s}

    async def decide(self, item: DecisionItem) -> DecisionOutcome:
        """Score and select one decision (joins the current batch)."""
        if self.watch is not None:
            self.watch.poke()
        self._waiting += 1
        try:
            outcome, committed = await self.batchers["decide"].submit(item)
        finally:
            self._waiting -= 1
        if committed is not None:
            # The batch is over (the next one may be scoring); its records are committing.
            await committed
        return outcome

    async def infer(self, inputs: dict[str, Any]) -> InferOutcome:
        """KServe v2 outputs for one request's rows (joins the current batch)."""
        self._waiting += 1
        try:
            return await self.batchers["infer"].submit(inputs)
        finally:
            self._waiting -= 1

    async def decide_many(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        """A gateway's micro-batch in one call (placement ``separate``): its items join
        this replica's batches with those of every other gateway."""
        return list(await asyncio.gather(*(self.decide(item) for item in items)))

    async def infer_many(self, requests: list[dict[str, Any]]) -> list[InferOutcome]:
        """``decide_many`` for KServe v2 inference."""
        return list(await asyncio.gather(*(self.infer(r) for r in requests)))

    def _queue_times(self, size: int, waits: list[float], service_s: float) -> None:
        observe = self.metrics.queue_time.observe
        for wait in waits:
            observe(wait, tags=self._tags)

    # CPU work runs on the replica's loop: a batch takes about a millisecond, less than a
    # hand-off to a thread pool would cost on a small machine; the kernels and torch
    # release the GIL while they compute.

    async def decide_and_log(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        """One batch: score and select, then commit every decision to the log; raises
        (failing the whole batch) rather than return a decision that is not logged."""
        outcomes, committed = await self.decide_and_queue(items)
        if committed is not None:
            await committed
        return outcomes

    async def _decide_batch(self, items: list[DecisionItem]) -> list[tuple[Any, Any]]:
        # The batcher's batch ends when the records are queued, not committed: the next
        # batch scores while the log writer commits this one (each request still waits
        # for its commit in ``decide``).
        outcomes, committed = await self.decide_and_queue(items)
        return [(outcome, committed) for outcome in outcomes]

    async def decide_and_queue(
        self, items: list[DecisionItem]
    ) -> tuple[list[DecisionOutcome], asyncio.Future | None]:
        """Score and select one batch and queue its records on the log; returns the
        outcomes and a future of their commit (None without a log). Await it before
        answering: it raises ``DecisionNotLogged`` when the records could not be
        committed. A full log queue raises ``Overloaded`` here, failing the batch."""
        # One engine per batch, even if a reload swaps it meanwhile.
        engine, records = self.current
        engine.set_bandit_snapshot(self.feed.snapshot())
        if engine.ledger_blocks:
            # The shared budget is one actor call per batch: wait for it off the loop.
            outcomes = await asyncio.to_thread(engine.decide_batch, items)
        else:
            outcomes = engine.decide_batch(items)
        committed = None
        if self.log is not None:
            committed = self._queue_log(records, items, outcomes)
            self.metrics.log_queue.set(self.log.stats().queue_depth, tags=self._tags)
        if self.feed.client is not None:
            self.metrics.learner_staleness.set(self.feed.staleness_s(), tags=self._tags)
        self._record(outcomes[0].times if outcomes else None, "decide")
        return outcomes, committed

    async def decide_units(
        self,
        columns: dict[str, list[Any]],
        unit_ids: list[str],
        given_unit_ids: list[str],
        decision_ids: list[str],
        dry_run: bool,
    ) -> UnitsOutcome:
        """``POST /v1/decide/batch``: the intervention rule on many units in one call
        (not through the request batcher: it is a batch already). Unless ``dry_run``,
        the budget is spent and every decision is committed to the log before the answer
        (or none is answered: ``DecisionNotLogged``)."""
        engine, _ = self.current
        info = engine.info

        def decide() -> tuple[list[Any], list[Any]]:
            # Model, rule and result building take milliseconds per thousand units: off
            # the event loop, so single decisions keep flowing meanwhile.
            batch = engine.decide_units(columns, np.asarray(unit_ids), not dry_run)
            records = []
            if not dry_run and self.log is not None:
                records = intervention_records(
                    batch,
                    info,
                    decision_ids=decision_ids,
                    unit_ids=given_unit_ids,
                    now=time.time(),
                )
            return batch.results(), records

        results, records = await asyncio.to_thread(decide)
        if records:
            try:
                await self.log.append_many_async(records)
            except Overloaded:
                raise
            except Exception as exc:
                logger.error(
                    "decision log refused a batch of %d decisions", len(records), exc_info=exc
                )
                raise DecisionNotLogged(
                    f"the decisions could not be logged ({type(exc).__name__}: {exc}); they "
                    "were not served"
                ) from None
        return UnitsOutcome(results, info.version, info.checkpoint_id)

    def _queue_log(
        self, builder: RecordBuilder, items: list[DecisionItem], outcomes: list[DecisionOutcome]
    ) -> asyncio.Future:
        try:
            records = builder.records(items, outcomes, time.time())
            pending = self.log.queue_many(records)
        except Overloaded:
            raise  # the log's queue is full: 503 with Retry-After, as any full queue
        except Exception as exc:
            raise _not_logged(exc, len(items)) from None
        committed = asyncio.ensure_future(_committed(pending, len(items)))
        # Every request of the batch awaits it; if all of them were cancelled meanwhile,
        # the outcome is still taken (no "exception never retrieved").
        committed.add_done_callback(_take_outcome)
        self._commits.append((time.perf_counter(), committed))
        committed.add_done_callback(self._commit_done)
        return committed

    def _commit_done(self, _: asyncio.Future) -> None:
        commits = self._commits
        while commits and commits[0][1].done():
            commits.popleft()

    def commit_wait_s(self) -> float:
        """How long the oldest batch still waiting for its commit has waited (0: none):
        the decision log's backlog, which admission counts with the batchers' waits."""
        commits = self._commits
        return time.perf_counter() - commits[0][0] if commits else 0.0

    def close(self) -> None:
        """Stop the learner feed and drain and close the decision log this scorer owns
        (idempotent)."""
        feed = getattr(self, "feed", None)
        if feed is not None:
            feed.close()
        if getattr(self, "_owns_log", False) and self.log is not None:
            self.log.close()

    def __del__(self) -> None:
        # Ray Serve calls this on a graceful stop, after the replica's requests drained.
        self.close()

    async def _infer_batch(self, requests: list[dict[str, Any]]) -> list[InferOutcome]:
        outcomes = self.engine.infer_batch(requests)
        self._record(outcomes[0].times if outcomes else None, "infer")
        return outcomes

    def _record(self, times, method: str) -> None:
        if times is None:
            return
        name = self.settings.name
        m = self.metrics
        # Requests still waiting when this batch ran (set once per batch, not per request).
        m.queue_depth.set(self._waiting - times.batch_size, tags=self._tags)
        m.batch_size.observe(times.batch_size, tags={"use_case": name, "method": method})
        m.stage_latency.observe(times.featurize_s, tags={"use_case": name, "stage": "featurize"})
        m.stage_latency.observe(times.model_s, tags={"use_case": name, "stage": "model"})
        if method == "decide":
            m.stage_latency.observe(times.select_s, tags={"use_case": name, "stage": "select"})


async def _committed(pending: Any, n: int) -> None:
    try:
        await pending
    except Overloaded:
        raise
    except Exception as exc:
        raise _not_logged(exc, n) from None


def _not_logged(exc: BaseException, n: int) -> DecisionNotLogged:
    logger.error("decision log refused a batch of %d decisions", n, exc_info=exc)
    return DecisionNotLogged(
        f"the decision could not be logged ({type(exc).__name__}: {exc}); it was not served"
    )


def _take_outcome(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class _Remote:
    """A use-case deployment reached through its handle (placement ``separate``).

    Requests are batched before the hop: the gateway's own micro-batcher coalesces them
    into one ``decide_many``/``infer_many`` call per batch (one Ray call, not one per
    request), and the deployment's replicas batch those across gateways."""

    # Scored in the deployment's own replicas: no engine in this process.
    engine = None

    def __init__(self, handle: Any, max_batch_size: int = 64, in_flight: int = 8) -> None:
        self.handle = handle
        # Several batches in flight, so more than one replica gets work.
        self.batchers = {
            "decide": MicroBatcher(self._decide_many, max_batch_size, concurrency=in_flight),
            "infer": MicroBatcher(self._infer_many, max_batch_size, concurrency=in_flight),
        }

    async def _decide_many(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        return await self.handle.decide_many.remote(items)

    async def _infer_many(self, requests: list[dict[str, Any]]) -> list[InferOutcome]:
        return await self.handle.infer_many.remote(requests)

    async def decide(self, item: DecisionItem) -> DecisionOutcome:
        return await self.batchers["decide"].submit(item)

    async def infer(self, inputs: dict[str, Any]) -> InferOutcome:
        return await self.batchers["infer"].submit(inputs)

    async def decide_units(self, *args: Any) -> UnitsOutcome:
        return await self.handle.decide_units.remote(*args)

    async def ready(self) -> dict[str, Any]:
        return await self.handle.ready.remote()

    async def load_model(self, choice: ModelChoice) -> dict[str, Any]:
        # Reaches one replica of the deployment; the others follow the model registry.
        return await self.handle.load_model.remote(choice)


class Gateway:
    """The HTTP ingress (see ``serve.http.router.Router`` for the routes).

    listen: (host, port) for the gateway's own HTTP server (``server.ingress:
    nudgeserve``; every gateway replica of a node shares the port), or None: requests
    arrive only through Ray (its proxy or a handle). Either way the router, the scorers
    and the decision log live on the data plane's loop (``serve.http.data_plane``).
    """

    def __init__(
        self,
        config: ServeConfig,
        handles: dict[str, Any] | None = None,
        listen: tuple[str, int] | None = None,
    ) -> None:
        from nudgeserve.serve.http.data_plane import DataPlane

        handles = handles or {}
        self.config = config
        self.log = None
        server = config.server

        def build() -> Any:
            from nudgeserve.serve.http.router import Router

            # One decision log per gateway replica: the colocated scorers log into it, and
            # feedback is recorded through it.
            self.log = open_decision_log(config)
            scorers: dict[str, Any] = {}
            for settings in config.use_cases:
                if settings.name in handles:
                    scorers[settings.name] = _Remote(
                        handles[settings.name], settings.batching.max_batch_size
                    )
                else:
                    scorers[settings.name] = UseCaseScorer(settings, config, self.log)
            router = Router(
                config, scorers, self.log, metrics=ray_metrics(), metrics_url=local_metrics_url
            )
            # Reloads reach every replica through the model registry (``model_registry``).
            router.use_model_watch(watch_models(config, router.apply_model))
            router.prepare_metrics()
            return router

        self.plane = DataPlane(
            build,
            listen,
            budget_s=server.admission.latency_budget_ms / 1000.0,
            retry_after_s=server.gateway.retry_after_s,
            max_body=server.max_body_bytes,
        )
        self.plane.start()
        self.router = self.plane.router
        self._drain_watch = DrainWatch(APP_DRAIN_KEY, self.plane.drain)

    async def __call__(self, request: Any) -> Any:
        from nudgeserve.serve.http.server import Request

        # Read on Ray's loop (the ASGI receive channel lives there), answer on the data
        # plane's loop (which owns the router and the batchers).
        body = await request.body()
        scope = request.scope
        lean = Request(
            request.method,
            scope["path"],
            scope.get("query_string", b""),
            {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body,
        )
        return await asyncio.wrap_future(self.plane.call(self.router.handle(lean)))

    def __del__(self) -> None:
        # Ray Serve calls this on a graceful stop (SIGTERM to `nudgeserve run`, `serve
        # shutdown`): new requests get 503 at once, the ones in flight are answered, then
        # what is queued for the decision log is written.
        watch = getattr(self, "_drain_watch", None)
        if watch is not None:
            watch.stop()
        plane = getattr(self, "plane", None)
        if plane is not None:
            plane.stop(grace_s=5.0, close=self._close_scorers)

    def _close_scorers(self) -> None:
        router = self.router
        if router is not None:
            for scorer in router.scorers.values():
                if isinstance(scorer, UseCaseScorer):
                    scorer.close()
        if self.log is not None:
            self.log.close()

    # No check_health: a use-case deployment still loading (or restarting) must not get
    # the gateway restarted; /v2/health/ready reports the scorers instead.


# Set in Ray's key-value store by ``nudgeserve run`` when it stops: every gateway replica
# then drains at once (503 to new requests, not ready), before Ray Serve stops them.
APP_DRAIN_KEY = b"nudgeserve:draining"


class DrainWatch:
    """Polls Ray's key-value store for ``key`` every ``interval_s`` in a daemon thread;
    calls ``on_drain`` once when it appears."""

    def __init__(self, key: bytes, on_drain: Any, interval_s: float = 0.1) -> None:
        import threading

        self.key = key
        self.on_drain = on_drain
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drain-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import ray
        from ray.experimental import internal_kv

        while not self._stop.wait(self.interval_s):
            if not ray.is_initialized():
                continue
            try:
                if internal_kv._internal_kv_get(self.key) is not None:
                    self.on_drain()
                    return
            except Exception:  # the GCS restarting: try again next time
                continue

    def stop(self) -> None:
        self._stop.set()


def request_drain() -> None:
    """Tell every gateway replica to drain (``nudgeserve run`` calls it when stopping)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(APP_DRAIN_KEY, b"1", overwrite=True)


def clear_drain() -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(APP_DRAIN_KEY)
