"""Every environment variable ``nudgeserve.serve`` reads, each with a typed getter.

Settings belong in the config file; the environment only says where things are (the
config file, Ray's temp dir, an existing cluster) and carries Ray's own switches, which
Ray reads in each of its processes and which ``nudgeserve run`` therefore sets before it
starts Ray (see ``ray_ingress_environment``).
"""

from __future__ import annotations

import os
from pathlib import Path

# Config file used when ``nudgeserve run`` gets no --config.
ENV_CONFIG = "NUDGESERVE_CONFIG"
# Where a local Ray keeps its session files (sockets included; keep the path short).
ENV_RAY_TEMP_DIR = "NUDGESERVE_RAY_TEMP_DIR"
# Address of a running Ray cluster to connect to instead of starting a local one.
ENV_RAY_ADDRESS = "RAY_ADDRESS"
# Ray's authentication mode ("token" or "disabled"); unset means Ray's default (token).
ENV_RAY_AUTH_MODE = "RAY_AUTH_MODE"
# A Ray authentication token given directly.
ENV_RAY_AUTH_TOKEN = "RAY_AUTH_TOKEN"
# A file holding a Ray authentication token.
ENV_RAY_AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
# Ray Serve's switches for the ingress path (read by Ray in every process).
ENV_DIRECT_INGRESS = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
ENV_THROUGHPUT_OPTIMIZED = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
ENV_DIRECT_INGRESS_MIN_HTTP_PORT = "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"
ENV_DIRECT_INGRESS_MAX_HTTP_PORT = "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"
# How often Ray's processes push metrics to the node's exporter (ms).
ENV_METRICS_REPORT_INTERVAL_MS = "RAY_metrics_report_interval_ms"
# Niceness of Ray's worker processes (Ray's default: 15).
ENV_WORKER_NICENESS = "RAY_worker_niceness"
# The admin token of admin routes (POST /v1/models/{m}/load); wins over the config's.
ENV_ADMIN_TOKEN = "NUDGESERVE_ADMIN_TOKEN"
# Where gateway replicas deployed with `serve deploy` serve HTTP (ingress: nudgeserve).
ENV_HTTP_HOST = "NUDGESERVE_HTTP_HOST"
ENV_HTTP_PORT = "NUDGESERVE_HTTP_PORT"


def _get(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def config_path() -> Path | None:
    """``NUDGESERVE_CONFIG`` as a path, or None when unset."""
    value = _get(ENV_CONFIG)
    return Path(value) if value else None


def ray_temp_dir(default: Path) -> Path:
    """``NUDGESERVE_RAY_TEMP_DIR``, else ``default``."""
    value = _get(ENV_RAY_TEMP_DIR)
    return Path(value) if value else default


def admin_token() -> str | None:
    """``NUDGESERVE_ADMIN_TOKEN``, or None when unset or empty."""
    return _get(ENV_ADMIN_TOKEN)


def listen_address() -> tuple[str, int]:
    """(host, port) from ``NUDGESERVE_HTTP_HOST`` (default 0.0.0.0) and
    ``NUDGESERVE_HTTP_PORT`` (default 8000), for gateways deployed with ``serve deploy``."""
    host = _get(ENV_HTTP_HOST) or "0.0.0.0"
    text = _get(ENV_HTTP_PORT) or "8000"
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        from nudgeserve.serve.errors import ConfigError

        raise ConfigError(f"{ENV_HTTP_PORT} = {text!r} is invalid: must be a port", ENV_HTTP_PORT)
    return host, port


def ray_address() -> str | None:
    """``RAY_ADDRESS`` (an existing cluster), or None to start a local Ray."""
    return _get(ENV_RAY_ADDRESS)


def ray_auth_mode() -> str | None:
    """``RAY_AUTH_MODE`` lower-cased, or None when unset (Ray then enables token auth)."""
    value = _get(ENV_RAY_AUTH_MODE)
    return value.lower() if value else None


def ray_auth_token_available() -> bool:
    """Whether a Ray token is given by ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``."""
    return _get(ENV_RAY_AUTH_TOKEN) is not None or _get(ENV_RAY_AUTH_TOKEN_PATH) is not None


def is_set(name: str) -> bool:
    """Whether the user set ``name`` (to anything, even empty)."""
    return name in os.environ


def flag(name: str) -> bool:
    """A Ray-style boolean switch: set to ``"1"`` means on."""
    return os.environ.get(name, "0") == "1"


def ingress_mode_in_environment() -> str:
    """The ingress mode this process's Ray switches select (as Ray itself resolves them)."""
    if flag(ENV_THROUGHPUT_OPTIMIZED):
        return "throughput_optimized"
    if flag(ENV_DIRECT_INGRESS):
        return "direct"
    return "proxy"


def ray_ingress_environment(mode: str, port: int, n_ports: int) -> dict[str, str]:
    """The Ray switches for ingress ``mode`` (``proxy``/``direct``/``throughput_optimized``).

    In the direct modes each ingress replica serves HTTP itself on a port Ray allocates
    from a range; the range starts at ``port`` so the first gateway replica on a node
    answers on the configured port (``n_ports`` ports are reserved for more replicas).
    """
    if mode in ("proxy", "nudgeserve"):
        # ``nudgeserve``: the gateway serves HTTP itself; Ray's proxy listens elsewhere.
        return {ENV_DIRECT_INGRESS: "0", ENV_THROUGHPUT_OPTIMIZED: "0"}
    env = {
        ENV_DIRECT_INGRESS: "1",
        ENV_THROUGHPUT_OPTIMIZED: "1" if mode == "throughput_optimized" else "0",
        ENV_DIRECT_INGRESS_MIN_HTTP_PORT: str(port),
        ENV_DIRECT_INGRESS_MAX_HTTP_PORT: str(port + n_ports),
    }
    return env
