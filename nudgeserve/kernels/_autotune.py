"""Measure the hot-path ops' backends once per machine, at server start, and use the fastest.

``autotune()`` is what the server's warm-up calls (never ``import``): for the ops the
server runs on every batch (``HOT_PATH``) it times each importable backend on two sizes,
one server batch (64 requests x 80 candidates) and a large one (4,096 rows), takes the
median of a few samples, and hands the fastest per op to the registry, below
``NUDGESERVE_KERNELS`` and the ``bench-kernels --write-profile`` profile and above the
built-in order (``_backend``). Measuring takes about a second; the result is cached per
machine, so later starts only read a small JSON file.

The cache: ``$NUDGESERVE_KERNEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/nudgeserve``, else
``~/.cache/nudgeserve``; one file per cache key, ``kernel-autotune-<key>.json``. The key
hashes everything that can change the timings (``key_fields``): the CPU (model and
flags), the CPU count and affinity, the kernels' thread setting, the Python build, the
NumPy and Numba versions, the compiled extensions (size and modification time) and the
kernels' sources; any change means a new key, so a new measurement. The file is written
to a temporary name and renamed (readers never see half a file); a lock file makes a
second process starting at the same time wait for the first one's measurement and read
it instead of measuring too (two measurements at once would each disturb the other). A
cache file that cannot be read or does not match is measured again and replaced. When the
directory cannot be written, the measurement is kept in memory only, with a warning.

``NUDGESERVE_KERNEL_AUTOTUNE=0`` turns it off (nothing measured, no cache read: the
built-in order applies below the environment and the profile).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nudgeserve.kernels._backend import BACKENDS, ENV_FORCE, REGISTRY, default_profile_path
from nudgeserve.kernels._threads import get_num_threads

ENV_AUTOTUNE = "NUDGESERVE_KERNEL_AUTOTUNE"
ENV_CACHE_DIR = "NUDGESERVE_KERNEL_CACHE_DIR"
FORMAT = 1

# The ops every decision runs: featurizing (transforms on the affinity matrix and the
# numeric columns, hashing of the user fields) and selection (top-k and the samplers).
# Reports (bootstrap) and NumPy-only ops are left to the built-in order or the profile.
HOT_PATH = (
    "standardize",
    "clip",
    "log1p",
    "murmurhash3_str",
    "murmurhash3_ucs4",
    "murmurhash3_int64",
    "topk",
    "epsilon_greedy_slate",
    "plackett_luce_slate",
    "thompson_draw",
)
# Example sizes timed (see ``Registry.register``), the server's own batch first.
SIZES = ("batch", "large")
# A backend this many times slower than the fastest on a server batch is not timed on
# the large size (it cannot win; NumPy references take up to 0.1 s a call there).
PRUNE_RATIO = 3.0
SAMPLES = 5
MIN_SAMPLE_S = 5e-4
LOCK_WAIT_S = 60.0

_LOG = logging.getLogger("nudgeserve.kernels")
_FALSE = ("0", "false", "no", "off")
_TRUE = ("", "1", "true", "yes", "on")

# {op: {backend: {size: seconds}}}
Timings = dict[str, dict[str, dict[str, float]]]


@dataclass(frozen=True)
class AutotuneResult:
    """What ``autotune()`` did.

    status: ``measured`` (measured now), ``cache`` (read from the cache file), ``disabled``
        (``NUDGESERVE_KERNEL_AUTOTUNE=0``), ``overridden`` (the environment or the profile
        names every hot-path op's backend, so nothing was measured) or ``failed`` (a
        backend raised while being timed: logged, and the built-in order applies).
    seconds: wall time of the call (measuring included). path: the cache file (None when
        disabled, overridden or not writable). ops: ``backend_report()`` afterwards.
    """

    status: str
    seconds: float
    path: Path | None
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)


def enabled() -> bool:
    """Whether auto-measuring is on (``NUDGESERVE_KERNEL_AUTOTUNE``; a typo is an error)."""
    value = os.environ.get(ENV_AUTOTUNE, "").strip().lower()
    if value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise ValueError(f"{ENV_AUTOTUNE}={value!r}: use 0 (off) or 1 (on, the default)")


def cache_dir() -> Path:
    """Where the auto-measured choice is cached (see the module docstring)."""
    override = os.environ.get(ENV_CACHE_DIR)
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "nudgeserve"


# -- the cache key ----------------------------------------------------------------------------


def _cpu() -> dict[str, str]:
    """The first processor's identity and feature flags from /proc/cpuinfo (or platform)."""
    wanted = ("vendor_id", "cpu family", "model", "model name", "flags", "Features", "CPU part")
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if found:
                        break
                    continue
                name, _, value = line.partition(":")
                name = name.strip()
                if name in wanted:
                    found[name] = value.strip()
    except OSError:
        pass
    flags = found.pop("flags", None) or found.pop("Features", None) or ""
    found["flags_sha256"] = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()
    found["machine"] = platform.machine()
    found.setdefault("model name", platform.processor() or platform.machine())
    return found


def _version(dist: str) -> str | None:
    module = sys.modules.get(dist)
    if module is not None and getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _package_files() -> dict[str, Any]:
    """The compiled extensions (name, size, mtime) and a hash of the kernels' sources."""
    here = Path(__file__).resolve().parent
    compiled: dict[str, list[int]] = {}
    digest = hashlib.sha256()
    for path in sorted(here.iterdir()):
        if path.suffix in (".so", ".pyd"):
            st = path.stat()
            compiled[path.name] = [st.st_size, st.st_mtime_ns]
        elif path.suffix in (".py", ".pyx", ".pxd"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"compiled": compiled, "sources_sha256": digest.hexdigest()}


def key_fields() -> dict[str, Any]:
    """Everything the cached measurement depends on (see the module docstring)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "format": FORMAT,
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "kernel_threads": get_num_threads(),
        "python": sys.version,
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        **_package_files(),
        "hot_path": list(HOT_PATH),
        "sizes": list(SIZES),
    }


def cache_key(fields: dict[str, Any]) -> str:
    """The key of ``key_fields()``: a hash of their JSON."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_path(key: str, directory: Path | None = None) -> Path:
    return (directory or cache_dir()) / f"kernel-autotune-{key}.json"


# -- measuring --------------------------------------------------------------------------------


def _median_times(
    calls: dict[str, Callable[[], object]], samples: int, min_sample_s: float
) -> dict[str, float]:
    """Median seconds per call of each backend; samples alternate between backends, so a
    burst of load from elsewhere on the machine hits them all alike."""
    inner = {}
    for backend, call in calls.items():
        call()  # first call: page faults, caches
        t0 = time.perf_counter()
        call()
        inner[backend] = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-9)))
    times: dict[str, list[float]] = {b: [] for b in calls}
    for _ in range(samples):
        for backend, call in calls.items():
            n = inner[backend]
            t0 = time.perf_counter()
            for _ in range(n):
                call()
            times[backend].append((time.perf_counter() - t0) / n)
    return {b: statistics.median(v) for b, v in times.items()}


def measure(
    ops: tuple[str, ...] | list[str] | None = None,
    samples: int = SAMPLES,
    min_sample_s: float = MIN_SAMPLE_S,
) -> Timings:
    """Median seconds per call, ``{op: {backend: {size: seconds}}}``, of every importable
    backend of ``ops`` (default: the registered hot-path ops with several backends) on
    ``SIZES``; a backend ``PRUNE_RATIO`` times slower than the best on the first size is
    not timed on the others."""
    timings: Timings = {}
    for op in _measured_ops() if ops is None else ops:
        impls = REGISTRY.implementations(op)
        if len(impls) < 2:
            continue
        per: dict[str, dict[str, float]] = {b: {} for b in impls}
        for i, size in enumerate(SIZES):
            if i:
                best = min(per[b][SIZES[0]] for b in impls)
                impls = {b: f for b, f in impls.items() if per[b][SIZES[0]] <= PRUNE_RATIO * best}
                if len(impls) < 2:
                    break  # one contender left: nothing to compare
            args, kwargs = REGISTRY.example(op, size)
            calls = {
                b: (lambda f=f, args=args, kwargs=kwargs: f(*args, **kwargs))
                for b, f in impls.items()
            }
            for backend, seconds in _median_times(calls, samples, min_sample_s).items():
                per[backend][size] = seconds
        timings[op] = per
    return timings


def choose(timings: Timings) -> dict[str, str]:
    """The fastest backend per op: among the backends timed on every size, the least sum
    over sizes of (its median / the best median at that size); ties go to the op's
    built-in order."""
    choices = {}
    for op, per in timings.items():
        sizes = {s for t in per.values() for s in t}
        full = [b for b, t in per.items() if set(t) == sizes]
        best = {s: min(per[b][s] for b in full) for s in sizes}
        score = {b: sum(per[b][s] / max(best[s], 1e-12) for s in sizes) for b in full}
        order = REGISTRY.order(op) if op in REGISTRY.ops else BACKENDS
        rank = {b: i for i, b in enumerate(order)}
        choices[op] = min(full, key=lambda b: (score[b], rank.get(b, len(rank))))
    return choices


def _measured_ops() -> list[str]:
    """The registered hot-path ops with more than one registered backend."""
    return [op for op in HOT_PATH if op in REGISTRY.ops and len(REGISTRY.backends(op)) > 1]


def _medians_us(timings: Timings) -> dict[str, dict[str, dict[str, float]]]:
    return {
        op: {b: {s: round(t * 1e6, 2) for s, t in sizes.items()} for b, sizes in per.items()}
        for op, per in timings.items()
    }


# -- the cache file ---------------------------------------------------------------------------


def _read_cache(path: Path, key: str, ops: list[str], log: logging.Logger | None) -> dict | None:
    """The cached document when it is complete and made for ``key``; None when there is no
    file; None (and a warning on ``log``) when it is unreadable or does not match."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problem = f"unreadable ({exc})"
    else:
        problem = _check_doc(doc, key, ops)
    if problem:
        if log is not None:
            log.warning("kernel autotune cache %s: %s; measuring again", path, problem)
        return None
    return doc


def _check_doc(doc: Any, key: str, ops: list[str]) -> str | None:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != key:
        return "not this machine's format or key"
    choices, medians = doc.get("choices"), doc.get("median_us")
    if not isinstance(choices, dict) or not isinstance(medians, dict):
        return "no choices"
    if not set(ops) <= set(choices):
        return f"no choice for {sorted(set(ops) - set(choices))}"
    for op, backend in choices.items():
        if op not in REGISTRY.ops or backend not in REGISTRY.backends(op):
            return f"{op!r} -> {backend!r} is not a registered backend"
        if not isinstance(medians.get(op), dict):
            return f"no medians for {op!r}"
    return None


def _inside_checkout(directory: Path) -> bool:
    """Whether ``directory`` lies in the source checkout this package runs from."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        return False  # installed: no checkout to protect
    try:
        directory.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _prepare_dir(directory: Path, log: logging.Logger) -> bool:
    """Whether the cache can be written there (warns when not)."""
    if _inside_checkout(directory):
        log.warning(
            "kernel autotune cache dir %s is inside the source checkout; keeping the "
            "measurement in memory (set %s elsewhere)",
            directory,
            ENV_CACHE_DIR,
        )
        return False
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning(
            "kernel autotune cache dir %s: %s; keeping the measurement in memory", directory, exc
        )
        return False
    if not os.access(directory, os.W_OK | os.X_OK):
        log.warning(
            "kernel autotune cache dir %s is not writable; keeping the measurement in memory",
            directory,
        )
        return False
    return True


@contextlib.contextmanager
def _locked(directory: Path, log: logging.Logger) -> Iterator[None]:
    """Hold the cache directory's lock (a second process waits for the first's
    measurement); after ``LOCK_WAIT_S`` go on without it (the writes stay atomic)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes only
        yield
        return
    try:
        fd = os.open(directory / "kernel-autotune.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.warning("kernel autotune lock in %s: %s; measuring without it", directory, exc)
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        locked = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning(
                        "kernel autotune lock in %s still held; measuring anyway", directory
                    )
                    break
                time.sleep(0.05)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_atomic(path: Path, doc: dict, log: logging.Logger) -> bool:
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        log.warning("kernel autotune cache %s not written: %s", path, exc)
        return False
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        log.warning("kernel autotune cache %s not written: %s", path, exc)
        return False
    return True


# -- autotune ---------------------------------------------------------------------------------

_LOCK = threading.Lock()
_last: AutotuneResult | None = None


def _apply(doc: dict, source: str) -> None:
    REGISTRY.set_tuned(doc["choices"], source, medians=doc["median_us"])


def autotune(force: bool = False, log: logging.Logger | None = None) -> AutotuneResult:
    """Measure the hot-path ops if this machine's cache has no valid result (or ``force``),
    use the result below the environment and the profile, log one line per op, and
    return what happened. Cheap after the first call in a process (nothing is read again
    unless ``force`` or the registry was reset)."""
    global _last
    log = log or _LOG
    with _LOCK:
        t0 = time.perf_counter()
        if not force and _last is not None and REGISTRY.tuned():
            return AutotuneResult(_last.status, 0.0, _last.path, backend_report())
        status, path = _autotune(force, log)
        result = AutotuneResult(status, time.perf_counter() - t0, path, backend_report())
        if status in ("measured", "cache"):
            _last = result
        log_report(result, log)
        return result


def _autotune(force: bool, log: logging.Logger) -> tuple[str, Path | None]:
    if not enabled():
        if REGISTRY.tuned():  # turned off since the last call: back to the built-in order
            REGISTRY.set_tuned({}, "measured")
        return "disabled", None
    ops = _measured_ops()
    if all(REGISTRY.overridden(op) for op in ops):
        return "overridden", None
    fields = key_fields()
    key = cache_key(fields)
    directory = cache_dir()
    path = cache_path(key, directory)
    if not force and (doc := _read_cache(path, key, ops, log)) is not None:
        _apply(doc, "cache")
        return "cache", path
    writable = _prepare_dir(directory, log)
    with _locked(directory, log) if writable else contextlib.nullcontext():
        if writable and not force:  # another process may have measured while we waited
            doc = _read_cache(path, key, ops, None)
            if doc is not None:
                _apply(doc, "cache")
                return "cache", path
        t0 = time.perf_counter()
        try:
            timings = measure(ops)
        except Exception:  # a kernel failing here fails its own tests; serve regardless
            log.warning("kernel autotune failed; using the built-in order", exc_info=True)
            return "failed", None
        doc = {
            "format": FORMAT,
            "key": key,
            "fields": fields,
            "choices": choose(timings),
            "median_us": _medians_us(timings),
            "measure_s": round(time.perf_counter() - t0, 3),
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        written = writable and _write_atomic(path, doc, log)
    _apply(doc, "measured")
    return "measured", path if written else None


# -- reporting --------------------------------------------------------------------------------


def backend_report(resolve: bool = True) -> dict[str, dict[str, Any]]:
    """``{op: {"backend", "source", "median_us"}}`` for every registered op: the backend
    this process uses, where the choice came from (``env``, ``profile``, ``cache``,
    ``measured``, ``default``) and the auto-measured medians in microseconds,
    ``{backend: {size: us}}`` (empty for an op not measured). ``resolve=False`` leaves
    out the ops this process has not chosen yet instead of choosing (and importing) them:
    what a metrics endpoint uses, so a scrape never loads a kernel."""
    report = {}
    for op in REGISTRY.ops:
        if not resolve and not REGISTRY.is_chosen(op):
            continue
        report[op] = {
            "backend": REGISTRY.backend(op),
            "source": REGISTRY.source(op),
            "median_us": REGISTRY.tuned_medians(op),
        }
    return report


_SOURCE_WORDS = {
    "env": f"forced by {ENV_FORCE}",
    "profile": "from the profile",
    "cache": "auto-measured, from the cache",
    "measured": "auto-measured now",
    "default": "built-in order",
}


def describe(op: str, entry: dict[str, Any]) -> str:
    """One line: ``op -> backend (source; median us per size and backend)``."""
    words = _SOURCE_WORDS.get(entry["source"], entry["source"])
    if entry["source"] == "profile":
        words += f" {default_profile_path()}"
    medians = entry.get("median_us") or {}
    sizes = [s for s in SIZES if any(s in per for per in medians.values())]
    parts = []
    for size in sizes:
        ranked = sorted(
            ((per[size], b) for b, per in medians.items() if size in per), key=lambda t: t[0]
        )
        parts.append(f"{size}: " + ", ".join(f"{b} {us:.1f}" for us, b in ranked))
    timing = f"; median us {'; '.join(parts)}" if parts else ""
    return f"kernel {op} -> {entry['backend']} ({words}{timing})"


def log_report(result: AutotuneResult, log: logging.Logger | None = None) -> None:
    """One INFO line per op (see ``describe``) and one for the autotune itself."""
    log = log or _LOG
    where = f" ({result.path})" if result.path else ""
    log.info("kernel autotune: %s in %.2f s%s", result.status, result.seconds, where)
    for op, entry in result.ops.items():
        log.info("%s", describe(op, entry))
