"""HTTP routing for the gateway: paths, methods, bodies, headers, status codes.

It reads the body (bounded by ``max_body_bytes``, decompressing gzip/deflate within the
same bound), hands bytes to the serving logic (``decide.DecisionService``,
``feedback_body.FeedbackService``, ``protocol.kserve.V2Codec``), items to the scorers
(``Scorer``) and report requests to ``engine.report_service``, and turns every exception
into a response through ``errors.http_error``. No Ray: the Ray layer hands in its metrics
recorders, its metrics export and its model registry link.

Routes:

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/{m}[/versions/{v}]            model metadata
    GET  /v2/models/{m}[/versions/{v}]/config     Triton-style model config
    GET  /v2/models/{m}[/versions/{v}]/ready
    GET  /v2/models[/{m}[/versions/{v}]]/stats    Triton-style statistics
    POST /v2/models/{m}[/versions/{v}]/infer      JSON or binary tensors
    POST /v2/repository/index
    POST /v1/decide                               JSON or msgpack
    POST /v1/decide/batch                         intervention use cases: many units at once
    POST /v1/feedback                             JSON or msgpack, one event or a list
    POST /v1/models/{m}/load                      admin: serve another checkpoint/version
    GET  /v1/experiments/{id}/report              arms, rates, lift, off-policy estimates
    GET  /v1/experiments/{id}/impact              intervention experiments: causal impact
    GET  /openapi.json | /metrics
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
import zlib
from collections.abc import Callable
from typing import Annotated, Any, Protocol

import msgspec
from starlette.responses import Response

from nudgeserve import __version__
from nudgeserve.serve import _env
from nudgeserve.serve.config import HillstromUseCase, ServeConfig
from nudgeserve.serve.engine.batch_engine import BatchEngine
from nudgeserve.serve.engine.describe import describe
from nudgeserve.serve.engine.model_versions import ModelChoice, ModelWatch
from nudgeserve.serve.engine.report_service import ExperimentReports, ImpactOptions
from nudgeserve.serve.engine.types import (
    DecisionItem,
    DecisionOutcome,
    InferOutcome,
    UnitsOutcome,
    UseCaseInfo,
)
from nudgeserve.serve.errors import (
    ConfigError,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
    http_error,
)
from nudgeserve.serve.http.bodies import JSON, decode_body, media_type
from nudgeserve.serve.http.decide import DecisionService
from nudgeserve.serve.http.feedback_body import FeedbackService
from nudgeserve.serve.http.openapi import openapi_document
from nudgeserve.serve.metrics import ServeMetrics, fetch_metrics
from nudgeserve.serve.protocol.kserve import (
    HEADER_LENGTH,
    ModelStatistics,
    V2Codec,
    server_metadata,
)

JSON_TYPE = "application/json"
# Ray Serve's logger: lines go to the replica's log file with its request context.
logger = logging.getLogger("ray.serve")


async def bounded(awaitable: Any, timeout_s: float, what: str) -> Any:
    """``await awaitable`` for at most ``timeout_s`` seconds, else Overloaded (503): a
    request never waits without bound."""
    try:
        # asyncio.timeout, unlike wait_for, adds no task per request.
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError:
        raise Overloaded(f"{what} did not finish within {timeout_s:g} s", 1.0) from None


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


class Scorer(Protocol):
    """One use case's batched scorer as the router sees it: in this process (the
    gateway's colocated scorer) or a handle to the use case's own deployment.

    engine: the engine scoring in this process (reports replay with it), or None when
    the use case is scored in another process.
    """

    @property
    def engine(self) -> BatchEngine | None: ...

    async def decide(self, item: DecisionItem) -> DecisionOutcome: ...

    async def decide_units(
        self,
        columns: dict[str, list[Any]],
        unit_ids: list[str],
        given_unit_ids: list[str],
        decision_ids: list[str],
        dry_run: bool,
    ) -> UnitsOutcome: ...

    async def infer(self, inputs: dict[str, Any]) -> InferOutcome: ...

    async def ready(self) -> Any: ...

    async def load_model(self, choice: ModelChoice) -> Any: ...


class LoadRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/models/{m}/load``: the checkpoint to serve (``"default"`` or a
    path, as the config's ``checkpoint``; omitted: the current one) and the version to
    answer with (omitted: the current version + 1). At least one of them."""

    checkpoint: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    version: Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,17}$")] | None = None

    def __post_init__(self) -> None:
        if self.checkpoint is None and self.version is None:
            raise ValueError("give checkpoint, version or both")


class AdminAuth:
    """Checks ``Authorization: Bearer <token>`` on admin routes in constant time.

    token: the configured admin token (``NUDGESERVE_ADMIN_TOKEN``, else
    ``server.admin_token``); None: admin routes are refused (403) to everyone.
    """

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def check(self, header: str | None) -> None:
        if not header:
            raise Forbidden("admin route: send Authorization: Bearer <admin token>", 401)
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Forbidden("admin route: the Authorization header must be Bearer <token>", 401)
        if self._token is None:
            raise Forbidden(
                "admin routes are disabled: no admin token is configured "
                "(NUDGESERVE_ADMIN_TOKEN or server.admin_token)"
            )
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise Forbidden("admin route: the token is not valid")


class Router:
    """Routes one gateway replica's requests (see the module docstring).

    scorers: each use case's scorer by name. log: the replica's ``DecisionLog``
    (feedback, reports), or None when logging is disabled. metrics: what the replica
    records (default: no-ops, as outside Ray). metrics_url: where this node exports its
    metrics in Prometheus text (None: ``GET /metrics`` answers 503).
    """

    def __init__(
        self,
        config: ServeConfig,
        scorers: dict[str, Scorer],
        log: Any = None,
        *,
        metrics: ServeMetrics | None = None,
        metrics_url: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        self.scorers = scorers
        self.log = log
        self.feedback_service = FeedbackService(config.decision_log.outcome_kinds)
        self.admin = AdminAuth(_env.admin_token() or config.server.admin_token)
        self.settings = {u.name: u for u in config.use_cases}
        # The model registry's link (``use_model_watch``); None: reloads reach this
        # replica only.
        self.models_watch: ModelWatch | None = None
        self._load_body = msgspec.json.Decoder(LoadRequest)
        self.infos: dict[str, UseCaseInfo] = {u.name: describe(u) for u in config.use_cases}
        self.models = {info.model_name: info for info in self.infos.values()}
        self.decisions = DecisionService(self.infos, config.experiments)
        self.reports = ExperimentReports(
            config,
            log.config.path if log is not None else None,
            lambda use_case: self.scorers[use_case].engine,
        )
        self.v2 = V2Codec()
        self.json = msgspec.json.Encoder()
        self.stats = {
            info.model_name: ModelStatistics(info.model_name, info.version)
            for info in self.infos.values()
        }
        self.metrics = metrics if metrics is not None else ServeMetrics()
        self._decode_tags = {name: {"use_case": name, "stage": "decode"} for name in self.infos}
        self.max_body = config.server.max_body_bytes
        self.timeout_s = config.server.request_timeout_s
        self._ready: set[str] = set()
        # Set when the replica is stopping: /v2/health/ready answers 503 from then on.
        self.draining = False
        self._session: Any = None
        self._find_metrics_url = metrics_url or (lambda: None)
        self._metrics_url: str | None = None
        self._openapi = self.json.encode(
            openapi_document(
                [{"name": i.name, "kind": i.kind} for i in self.infos.values()], __version__
            )
        )

    def use_model_watch(self, watch: ModelWatch) -> None:
        """Follow the model registry through ``watch`` (its ``apply`` must be this router's
        ``apply_model``): reloads then reach every replica, not only this one."""
        self.models_watch = watch

    # -- entry point ------------------------------------------------------------------------

    async def handle(self, request: Any) -> Response:
        start = time.perf_counter()
        route = "unknown"
        if self.models_watch is not None:
            self.models_watch.poke()
        try:
            route, response = await self._dispatch(request)
        except Exception as exc:  # every failure becomes an HTTP answer, never a crash
            err = http_error(exc)
            if err.status == 500:
                # The client only sees "internal error"; the operator gets the traceback.
                logger.error(
                    "internal error answering %s %s",
                    request.method,
                    request.scope.get("path"),
                    exc_info=exc,
                )
            response = Response(
                self.json.encode({"error": err.message}),
                status_code=err.status,
                headers=dict(err.headers),
                media_type=JSON_TYPE,
            )
        # The counters are buffered in the process (``metrics._Buffered``); the latency
        # histogram records each request.
        tags = {"route": route, "code": str(response.status_code)}
        self.metrics.requests.inc(1, tags=tags)
        if response.status_code >= 400:
            self.metrics.errors.inc(1, tags=tags)
        self.metrics.request_latency.observe(time.perf_counter() - start, tags={"route": route})
        return response

    async def _dispatch(self, request: Any) -> tuple[str, Response]:
        method = request.method
        # The raw ASGI path: building starlette's URL object costs more than routing.
        path = request.scope["path"]
        parts = _split(path)
        if parts[:2] == ["v1", "decide"] and len(parts) == 2:
            self._allow(method, "POST")
            return "/v1/decide", await self.decide(request)
        if parts == ["v1", "decide", "batch"]:
            self._allow(method, "POST")
            return "/v1/decide/batch", await self.decide_batch(request)
        if parts == ["v1", "feedback"]:
            self._allow(method, "POST")
            return "/v1/feedback", await self.feedback(request)
        if len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[3] == "load":
            self._allow(method, "POST")
            return "/v1/models/{m}/load", await self.load_model(request, parts[2])
        if len(parts) == 4 and parts[:2] == ["v1", "experiments"] and parts[3] == "report":
            self._allow(method, "GET")
            return "/v1/experiments/{id}/report", await self.experiment_report(parts[2])
        if len(parts) == 4 and parts[:2] == ["v1", "experiments"] and parts[3] == "impact":
            self._allow(method, "GET")
            return "/v1/experiments/{id}/impact", await self.experiment_impact(
                parts[2], request.scope.get("query_string", b"")
            )
        if parts and parts[0] == "v2":
            return await self._v2(request, method, parts[1:], path)
        if parts == ["openapi.json"]:
            self._allow(method, "GET")
            return "/openapi.json", Response(self._openapi, media_type=JSON_TYPE)
        if parts == ["metrics"]:
            self._allow(method, "GET")
            return "/metrics", await self.prometheus()
        raise NotFound(f"no route for {path!r}")

    async def _v2(
        self, request: Any, method: str, parts: list[str], path: str
    ) -> tuple[str, Response]:
        if not parts:
            self._allow(method, "GET")
            return "/v2", self._json(server_metadata(__version__))
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            self._allow(method, "GET")
            if parts[1] == "live":
                return "/v2/health/live", Response(b"", status_code=200)
            await self.check_ready(timeout_s=2.0)
            return "/v2/health/ready", Response(b"", status_code=200)
        if parts == ["repository", "index"]:
            self._allow(method, "POST")
            index = [
                {"name": name, "version": info.version, "state": "READY"}
                for name, info in self.models.items()
            ]
            return "/v2/repository/index", self._json(index)
        if parts[0] != "models" or len(parts) < 2:
            raise NotFound(f"no route for {path!r}")
        if parts == ["models", "stats"]:
            self._allow(method, "GET")
            return "/v2/models/stats", self._json(
                {"model_stats": [s.as_dict() for s in self.stats.values()]}
            )
        info = self._model(parts[1])
        rest = parts[2:]
        if len(rest) >= 2 and rest[0] == "versions":
            if rest[1] != info.version:
                raise ModelNotFound(
                    f"model {info.model_name!r} has no version {rest[1]!r}; served version: "
                    f"{info.version!r}"
                )
            rest = rest[2:]
        action = rest[0] if rest else ""
        if len(rest) > 1 or action not in ("", "config", "ready", "stats", "infer"):
            raise NotFound(f"no route for {path!r}")
        route = "/v2/models/{m}" + (f"/{action}" if action else "")
        if action == "infer":
            self._allow(method, "POST")
            return route, await self.infer(request, info)
        self._allow(method, "GET")
        if action == "":
            return route, self._json(info.signature.metadata())
        if action == "config":
            return route, self._json(info.signature.config())
        if action == "stats":
            return route, self._json({"model_stats": [self.stats[info.model_name].as_dict()]})
        await self._check_scorer(info.name, timeout_s=2.0)
        return route, Response(b"", status_code=200)

    # -- handlers ---------------------------------------------------------------------------

    async def decide(self, request: Any) -> Response:
        t0 = time.perf_counter()
        fmt = media_type(request.headers.get("content-type"))
        body = await self.read_body(request)
        decoded = self.decisions.decode(body, fmt)
        item, pending = self.decisions.prepare(decoded, fmt)
        t1 = time.perf_counter()
        outcome = await bounded(
            self.scorers[pending.info.name].decide(item), self.timeout_s, "the decision"
        )
        payload = self.decisions.encode(self.decisions.respond(pending, outcome), fmt)
        self.metrics.stage_latency.observe(t1 - t0, tags=self._decode_tags[pending.info.name])
        return Response(payload, media_type=fmt)

    async def decide_batch(self, request: Any) -> Response:
        """Intervention decisions for many units in one call (``DecisionService.prepare_batch``)."""
        fmt = media_type(request.headers.get("content-type"))
        body = await self.read_body(request)
        decoded = self.decisions.decode_batch(body, fmt)
        settings = self.settings.get(decoded.use_case)
        interventions = settings.interventions if isinstance(settings, HillstromUseCase) else None
        max_units = interventions.max_batch_units if interventions is not None else 0
        pending = self.decisions.prepare_batch(decoded, max_units)
        outcome = await bounded(
            self.scorers[pending.info.name].decide_units(
                pending.columns,
                pending.unit_ids,
                pending.given_unit_ids,
                pending.decision_ids,
                pending.dry_run,
            ),
            self.timeout_s,
            "the batch of decisions",
        )
        payload = self.decisions.encode(self.decisions.respond_batch(pending, outcome), fmt)
        return Response(payload, media_type=fmt)

    async def feedback(self, request: Any) -> Response:
        fmt = media_type(request.headers.get("content-type"))
        body = await self.read_body(request)
        events, many = self.feedback_service.decode(body, fmt)
        if self.log is None:
            raise NotReady("feedback is not recorded: the decision log is disabled")
        results = await bounded(
            self.log.record_feedback_many_async(events), self.timeout_s, "recording the feedback"
        )
        status, answer = self.feedback_service.answer(results, many)
        return Response(self.decisions.encode(answer, fmt), status_code=status, media_type=fmt)

    async def load_model(self, request: Any, model_name: str) -> Response:
        """Serve another checkpoint (and/or version) of ``model_name`` (admin only)."""
        self.admin.check(request.headers.get("authorization"))
        info = self._model(model_name)
        body = await self.read_body(request)
        # JSON whatever the Content-Type: an admin call, not a hot path.
        wanted = decode_body(self._load_body, body, JSON)
        current = self.settings[info.name]
        checkpoint = wanted.checkpoint or current.checkpoint
        version = wanted.version or str(int(current.version) + 1)
        candidate = msgspec.structs.replace(current, checkpoint=checkpoint, version=version)
        try:
            describe(candidate)  # the files exist and hold a model of this use case's kind
        except ConfigError as exc:
            raise InvalidRequest(str(exc).split(": ", 1)[-1], "checkpoint") from None
        watch = self.models_watch or ModelWatch.local(self.apply_model)
        self.models_watch = watch
        t0 = time.perf_counter()
        choice = await watch.choose(info.name, checkpoint, version)
        served = self.infos[info.name]
        return self._json(
            {
                "model_name": served.model_name,
                "use_case": served.name,
                "version": served.version,
                "checkpoint": checkpoint,
                "model_checkpoint": served.checkpoint_id,
                "generation": choice.generation,
                "load_s": time.perf_counter() - t0,
            }
        )

    async def apply_model(self, use_case: str, choice: ModelChoice) -> None:
        """Serve ``choice`` in this replica: its colocated scorer swaps engines (or the
        use-case deployment is told), then validation and metadata follow."""
        settings = choice.settings(self.settings[use_case])
        info = describe(settings)
        scorer = self.scorers[use_case]
        await scorer.load_model(choice)
        self.settings[use_case] = settings
        self.infos[use_case] = info
        self.models[info.model_name] = info
        # Statistics restart with the version they describe (Triton's are per version).
        self.stats[info.model_name] = ModelStatistics(info.model_name, info.version)
        self.reports.model_changed(settings)

    async def experiment_report(self, name: str) -> Response:
        # Reading the log and replaying the model take a while: off the event loop.
        report = await bounded(
            asyncio.to_thread(self.reports.experiment_report, name), 60.0, "the report"
        )
        return self._json(report)

    async def experiment_impact(self, name: str, query: bytes) -> Response:
        """The causal impact of an intervention experiment from the log (query: see
        ``impact_query``); 404 when it has no decisions in the window."""
        self.reports.check_impact(name)  # an unknown experiment is 404 whatever the query
        options = impact_query(query)
        # Reading the log, replaying the ensemble and bootstrapping: off the event loop.
        report = await bounded(
            asyncio.to_thread(self.reports.experiment_impact, name, options),
            120.0,
            "the impact report",
        )
        return self._json(report)

    async def infer(self, request: Any, info: UseCaseInfo) -> Response:
        t0 = time.perf_counter()
        stats = self.stats[info.model_name]
        try:
            body = await self.read_body(request)
            decoded = self.v2.decode(body, request.headers.get(HEADER_LENGTH), info.signature)
            t1 = time.perf_counter()
            outcome = await bounded(
                self.scorers[info.name].infer(decoded.inputs), self.timeout_s, "the inference"
            )
            t2 = time.perf_counter()
            payload, headers = self.v2.encode(info.signature, decoded, outcome.outputs)
            t3 = time.perf_counter()
        except Exception:
            stats.record_failure(time.perf_counter() - t0)
            raise
        times = outcome.times
        in_batch = times.featurize_s + times.model_s + times.select_s
        stats.record_success(
            decoded.batch_size,
            times.batch_size,
            t3 - t0,
            max(0.0, (t2 - t1) - in_batch),
            (t1 - t0 + times.featurize_s, times.model_s, t3 - t2),
        )
        self.metrics.stage_latency.observe(t1 - t0, tags=self._decode_tags[info.name])
        media = headers.pop("content-type")
        return Response(payload, headers=headers, media_type=media)

    def prepare_metrics(self) -> None:
        """Import the metrics client and find the node's metrics export now, at start:
        done by the first ``GET /metrics`` instead, the import (aiohttp builds its TLS
        context) and the cluster lookup stalled the event loop, and every request waiting
        on it (found by sampling the loop thread's stack under open-loop load)."""
        import aiohttp  # noqa: F401

        if self._metrics_url is None:
            self._metrics_url = self._find_metrics_url()

    async def prometheus(self) -> Response:
        import aiohttp

        if self._metrics_url is None:
            self._metrics_url = self._find_metrics_url()
        if self._metrics_url is None:
            raise NotReady("metrics export is not available (Ray's metrics agent not found)")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            text = await fetch_metrics(self._session, self._metrics_url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotReady(f"metrics export at {self._metrics_url} did not answer: {exc}") from None
        return Response(text.encode(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- helpers ----------------------------------------------------------------------------

    async def check_ready(self, timeout_s: float) -> None:
        if self.draining:
            raise NotReady("the server is shutting down")
        for name in self.scorers:
            await self._check_scorer(name, timeout_s)

    async def _check_scorer(self, name: str, timeout_s: float) -> None:
        if name in self._ready:
            return
        try:
            await bounded(self.scorers[name].ready(), timeout_s, f"use case {name!r}")
        except Exception as exc:
            raise NotReady(f"use case {name!r} is not ready: {http_error(exc).message}") from None
        self._ready.add(name)

    def _model(self, name: str) -> UseCaseInfo:
        info = self.models.get(name)
        if info is None:
            served = ", ".join(sorted(self.models))
            raise ModelNotFound(f"model {name!r} is not served; served models: {served}")
        return info

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise MethodNotAllowed(f"method {method} is not allowed here", allowed)

    def _json(self, value: Any) -> Response:
        return Response(self.json.encode(value), media_type=JSON_TYPE)

    async def read_body(self, request: Any) -> bytes:
        """The body, at most ``max_body_bytes`` before and after decompression (413)."""
        limit = self.max_body
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise InvalidRequest(
                    f"must be an integer, got {declared!r}", "Content-Length"
                ) from None
            if n > limit:
                raise PayloadTooLarge(
                    f"body of {n} bytes exceeds the limit of {limit} bytes (server.max_body_bytes)"
                )
            body = await request.body()
        else:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"body exceeds the limit of {limit} bytes (server.max_body_bytes)"
                    )
                chunks.append(chunk)
            body = b"".join(chunks)
        encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding not in ("gzip", "deflate"):
            raise UnsupportedMediaType(
                f"unsupported encoding {encoding!r}; use gzip, deflate or none", "Content-Encoding"
            )
        return _inflate(body, encoding, limit)


# Query parameters of GET /v1/experiments/{id}/impact (``ImpactOptions``' fields): (kind,
# low, high).
_IMPACT_PARAMS: dict[str, tuple[str, float, float]] = {
    "feedback_only": ("bool", 0, 0),
    "since": ("time", 0, 0),
    "until": ("time", 0, 0),
    "n_bootstrap": ("int", 10, 10_000),
    "qini_resamples": ("int", 10, 2_000),
    "seed": ("int", 0, 2**32 - 1),
}


def impact_query(query: bytes) -> ImpactOptions:
    """The impact route's parameters (``ImpactOptions``; omitted ones get their
    defaults); InvalidRequest naming a bad one."""
    from urllib.parse import parse_qsl

    out: dict[str, Any] = {}
    seen: set[str] = set()
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        spec = _IMPACT_PARAMS.get(name)
        if spec is None:
            raise InvalidRequest(
                f"is not a parameter of this route; known: {', '.join(_IMPACT_PARAMS)}", name
            )
        if name in seen:
            raise InvalidRequest("is given twice", name)
        seen.add(name)
        kind, low, high = spec
        if kind == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidRequest(f"must be true or false, got {value!r}", name)
            out[name] = value.lower() in ("true", "1")
        elif kind == "time":
            try:
                t = float(value)
            except ValueError:
                raise InvalidRequest(f"must be epoch seconds, got {value!r}", name) from None
            if not math.isfinite(t):
                raise InvalidRequest(f"must be finite, got {value!r}", name)
            out[name] = t
        else:
            try:
                n = int(value)
            except ValueError:
                raise InvalidRequest(f"must be an integer, got {value!r}", name) from None
            if not low <= n <= high:
                raise InvalidRequest(f"must be in [{low}, {high}], got {n}", name)
            out[name] = n
    options = ImpactOptions(**out)
    if options.since is not None and options.until is not None and options.until <= options.since:
        raise InvalidRequest(f"must be after since ({options.since}), got {options.until}", "until")
    return options


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"body is not valid {encoding}: {exc}", "Content-Encoding") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            f"decompressed body exceeds the limit of {limit} bytes (server.max_body_bytes)"
        )
    if not inflater.eof:
        raise InvalidRequest(f"body is truncated {encoding} data", "Content-Encoding")
    return out
