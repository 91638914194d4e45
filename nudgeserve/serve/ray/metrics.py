"""The metrics' Ray side: ``ray.util.metrics`` recorders for our families
(``serve.metrics``), and where this node exports them in Prometheus text."""

from __future__ import annotations

import ray

from nudgeserve.serve.metrics import Family, Recorder, ServeMetrics


def ray_metrics() -> ServeMetrics:
    """The replica's metrics, recorded with Ray's metrics when Ray runs in this process
    (else no-ops: the same code paths outside Ray)."""
    if not ray.is_initialized():
        return ServeMetrics()
    return ServeMetrics(_ray_recorder)


def _ray_recorder(family: Family) -> Recorder:
    from ray.util.metrics import Counter, Gauge, Histogram

    if family.kind == "counter":
        return Counter(family.name, description=family.description, tag_keys=family.tag_keys)
    if family.kind == "gauge":
        return Gauge(family.name, description=family.description, tag_keys=family.tag_keys)
    return Histogram(
        family.name,
        description=family.description,
        boundaries=list(family.boundaries),
        tag_keys=family.tag_keys,
    )


def local_metrics_url() -> str | None:
    """The Prometheus export URL of this process's Ray node, or None outside Ray."""
    if not ray.is_initialized():
        return None
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("Alive"):
            port = node.get("MetricsExportPort")
            if port:
                return f"http://{node['NodeManagerAddress']}:{port}/metrics"
    return None
