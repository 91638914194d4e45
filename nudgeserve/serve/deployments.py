"""The Ray Serve deployments: the gateway (HTTP ingress) and the batched use-case scorers.

``UseCaseScorer`` is one use case's replica logic: it loads the model at start (and warms
up kernels and torch), and its ``decide``/``infer`` calls join ``@serve.batch`` batches
that are featurized, scored and selected in one go. It runs either as its own deployment
(``placement: separate``: own replicas, GPU and autoscaling per use case) or inside the
gateway replica (``placement: colocated``: no process hop).

``Gateway`` is the ingress: HTTP routing only (``_router``), handing bodies to the
serving logic (``serving``, ``kserve``) and items to the scorers.
"""

from __future__ import annotations

from typing import Any

from ray import serve

import logging
import time

from ._metrics import ServeMetrics
from .config import Policy, ServeConfig, UseCase
from .decision_records import RecordBuilder
from .errors import DecisionNotLogged, Overloaded
from .usecases import DecisionItem, DecisionOutcome, InferOutcome, build_engine

logger = logging.getLogger("ray.serve")


def open_decision_log(config: ServeConfig) -> Any:
    """The replica's ``DecisionLog`` (its directory created), or None when disabled."""
    from pathlib import Path

    from .decisions import DecisionLog

    settings = config.decision_log
    if not settings.enabled:
        return None
    log_config = settings.log_config(config.state_dir)
    Path(log_config.path).parent.mkdir(parents=True, exist_ok=True)
    return DecisionLog.from_config(log_config)


class UseCaseScorer:
    """Batched scoring for one use case (a deployment body, or embedded in the gateway).

    settings: the use case's settings; policies: every policy its decisions may use
    (experiment variants included) so warm-up touches each.
    decision_log: a ``ServeConfig`` (this replica opens and owns its own log, placement
    ``separate``), an open ``DecisionLog`` shared with the gateway (``colocated``), or
    None: decisions are not logged.

    Every decision of a batch is committed to the log (``append_many_async``) before any
    answer of the batch is returned; if that fails, every request of the batch fails
    with ``DecisionNotLogged`` (503): a decision is never answered without its record.
    """

    def __init__(
        self, settings: UseCase, policies: tuple[Policy, ...] = (), decision_log: Any = None
    ) -> None:
        self.settings = settings
        self._owns_log = isinstance(decision_log, ServeConfig)
        self.log = open_decision_log(decision_log) if self._owns_log else decision_log
        self.engine = build_engine(settings)
        self.engine.extra_policies = tuple(policies)
        self.warmup_s = self.engine.load()
        self.records = RecordBuilder(self.engine.info)
        batching = settings.batching
        for method in (self._decide_batch, self._infer_batch):
            method.set_max_batch_size(batching.max_batch_size)
            method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self.metrics = ServeMetrics()
        self._tags = {"use_case": settings.name}
        self._waiting = 0

    async def ready(self) -> dict[str, Any]:
        """The loaded model's name and version, and warm-up seconds per step."""
        info = self.engine.info
        return {"model_name": info.model_name, "version": info.version, "warmup_s": self.warmup_s}

    async def decide(self, item: DecisionItem) -> DecisionOutcome:
        """Score and select one decision (joins the current batch)."""
        self._waiting += 1
        try:
            return await self._decide_batch(item)
        finally:
            self._waiting -= 1

    async def infer(self, inputs: dict[str, Any]) -> InferOutcome:
        """KServe v2 outputs for one request's rows (joins the current batch)."""
        self._waiting += 1
        try:
            return await self._infer_batch(inputs)
        finally:
            self._waiting -= 1

    # CPU work runs on the replica's loop: a batch takes about a millisecond, less than a
    # hand-off to a thread pool would cost on a small machine; the kernels and torch
    # release the GIL while they compute.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _decide_batch(self, items: list[DecisionItem]) -> list[DecisionOutcome]:
        engine = self.engine  # one engine per batch, even if a reload swaps it meanwhile
        outcomes = engine.decide_batch(items)
        if self.log is not None:
            await self._log(items, outcomes)
        self._record(outcomes[0].times if outcomes else None, "decide")
        return outcomes

    async def _log(self, items: list[DecisionItem], outcomes: list[DecisionOutcome]) -> None:
        try:
            records = self.records.records(items, outcomes, time.time())
            await self.log.append_many_async(records)
        except Overloaded:
            raise  # the log's queue is full: 503 with Retry-After, as any full queue
        except Exception as exc:
            logger.error("decision log refused a batch of %d decisions", len(items), exc_info=exc)
            raise DecisionNotLogged(
                f"the decision could not be logged ({type(exc).__name__}: {exc}); it was not "
                "served"
            ) from None

    def close(self) -> None:
        """Drain and close the decision log this scorer owns (idempotent)."""
        if self._owns_log and self.log is not None:
            self.log.close()

    def __del__(self) -> None:
        # Ray Serve calls this on a graceful stop, after the replica's requests drained.
        self.close()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
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


class _Remote:
    """A use-case deployment reached through its handle (placement ``separate``)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def decide(self, item: DecisionItem) -> DecisionOutcome:
        return await self.handle.decide.remote(item)

    async def infer(self, inputs: dict[str, Any]) -> InferOutcome:
        return await self.handle.infer.remote(inputs)

    async def ready(self) -> dict[str, Any]:
        return await self.handle.ready.remote()


class Gateway:
    """The HTTP ingress (see ``_router.Router`` for the routes)."""

    def __init__(self, config: ServeConfig, handles: dict[str, Any] | None = None) -> None:
        from ._router import Router

        handles = handles or {}
        # One decision log per gateway replica: the colocated scorers log into it, and
        # feedback is recorded through it.
        self.log = open_decision_log(config)
        scorers: dict[str, Any] = {}
        for settings in config.use_cases:
            if settings.name in handles:
                scorers[settings.name] = _Remote(handles[settings.name])
            else:
                scorers[settings.name] = UseCaseScorer(
                    settings, policies_of(config, settings), self.log
                )
        self.router = Router(config, scorers, self.log)

    async def __call__(self, request: Any) -> Any:
        return await self.router.handle(request)

    def __del__(self) -> None:
        # Ray Serve calls this on a graceful stop (SIGTERM to `nudgeserve run`, `serve
        # shutdown`), after the replica's ongoing requests drained: write what is queued.
        log = getattr(self, "log", None)
        if log is not None:
            log.close()

    # No check_health: a use-case deployment still loading (or restarting) must not get
    # the gateway restarted; /v2/health/ready reports the scorers instead.


def policies_of(config: ServeConfig, settings: UseCase) -> tuple[Policy, ...]:
    """Every policy ``settings``' decisions may use: its own and its experiments'."""
    found = [settings.policy]
    for e in config.experiments:
        if e.use_case == settings.name:
            found += [v.policy for v in e.variants if v.policy is not None]
    return tuple(dict.fromkeys(found))
