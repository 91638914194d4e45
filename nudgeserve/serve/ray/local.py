"""Start and stop Ray and the application on this machine (``nudgeserve run``, tests).

``prepare_environment`` must run before Ray starts: Ray reads its switches from the
environment in every process it spawns, and the ingress mode, token authentication and
metrics interval are such switches. It changes only variables the user has not set.

Token authentication: Ray enables it by default for a new local cluster and would write a
token to ``~/.ray/auth_token``. Unless ``RAY_AUTH_MODE`` or a token is already given, a
fresh random token is put in ``RAY_AUTH_TOKEN`` for this run (Ray's processes inherit
it) and written, readable only by its owner, to ``<ray temp dir>/auth_token`` so that
``ray``/``serve`` commands in another shell can use it via ``RAY_AUTH_TOKEN_PATH``.
``RAY_AUTH_MODE=disabled`` turns authentication off.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from nudgeserve.serve import _env

# Unix socket paths (under Ray's temp dir) must stay under ~107 bytes; Ray appends about
# 70, so a longer base falls back to the system temp dir.
MAX_TEMP_DIR_CHARS = 36
# Extra ports reserved after --port for more gateway replicas on one node (direct ingress).
GATEWAY_PORTS = 8
# Ray's default is 10 s between metric exports; a local server reports every 2 s.
LOCAL_METRICS_INTERVAL_MS = "2000"
# Ray starts its workers at niceness 15; on a small machine a client or any other process
# then takes the CPU from the gateway under load (seen as a tail of /v1/decide latency
# while profiling). A local server runs its workers at normal priority.
LOCAL_WORKER_NICENESS = "0"
# A direct-ingress replica waits this long for an external load balancer to deregister it
# before stopping (Ray's default 30 s); a local server has none, so stopping is quick.
LOCAL_DRAINING_PERIOD_S = "1"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a TCP server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def default_temp_dir() -> Path:
    """``./.ray`` when its path is short enough for Ray's sockets, else under /tmp."""
    here = Path.cwd() / ".ray"
    if len(str(here)) <= MAX_TEMP_DIR_CHARS:
        return here
    return Path(tempfile.gettempdir()) / f"nudgeserve-ray-{os.getuid()}"


def prepare_environment(ingress: str, port: int, temp_dir: Path) -> dict[str, str]:
    """Set Ray's switches for this run (unset ones only); returns what was set."""
    wanted = dict(_env.ray_ingress_environment(ingress, port, GATEWAY_PORTS))
    if ingress != "proxy":
        wanted["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = LOCAL_DRAINING_PERIOD_S
    wanted[_env.ENV_METRICS_REPORT_INTERVAL_MS] = LOCAL_METRICS_INTERVAL_MS
    wanted[_env.ENV_WORKER_NICENESS] = LOCAL_WORKER_NICENESS
    changed = {}
    for name, value in wanted.items():
        # The ingress switches follow the config (they must agree with the port range);
        # the others respect a value the user already set.
        if _env.is_set(name) and not name.startswith("RAY_SERVE_"):
            continue
        os.environ[name] = value
        changed[name] = value
    mode = _env.ray_auth_mode()
    if mode in (None, "token") and not _env.ray_auth_token_available():
        token = secrets.token_hex(32)
        temp_dir.mkdir(parents=True, exist_ok=True)
        path = temp_dir / "auth_token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        os.environ[_env.ENV_RAY_AUTH_TOKEN] = token
        changed[_env.ENV_RAY_AUTH_TOKEN_PATH + " (for other shells)"] = str(path)
    return changed


# Longest wait for the learners to save their state when the application stops.
LEARNER_STOP_TIMEOUT_S = 20.0


@dataclass
class LocalServer:
    """A running application; ``url`` is where clients connect."""

    url: str
    proxy_url: str
    temp_dir: Path
    started_ray: bool
    decision_log: str | None = None
    config: Any = None

    def stop(self) -> None:
        """Shut the application down (its learners save their state first), and Ray if
        this process started it."""
        import ray
        from ray import serve

        if self.config is not None and self.config.server.ingress == "nudgeserve":
            # Every gateway replica answers 503 to new requests and not-ready from now on
            # (within its 100 ms poll), finishing the requests in flight.
            from nudgeserve.serve.ray.deployments import request_drain

            with contextlib.suppress(Exception):
                request_drain()
        if self.config is not None:
            from nudgeserve.serve.ray.learner import stop_learners

            def save_learners() -> None:
                try:
                    stop_learners(self.config)
                except Exception as exc:  # the state is a cache of the log: warn, go on
                    print(f"nudgeserve: could not stop the learners cleanly: {exc}", flush=True)

            # Bounded: when a signal sent to the whole process group has already ended
            # Ray's raylet, looking the learner actor up never returns, and a stop must
            # not hang. The learner's state is a cache of the decision log, so skipping
            # its save loses nothing that cannot be relearned.
            saver = threading.Thread(target=save_learners, name="stop-learners", daemon=True)
            saver.start()
            saver.join(LEARNER_STOP_TIMEOUT_S)
            if saver.is_alive():
                print(
                    f"nudgeserve: learners did not stop within {LEARNER_STOP_TIMEOUT_S:.0f} s; "
                    "going on (their state is rebuilt from the decision log)",
                    flush=True,
                )
        with contextlib.suppress(Exception):
            serve.shutdown()
        if self.started_ray:
            ray.shutdown()


def wait_ready(url: str, timeout_s: float) -> None:
    """Poll ``{url}/v2/health/ready`` until it answers 200; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
                last = f"status {r.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:g} s ({last})")


def start_local(
    config,
    host: str,
    port: int,
    *,
    temp_dir: Path | None = None,
    num_cpus: int | None = None,
    ready_timeout_s: float = 180.0,
    log_to_driver: bool = True,
) -> LocalServer:
    """Start (or join, with ``RAY_ADDRESS``) Ray and run the application.

    config: a validated ``ServeConfig``. The gateway answers on ``host:port``; with the
    ``nudgeserve`` and direct ingress modes Ray's proxy listens on another free port
    (``proxy_url``).
    Returns once ``/v2/health/ready`` answers.
    """
    from nudgeserve.serve.engine.describe import describe
    from nudgeserve.serve.errors import ConfigError

    for settings in config.use_cases:
        describe(settings)  # a bad checkpoint fails before Ray starts
    # Replicas may run in another working directory: every one must write the same file.
    config = msgspec.structs.replace(config, state_dir=os.path.abspath(config.state_dir))
    if config.decision_log.enabled:
        Path(config.decision_log.log_config(config.state_dir).path).parent.mkdir(
            parents=True, exist_ok=True
        )
    if not port_is_free(host, port):
        # With direct ingress Ray would quietly take the next port of its range.
        raise ConfigError(f"port {port} on {host} is already in use", "port")
    temp_dir = _env.ray_temp_dir(temp_dir or default_temp_dir())
    ingress = config.server.ingress
    prepare_environment(ingress, port, temp_dir)

    import ray
    from ray import serve

    from nudgeserve.serve.ray.app import APP_NAME, build_app

    address = _env.ray_address()
    started = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        ray.init(
            address=address,
            _temp_dir=str(temp_dir.resolve()) if address is None else None,
            include_dashboard=False,
            num_cpus=num_cpus if address is None else None,
            log_to_driver=log_to_driver,
            _metrics_export_port=free_port() if address is None else None,
        )
    proxy_port = port if ingress == "proxy" else free_port(host)
    listen = (host, port) if ingress == "nudgeserve" else None
    server = LocalServer(
        url=f"http://{host}:{port}",
        proxy_url=f"http://{host}:{proxy_port}",
        temp_dir=temp_dir,
        started_ray=started,
        decision_log=(
            config.decision_log.log_config(config.state_dir).path
            if config.decision_log.enabled
            else None
        ),
        config=config,
    )
    try:
        from nudgeserve.serve.ray.deployments import clear_drain

        clear_drain()  # a drain request left by an earlier run on this cluster
        serve.start(http_options={"host": host, "port": proxy_port})
        serve.run(build_app(config, listen=listen), name=APP_NAME, route_prefix="/")
        wait_ready(_client_url(server.url), ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _client_url(url: str) -> str:
    # A server bound to every interface is reached on loopback from here.
    return url.replace("://0.0.0.0:", "://127.0.0.1:")
