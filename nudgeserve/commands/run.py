"""``nudgeserve run``: start a local Ray and serve the decision and KServe v2 APIs."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

HELP = "start a local Ray and serve the decision and KServe v2 APIs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (a Ray Serve config or our settings alone); default: "
        "$NUDGESERVE_CONFIG, else the built-in defaults (configs/default.yaml)",
    )
    parser.add_argument(
        "--host", default=None, help="interface to listen on (default: the config's, 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="HTTP port (default: the config's, 8000)"
    )
    parser.add_argument(
        "--ray-temp-dir",
        type=Path,
        default=None,
        help="Ray's session directory (default: ./.ray, or /tmp when that path is long)",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs the local Ray may use (default: all)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the server keeps its state, the decision log among it (default: the "
        "config's state_dir, ./.state)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config and checkpoints, print the result and exit",
    )


def with_state_dir(config, state_dir: Path):
    """``config`` with ``state_dir`` replaced (ConfigError when it is not a directory)."""
    import msgspec

    from nudgeserve.serve.errors import ConfigError

    if state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(f"--state-dir = {state_dir} is invalid: not a directory", "state_dir")
    return msgspec.structs.replace(config, state_dir=str(state_dir))


def run(args: argparse.Namespace) -> int:
    from nudgeserve.serve import _env
    from nudgeserve.serve.config import HttpOptions, default_config, load_config
    from nudgeserve.serve.errors import ConfigError

    path = args.config or _env.config_path()
    try:
        if path is not None:
            loaded = load_config(path)
            config, http = loaded.app, loaded.http
        else:
            config, http = default_config(), HttpOptions()
        host = args.host or http.host
        port = args.port if args.port is not None else http.port
        if not 1 <= port <= 65535:
            raise ConfigError(f"--port = {port} is invalid: must be in [1, 65535]", "port")
        if args.num_cpus is not None and args.num_cpus < 1:
            raise ConfigError(f"--num-cpus = {args.num_cpus} is invalid: must be >= 1", "num_cpus")
        if args.state_dir is not None:
            config = with_state_dir(config, args.state_dir)
        if args.check:
            from nudgeserve.serve.engine.describe import describe

            for settings in config.use_cases:
                info = describe(settings)
                print(f"{info.name}: model {info.model_name} version {info.version}")
            if config.decision_log.enabled:
                path = config.decision_log.log_config(config.state_dir).path
                print(f"decision log: {path}")
            print(f"config OK ({path or 'built-in defaults'})")
            return 0
        from nudgeserve.serve.ray.local import start_local

        server = start_local(config, host, port, temp_dir=args.ray_temp_dir, num_cpus=args.num_cpus)
    except ConfigError as exc:
        print(f"nudgeserve run: {exc}", file=sys.stderr)
        return 2
    print(
        f"nudgeserve: serving on {server.url} (ingress {config.server.ingress}, placement "
        f"{config.server.placement}); Ctrl-C stops",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print("nudgeserve: stopping", flush=True)
        server.stop()
    return 0
