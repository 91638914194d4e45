"""Prometheus metrics: recorded in every replica with ``ray.util.metrics``, served on the
server's own port by the gateway (``GET /metrics``).

Ray gathers every process's metrics on each node and exports them in Prometheus text from
the node's metrics agent; the gateway fetches its node's export and returns our families
(``ray_nudgeserve_*``) and the Ray Serve families that show load (queued and ongoing
requests per deployment and replica, request counts, processing latency). On a cluster, point Prometheus at every node's export port for
the whole picture; ``/metrics`` shows the gateway's node.

Outside Ray (unit tests) the metrics are no-ops, so the code paths stay the same.
"""

from __future__ import annotations

import re
from typing import Any

LATENCY_BOUNDARIES_S = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
    5.0,
]  # fmt: skip
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
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


class _Null:
    """Stands in for a Ray metric outside Ray."""

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        pass

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass


class ServeMetrics:
    """The metrics one process records (create in a replica's ``__init__``).

    requests: requests answered, by route and status code; errors: the non-2xx ones, by
    route and code; request_latency: receive-to-answer seconds by route; stage_latency:
    seconds per stage (decode, featurize, model, select, encode) by use case; batch_size:
    requests per batch by use case and method; queue_depth: requests waiting in this
    replica for their batch, by use case; log_queue: writes waiting for the decision
    log's writer; learner_staleness: age of the replica's bandit snapshot.
    """

    def __init__(self) -> None:
        try:
            import ray

            enabled = ray.is_initialized()
        except ImportError:  # pragma: no cover - ray is a dependency
            enabled = False
        if not enabled:
            null = _Null()
            self.requests = self.errors = self.request_latency = null
            self.stage_latency = self.batch_size = self.queue_depth = null
            self.log_queue = self.learner_staleness = null
            return
        from ray.util.metrics import Counter, Gauge, Histogram

        self.requests = Counter(
            "nudgeserve_requests_total",
            description="HTTP requests answered, by route and status code.",
            tag_keys=("route", "code"),
        )
        self.errors = Counter(
            "nudgeserve_errors_total",
            description="HTTP requests answered with an error status, by route and code.",
            tag_keys=("route", "code"),
        )
        self.request_latency = Histogram(
            "nudgeserve_request_latency_seconds",
            description="Seconds from receiving a request to answering it, by route.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("route",),
        )
        self.stage_latency = Histogram(
            "nudgeserve_stage_latency_seconds",
            description="Seconds per stage: decode, featurize, model, select, encode.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("use_case", "stage"),
        )
        self.batch_size = Histogram(
            "nudgeserve_batch_size",
            description="Requests per model batch, by use case and method (decide, infer).",
            boundaries=BATCH_BOUNDARIES,
            tag_keys=("use_case", "method"),
        )
        self.queue_depth = Gauge(
            "nudgeserve_queue_depth",
            description="Requests waiting in a replica for their batch, by use case.",
            tag_keys=("use_case",),
        )
        self.log_queue = Gauge(
            "nudgeserve_decision_log_queue_depth",
            description="Writes waiting for the replica's decision-log writer, by use case.",
            tag_keys=("use_case",),
        )
        self.learner_staleness = Gauge(
            "nudgeserve_learner_staleness_seconds",
            description="Age of the bandit snapshot a replica decides with (since its "
            "last successful fetch from the learner), by use case.",
            tag_keys=("use_case",),
        )


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


def local_metrics_url() -> str | None:
    """The Prometheus export URL of this process's Ray node, or None outside Ray."""
    import ray

    if not ray.is_initialized():
        return None
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("Alive"):
            port = node.get("MetricsExportPort")
            if port:
                return f"http://{node['NodeManagerAddress']}:{port}/metrics"
    return None


async def fetch_metrics(session: Any, url: str, timeout_s: float = 3.0) -> str:
    """GET ``url`` with an aiohttp session; the filtered Prometheus text."""
    import aiohttp

    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        response.raise_for_status()
        return filter_families(await response.text())
