"""Compile and touch every chosen kernel once, at process start, not on a user's request."""

from __future__ import annotations

import time

from nudgeserve.kernels._backend import REGISTRY


def warmup() -> dict[str, float]:
    """Run each op's chosen backend on its small example; returns seconds per op.

    Numba kernels have explicit signatures and ``cache=True``, so this loads (or compiles
    once and caches) their machine code; Cython modules are imported and their first call
    paid here.
    """
    took = {}
    for op in REGISTRY.ops:
        fn = REGISTRY.get(op)
        args, kwargs = REGISTRY.example(op, "small")
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        took[op] = time.perf_counter() - t0
    return took
