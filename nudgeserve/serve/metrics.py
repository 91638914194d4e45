"""Prometheus metrics: the families every replica records, and the filter that serves them
on the server's own port (``GET /metrics``).

Under Ray the recorders are ``ray.util.metrics`` ones (``serve.ray.metrics`` builds them;
the only part that imports Ray).

Ray gathers every process's metrics on each node and exports them in Prometheus text from
the node's metrics agent; the gateway fetches its node's export and returns our families
(``ray_nudgeserve_*``) and the Ray Serve families that show load (queued and ongoing
requests per deployment and replica, request counts, processing latency). On a cluster,
point Prometheus at every node's export port for the whole picture; ``/metrics`` shows the
gateway's node.

Outside Ray (unit tests) the metrics are no-ops, so the code paths stay the same.

``/metrics`` also carries ``nudgeserve_kernel_backend{op, backend, source} 1``, one line
per kernel op the gateway process has chosen (``kernel_backend_text``, from
``kernels.backend_report``): which backend runs each op and why (``env``, ``profile``,
``cache``/``measured`` for the choice auto-measured at start, ``default``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

LATENCY_BOUNDARIES_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
    5.0,
)  # fmt: skip
BATCH_BOUNDARIES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Our families, and Ray Serve's that say how loaded the deployments are (its others, e.g.
# long-poll and start-up latencies, are left to Ray's own export).
EXPORTED_PREFIXES = (
    "ray_nudgeserve_",
    "ray_serve_deployment_queued_queries",
    "ray_serve_num_ongoing_requests_at_replicas",
    "ray_serve_replica_processing_queries",
    "ray_serve_replica_utilization_percent",
    "ray_serve_deployment_request_counter",
    "ray_serve_deployment_processing_latency_ms",
    "ray_serve_num_http_requests",
    "ray_serve_num_http_error_requests",
    "ray_serve_num_deployment_http_error_requests",
    "ray_serve_autoscaling_target_replicas",
)


@dataclass(frozen=True)
class Family:
    """One metric family: ``kind`` (``counter``, ``histogram``, ``gauge``), its name
    without Ray's ``ray_`` prefix, help text, tag keys and histogram boundaries."""

    kind: Literal["counter", "histogram", "gauge"]
    name: str
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()


class Recorder(Protocol):
    """What the serving code calls on a metric (Ray's ``Counter``/``Histogram``/``Gauge``
    have these methods; each family uses the one of its kind)."""

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None: ...

    def set(self, value: float, tags: dict[str, str] | None = None) -> None: ...


class _NoOp:
    """Records nothing: the recorder outside Ray, so the code paths stay the same."""

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        pass

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass


# Seconds a buffered counter or gauge keeps its values before it passes them on.
FLUSH_INTERVAL_S = 1.0


class _Buffered:
    """A counter or gauge recorded in this process and passed to ``recorder`` at most
    once per ``FLUSH_INTERVAL_S`` (and on ``flush``): a counter the sum of its
    increments, a gauge its last value, per tag set. Recording into Ray's metrics costs
    microseconds a call on the request path; a Prometheus scrape every few seconds sees
    the same figures (a second later at most)."""

    __slots__ = ("recorder", "kind", "pending", "due")

    def __init__(self, recorder: Recorder, kind: str) -> None:
        self.recorder = recorder
        self.kind = kind
        self.pending: dict[tuple, float] = {}
        self.due = time.monotonic() + FLUSH_INTERVAL_S

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        key = tuple(tags.items()) if tags else ()
        self.pending[key] = self.pending.get(key, 0.0) + value
        if time.monotonic() >= self.due:
            self.flush()

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.pending[tuple(tags.items()) if tags else ()] = value
        if time.monotonic() >= self.due:
            self.flush()

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        raise TypeError(f"a {self.kind} has no observe")

    def flush(self) -> None:
        self.due = time.monotonic() + FLUSH_INTERVAL_S
        pending, self.pending = self.pending, {}
        record = self.recorder.inc if self.kind == "counter" else self.recorder.set
        for key, value in pending.items():
            record(value, tags=dict(key))


# Every family we record, by the ``ServeMetrics`` attribute that records it.
FAMILIES: dict[str, Family] = {
    "requests": Family(
        "counter",
        "nudgeserve_requests_total",
        "HTTP requests answered, by route and status code.",
        ("route", "code"),
    ),
    "errors": Family(
        "counter",
        "nudgeserve_errors_total",
        "HTTP requests answered with an error status, by route and code.",
        ("route", "code"),
    ),
    "request_latency": Family(
        "histogram",
        "nudgeserve_request_latency_seconds",
        "Seconds from receiving a request to answering it, by route.",
        ("route",),
        LATENCY_BOUNDARIES_S,
    ),
    "stage_latency": Family(
        "histogram",
        "nudgeserve_stage_latency_seconds",
        "Seconds per stage: decode, featurize, model, select, encode.",
        ("use_case", "stage"),
        LATENCY_BOUNDARIES_S,
    ),
    "batch_size": Family(
        "histogram",
        "nudgeserve_batch_size",
        "Requests per model batch, by use case and method (decide, infer).",
        ("use_case", "method"),
        BATCH_BOUNDARIES,
    ),
    "queue_depth": Family(
        "gauge",
        "nudgeserve_queue_depth",
        "Requests waiting in a replica for their batch, by use case.",
        ("use_case",),
    ),
    "queue_time": Family(
        "histogram",
        "nudgeserve_queue_time_seconds",
        "Seconds a request waited in its replica before its batch started, by use case.",
        ("use_case",),
        LATENCY_BOUNDARIES_S,
    ),
    "loop_lag": Family(
        "gauge",
        "nudgeserve_event_loop_lag_seconds",
        "Largest delay of the gateway's event loop over the last second (how long a "
        "request that has arrived waits before the loop reads it).",
        (),
    ),
    "admission": Family(
        "counter",
        "nudgeserve_admission_total",
        "Decision and inference requests admitted or shed (503) by the latency budget.",
        ("decision",),
    ),
    "log_queue": Family(
        "gauge",
        "nudgeserve_decision_log_queue_depth",
        "Writes waiting for the replica's decision-log writer, by use case.",
        ("use_case",),
    ),
    "learner_staleness": Family(
        "gauge",
        "nudgeserve_learner_staleness_seconds",
        "Age of the bandit snapshot a replica decides with (since its last successful "
        "fetch from the learner), by use case.",
        ("use_case",),
    ),
}


class ServeMetrics:
    """The metrics one process records (create one per replica).

    requests: requests answered, by route and status code; errors: the non-2xx ones, by
    route and code; request_latency: receive-to-answer seconds by route; stage_latency:
    seconds per stage (decode, featurize, model, select, encode) by use case; batch_size:
    requests per batch by use case and method; queue_depth: requests waiting in this
    replica for their batch, by use case; queue_time: seconds each request waited for its
    batch; loop_lag: the gateway loop's largest delay over the last second; admission:
    requests admitted or shed by the latency budget; log_queue: writes waiting for the decision
    log's writer; learner_staleness: age of the replica's bandit snapshot.

    make_recorder: builds the recorder of a ``Family`` (``serve.ray.metrics`` passes
    Ray's); None: every metric is a no-op (outside Ray).
    """

    requests: Recorder
    errors: Recorder
    request_latency: Recorder
    stage_latency: Recorder
    batch_size: Recorder
    queue_depth: Recorder
    queue_time: Recorder
    loop_lag: Recorder
    admission: Recorder
    log_queue: Recorder
    learner_staleness: Recorder

    def __init__(self, make_recorder: Callable[[Family], Recorder] | None = None) -> None:
        no_op = _NoOp()
        self._buffered: list[_Buffered] = []
        for attr, family in FAMILIES.items():
            if make_recorder is None:
                setattr(self, attr, no_op)
                continue
            recorder = make_recorder(family)
            if family.kind != "histogram":
                # Counters and gauges are buffered (``_Buffered``); histograms record
                # every observation.
                recorder = _Buffered(recorder, family.kind)
                self._buffered.append(recorder)
            setattr(self, attr, recorder)

    def flush(self) -> None:
        """Pass every buffered counter and gauge value on now (the owner's loop calls it
        once a second, so figures recorded just before traffic stops are not held)."""
        for recorder in self._buffered:
            recorder.flush()


def filter_families(text: str, prefixes: tuple[str, ...] = EXPORTED_PREFIXES) -> str:
    """Keep the metric families (with their HELP/TYPE lines) whose names start with one
    of ``prefixes``, from a Prometheus text exposition."""
    kept = []
    keep = False
    for line in text.splitlines():
        if line.startswith("# "):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                keep = parts[2].startswith(prefixes)
            if keep:
                kept.append(line)
            continue
        if not line:
            continue
        name = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
        if name and name.group(0).startswith(prefixes):
            kept.append(line)
    return "\n".join(kept) + "\n"


KERNEL_BACKEND = "nudgeserve_kernel_backend"


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def kernel_backend_text(report: dict[str, dict[str, Any]] | None = None) -> str:
    """The info family ``nudgeserve_kernel_backend{op, backend, source} 1`` in Prometheus
    text, one line per op of ``report`` (default: ``kernels.backend_report`` of the ops
    this process has chosen; a scrape never loads a kernel)."""
    if report is None:
        from nudgeserve.kernels import backend_report

        report = backend_report(resolve=False)
    lines = [
        f"# HELP {KERNEL_BACKEND} Backend running each kernel op in this process and where "
        "the choice came from (env, profile, cache, measured, default).",
        f"# TYPE {KERNEL_BACKEND} gauge",
    ]
    for op, entry in sorted(report.items()):
        labels = f'op="{_label(op)}",backend="{_label(entry["backend"])}"'
        lines.append(f'{KERNEL_BACKEND}{{{labels},source="{_label(entry["source"])}"}} 1')
    return "\n".join(lines) + "\n"


async def fetch_metrics(session: Any, url: str, timeout_s: float = 3.0) -> str:
    """GET ``url`` with an aiohttp session; the filtered Prometheus text, followed by this
    process's kernel backends (``kernel_backend_text``)."""
    import aiohttp

    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        response.raise_for_status()
        return filter_families(await response.text()) + kernel_backend_text()
