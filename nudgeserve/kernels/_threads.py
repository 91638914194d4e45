"""One thread-count setting shared by every parallel kernel (Cython OpenMP and Numba).

Kernels parallelise over rows only when the batch is large enough to pay for it; this
setting caps how many threads they may use. ``set_num_threads(1)`` gives the
single-threaded figures the benchmarks report.
"""

from __future__ import annotations

import os

_num_threads = max(1, os.cpu_count() or 1)


def get_num_threads() -> int:
    """Threads a parallel kernel may use."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Cap the threads every parallel kernel may use (also sets Numba's pool)."""
    global _num_threads
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_threads must be a positive int, got {n!r}")
    _num_threads = min(n, max(1, os.cpu_count() or 1))
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(_num_threads, numba.config.NUMBA_NUM_THREADS))
