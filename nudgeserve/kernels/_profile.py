"""Time every backend of every op on this machine and pick the fastest per op.

``nudgeserve bench-kernels --write-profile`` calls ``write_profile``; the choice is read at
import by ``_backend`` (see there for precedence).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from nudgeserve.kernels._backend import REGISTRY, default_profile_path


def _median_seconds(fn: Callable[[], object], samples: int, min_sample_s: float = 2e-3) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(min_sample_s / one))
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def measure(
    ops: list[str] | None = None, samples: int = 9, progress: Callable[[str], None] | None = None
) -> dict[str, dict[str, float]]:
    """Median seconds per call, ``{op: {backend: seconds}}``, on each op's typical input."""
    timings: dict[str, dict[str, float]] = {}
    for op in ops or REGISTRY.ops:
        args, kwargs = REGISTRY.example(op, "typical")
        timings[op] = {}
        for backend, impl in REGISTRY.implementations(op).items():
            if progress:
                progress(f"{op}: {backend}")
            timings[op][backend] = _median_seconds(
                lambda impl=impl, args=args, kwargs=kwargs: impl(*args, **kwargs), samples
            )
    return timings


def choose(timings: dict[str, dict[str, float]]) -> dict[str, str]:
    """The fastest backend per op."""
    return {op: min(per, key=per.__getitem__) for op, per in timings.items() if per}


def write_profile(
    path: Path | None = None, samples: int = 9, progress: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, str], dict[str, dict[str, float]]]:
    """Measure, choose and write the profile JSON; returns ``(path, choices, timings)``."""
    timings = measure(samples=samples, progress=progress)
    choices = choose(timings)
    path = Path(path) if path else default_profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "choices": choices,
        "seconds": timings,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp.replace(path)
    REGISTRY.reset()
    return path, choices, timings
