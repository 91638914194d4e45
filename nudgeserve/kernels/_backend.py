"""Choose one backend (cython / numba / numpy) per kernel op, once, on its first use.

Order of precedence, highest first:

1. ``NUDGESERVE_KERNELS``: either one backend for every op (``numpy``) or a per-op list
   (``topk=cython,murmurhash3_str=numba``). An unknown backend or op is an error, so a
   typo never silently benchmarks the wrong code.
2. The machine profile written by ``nudgeserve bench-kernels --write-profile`` (JSON
   ``{"op": "backend"}``) at ``NUDGESERVE_KERNEL_PROFILE`` or the default path below.
3. The choice auto-measured on this machine (``_autotune``: the server's warm-up measures
   the hot-path ops once per machine and caches the result; ``set_tuned`` hands it here).
   Nothing is measured at import: until ``kernels.autotune()`` runs, this level is empty.
4. The op's built-in order (``DEFAULT_ORDER`` unless it registered its own): compiled
   first, NumPy last.

Each choice remembers where it came from (``source``): ``env``, ``profile``, ``cache`` or
``measured`` (the auto-measured choice, read from the cache or measured in this process),
or ``default`` (the built-in order, also used when a preferred backend fails to import).

A backend that cannot be imported (compiled module not built, numba missing) is skipped
with a warning unless it was forced by ``NUDGESERVE_KERNELS``, in which case the import
error is raised: forcing a backend that is not there must fail loudly.

This module reads the environment itself because ``kernels`` imports nothing else of ours.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

BACKENDS = ("cython", "numba", "numpy")
DEFAULT_ORDER = ("cython", "numba", "numpy")

# Environment variable that forces backends (see module docstring).
ENV_FORCE = "NUDGESERVE_KERNELS"
# Environment variable naming the profile JSON file.
ENV_PROFILE = "NUDGESERVE_KERNEL_PROFILE"
# Where a choice came from (``Registry.source``), highest precedence first.
SOURCES = ("env", "profile", "cache", "measured", "default")


def default_profile_path() -> Path:
    """Where ``bench-kernels --write-profile`` writes and import reads the profile."""
    override = os.environ.get(ENV_PROFILE)
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "nudgeserve" / "kernel-profile.json"


def _parse_force(value: str, known_ops: set[str] | None = None) -> dict[str, str] | str | None:
    value = value.strip()
    if not value:
        return None
    if "=" not in value:
        if value not in BACKENDS:
            raise ValueError(f"{ENV_FORCE}={value!r}: backend must be one of {BACKENDS}")
        return value
    forced: dict[str, str] = {}
    for part in value.split(","):
        op, _, backend = part.partition("=")
        op, backend = op.strip(), backend.strip()
        if backend not in BACKENDS:
            raise ValueError(
                f"{ENV_FORCE}: backend for {op!r} is {backend!r}; must be one of {BACKENDS}"
            )
        if known_ops is not None and op not in known_ops:
            raise ValueError(f"{ENV_FORCE}: unknown op {op!r}; known ops: {sorted(known_ops)}")
        forced[op] = backend
    return forced


def _load_profile() -> dict[str, str]:
    path = default_profile_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        warnings.warn(f"ignoring unreadable kernel profile {path}: {exc}", stacklevel=3)
        return {}
    choices = data.get("choices", data) if isinstance(data, dict) else {}
    return {k: v for k, v in choices.items() if isinstance(v, str) and v in BACKENDS}


class Registry:
    """Every op's loaders and the backend chosen for it."""

    def __init__(self) -> None:
        self._loaders: dict[str, dict[str, Callable[[], Callable[..., Any]]]] = {}
        # op -> (backend, implementation, source): one entry, replaced whole.
        self._chosen: dict[str, tuple[str, Callable[..., Any], str]] = {}
        self._profile: dict[str, str] | None = None
        self._examples: dict[str, Callable[[str], tuple[tuple, dict]]] = {}
        self._orders: dict[str, tuple[str, ...]] = {}
        # The auto-measured choice ({op: backend}) and its source (``cache``/``measured``).
        self._tuned: dict[str, str] = {}
        self._tuned_source = "measured"
        self._tuned_medians: dict[str, dict[str, dict[str, float]]] = {}

    def register(
        self,
        op: str,
        loaders: dict[str, Callable[[], Callable[..., Any]]],
        example: Callable[[str], tuple[tuple, dict]],
        default_order: tuple[str, ...] = DEFAULT_ORDER,
    ) -> None:
        """Register lazy loaders (each returns the implementation) for ``op``.

        Every backend implementation of an op takes the same, already validated arguments.
        ``example(size)`` returns ``(args, kwargs)`` for those implementations, with
        ``size`` ``"small"`` (warm-up: compiles every Numba signature the op uses) or
        ``"typical"`` (a serving-sized input, timed to write the machine profile); ops on
        the server's hot path also take ``"batch"`` (one server batch: 64 requests, 80
        candidates) and ``"large"`` (4,096 rows), the sizes ``_autotune`` times.
        ``default_order`` replaces the built-in order for this op when no profile or
        override names a backend (an op whose compiled version is known to be slower).
        """
        unknown = set(loaders) - set(BACKENDS)
        if unknown:
            raise ValueError(f"op {op!r}: unknown backends {sorted(unknown)}")
        if "numpy" not in loaders:
            raise ValueError(f"op {op!r}: a numpy reference implementation is required")
        self._loaders[op] = loaders
        self._examples[op] = example
        self._orders[op] = tuple(default_order)
        self._chosen.pop(op, None)

    def example(self, op: str, size: str) -> tuple[tuple, dict]:
        """Arguments for ``op``'s implementations (see ``register``)."""
        return self._examples[op](size)

    @property
    def ops(self) -> list[str]:
        return sorted(self._loaders)

    def backends(self, op: str) -> tuple[str, ...]:
        """The backends registered for ``op`` (nothing is imported)."""
        return tuple(b for b in BACKENDS if b in self._loaders[op])

    def order(self, op: str) -> tuple[str, ...]:
        """``op``'s built-in order (level 4), restricted to its registered backends."""
        order = [b for b in self._orders[op] if b in BACKENDS]
        order += [b for b in DEFAULT_ORDER if b not in order]
        return tuple(b for b in order if b in self._loaders[op])

    def implementations(self, op: str) -> dict[str, Callable[..., Any]]:
        """All importable implementations of ``op`` by backend (for tests and benchmarks)."""
        found = {}
        for backend, load in self._loaders[op].items():
            try:
                found[backend] = load()
            except ImportError:
                continue
        return found

    def _entry(self, op: str) -> tuple[str, Callable[..., Any], str]:
        hit = self._chosen.get(op)
        if hit is None:
            hit = self._choose(op)
            self._chosen[op] = hit
        return hit

    def get(self, op: str) -> Callable[..., Any]:
        """The implementation chosen for ``op`` (chosen once, then cached)."""
        hit = self._chosen.get(op)
        return (hit or self._entry(op))[1]

    def backend(self, op: str) -> str:
        """Name of the backend chosen for ``op``."""
        return self._entry(op)[0]

    def source(self, op: str) -> str:
        """Where ``op``'s choice came from: one of ``SOURCES``."""
        return self._entry(op)[2]

    def is_chosen(self, op: str) -> bool:
        """Whether ``op``'s backend is already chosen (and loaded) in this process."""
        return op in self._chosen

    def overridden(self, op: str) -> str | None:
        """``"env"`` or ``"profile"`` when either names ``op``'s backend (levels 1-2), so
        the auto-measured choice would not apply; None otherwise. Imports nothing."""
        forced = _parse_force(os.environ.get(ENV_FORCE, ""), set(self._loaders))
        if isinstance(forced, str) or (forced or {}).get(op) is not None:
            return "env"
        if self._profile is None:
            self._profile = _load_profile()
        return "profile" if self._profile.get(op) in self._loaders[op] else None

    def set_tuned(
        self,
        choices: dict[str, str],
        source: str,
        medians: dict[str, dict[str, dict[str, float]]] | None = None,
    ) -> None:
        """Use the auto-measured ``choices`` (``{op: backend}``; ``source``: ``cache`` or
        ``measured``) below the environment and the profile; ``medians``: what they were
        chosen by, ``{op: {backend: {size: microseconds}}}`` (kept for reports). Every op
        is chosen again on its next call (cheap: the modules stay imported)."""
        if source not in ("cache", "measured"):
            raise ValueError(f"source must be 'cache' or 'measured', got {source!r}")
        self._tuned = {op: b for op, b in choices.items() if op in self._loaders}
        self._tuned_source = source
        self._tuned_medians = {op: m for op, m in (medians or {}).items() if op in self._tuned}
        self._chosen.clear()

    def tuned(self) -> dict[str, str]:
        """The auto-measured choice in use (``{op: backend}``; empty before ``autotune``)."""
        return dict(self._tuned)

    def tuned_medians(self, op: str) -> dict[str, dict[str, float]]:
        """``{backend: {size: microseconds}}`` the auto-measured choice of ``op`` was made
        by (empty when ``op`` was not measured)."""
        return {b: dict(sizes) for b, sizes in self._tuned_medians.get(op, {}).items()}

    def reset(self) -> None:
        """Forget every choice, the auto-measured one included (tests and the profiler
        re-read the environment)."""
        self._chosen.clear()
        self._profile = None
        self._tuned = {}
        self._tuned_medians = {}

    def _choose(self, op: str) -> tuple[str, Callable[..., Any], str]:
        loaders = self._loaders[op]
        forced = _parse_force(os.environ.get(ENV_FORCE, ""), set(self._loaders))
        want = forced if isinstance(forced, str) else (forced or {}).get(op)
        if want is not None:
            if want in loaders:
                # ImportError propagates: forced means forced
                return want, loaders[want](), "env"
            if isinstance(forced, str):
                # One backend for all ops: an op without it runs its reference, so
                # NUDGESERVE_KERNELS=cython does not fail on a numba-only op.
                return "numpy", loaders["numpy"](), "env"
            raise ValueError(
                f"{ENV_FORCE}: op {op!r} has no {want!r} backend; it has {sorted(loaders)}"
            )
        if self._profile is None:
            self._profile = _load_profile()
        order = list(self.order(op))
        preferred, source = self._profile.get(op), "profile"
        if preferred not in loaders:
            preferred, source = self._tuned.get(op), self._tuned_source
        if preferred in loaders:
            order.remove(preferred)
            order.insert(0, preferred)
        for backend in order:
            try:
                return backend, loaders[backend](), source if backend == preferred else "default"
            except ImportError as exc:
                if backend != "numpy":
                    warnings.warn(
                        f"kernel {op!r}: {backend} backend unavailable ({exc}); falling back",
                        stacklevel=5,
                    )
                    continue
                raise
        raise ImportError(f"no backend available for op {op!r}")


REGISTRY = Registry()


def chosen_backends() -> dict[str, str]:
    """``{op: backend}`` for every registered op (resolves any op not yet chosen)."""
    return {op: REGISTRY.backend(op) for op in REGISTRY.ops}
