"""Stub for the compiled MurmurHash3 (x86, 32-bit) kernels (``_hashing.pyx``).

Each returns ``uint32[n]`` hashes when ``n_buckets == 0``, else ``int64[n]`` buckets
``hash % n_buckets``; arguments are validated by ``hashing.py`` beforehand.
"""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

PARALLEL_MIN_UCS4_CHARS: int
PARALLEL_MIN_INT64: int

def murmurhash3_str(
    values: Sequence[str] | npt.NDArray[np.object_],
    seed: int,
    n_buckets: int,
    n_threads: int = 1,
) -> npt.NDArray[np.uint32] | npt.NDArray[np.int64]:
    """Hash ``values`` (list, tuple or C-contiguous object[n] of str) as UTF-8; holds the
    GIL. Raises ``TypeError``/``ValueError`` naming ``values[i]`` for a non-str element or
    a lone surrogate."""

def murmurhash3_ucs4(
    codes: npt.NDArray[np.uint32],
    seed: int,
    n_buckets: int,
    n_threads: int = 1,
) -> npt.NDArray[np.uint32] | npt.NDArray[np.int64]:
    """Hash the rows of ``codes: uint32[n, width]`` (C-contiguous code points of a ``<U``
    array, trailing zeros dropped) as UTF-8, without the GIL. Raises ``ValueError`` naming
    ``values[i]`` for a surrogate or a code point beyond U+10FFFF."""

def murmurhash3_int64(
    values: npt.NDArray[np.int64],
    seed: int,
    n_buckets: int,
    n_threads: int = 1,
) -> npt.NDArray[np.uint32] | npt.NDArray[np.int64]:
    """Hash each of ``values: int64[n]`` (C-contiguous) as its 8 little-endian bytes,
    without the GIL."""
