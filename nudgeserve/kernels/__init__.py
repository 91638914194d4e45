"""Compiled kernels: hashing, numeric transforms, masked top-k, exploration, the bootstrap.

Each op has a NumPy reference (the test oracle and the fallback) and, where it pays,
Cython and/or Numba versions; one backend per op is chosen on first use (see ``_backend``).
``autotune()``, called by the server's warm-up (never at import), measures the hot-path
ops' backends once per machine and caches the fastest (see ``_autotune``);
``backend_report()`` says which backend each op uses and why.
``rng`` is the counter-based generator every random kernel draws from. This package
imports nothing else of nudgeserve.
"""

from nudgeserve.kernels import rng
from nudgeserve.kernels._autotune import AutotuneResult, autotune, backend_report
from nudgeserve.kernels._backend import REGISTRY, chosen_backends, default_profile_path
from nudgeserve.kernels._threads import get_num_threads, set_num_threads
from nudgeserve.kernels._warmup import warmup
from nudgeserve.kernels.bootstrap import poisson_bootstrap_counts, poisson_bootstrap_sums
from nudgeserve.kernels.hashing import hash_categorical, murmurhash3_32
from nudgeserve.kernels.sampling import (
    epsilon_greedy_slate,
    plackett_luce_slate,
    thompson_bernoulli_slate,
)
from nudgeserve.kernels.topk import topk
from nudgeserve.kernels.transforms import bucketize, clip, log1p, standardize

__all__ = [
    "REGISTRY",
    "AutotuneResult",
    "autotune",
    "backend_report",
    "bucketize",
    "chosen_backends",
    "clip",
    "default_profile_path",
    "epsilon_greedy_slate",
    "get_num_threads",
    "hash_categorical",
    "log1p",
    "murmurhash3_32",
    "plackett_luce_slate",
    "poisson_bootstrap_counts",
    "poisson_bootstrap_sums",
    "rng",
    "set_num_threads",
    "standardize",
    "thompson_bernoulli_slate",
    "topk",
    "warmup",
]
