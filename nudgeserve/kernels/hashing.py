"""Categorical hashing: MurmurHash3 (x86, 32-bit) of strings and integer ids, and buckets.

The hash is the public MurmurHash3_x86_32 algorithm, bit for bit the same as
``mmh3.hash(data, seed, signed=False)`` and ``sklearn.utils.murmurhash3_32(data, seed,
positive=True)`` on the same bytes:

- a ``str`` is hashed as its UTF-8 bytes;
- an integer id is hashed as the 8 little-endian bytes of its int64 value (other integer
  dtypes are converted to int64 first; uint64 values are reinterpreted, so an id of
  ``2**64 - 1`` hashes like ``-1``: the same 8 bytes);
- a NumPy ``<U`` element is the string NumPy reads from it (trailing NUL padding dropped).

``hash_categorical`` maps the hash, read as unsigned, to ``hash % n_buckets``.

Inputs accepted for ``values`` (always 1-D):

- a list or tuple of ``str`` (or of ints, converted with ``np.asarray`` to int64);
- a NumPy array of dtype object holding ``str``;
- a NumPy unicode array (``<U``);
- a NumPy integer array (any signed or unsigned width; not bool).

Anything else raises ``TypeError`` (wrong type: floats, bytes, bool, None inside an object
array) or ``ValueError`` (wrong shape or value: 2-D input, a lone surrogate, which has no
UTF-8 form), naming the argument and, for an element, its index.

Each input kind is its own kernel op (``murmurhash3_str``, ``murmurhash3_ucs4``,
``murmurhash3_int64``) because the backends differ by input type: Cython reads ``str``
objects directly, Numba only hashes machine arrays.
"""

from __future__ import annotations

import numpy as np

from nudgeserve.kernels import _hashing_ref
from nudgeserve.kernels._backend import REGISTRY
from nudgeserve.kernels._threads import get_num_threads

__all__ = ["hash_categorical", "murmurhash3_32"]

_UINT32_MAX = 0xFFFFFFFF
_INT64_MAX = np.iinfo(np.int64).max


def _load_cython(name: str):
    def load():
        from nudgeserve.kernels import _hashing

        return getattr(_hashing, name)

    return load


def _load_numba(name: str):
    def load():
        from nudgeserve.kernels import _hashing_numba

        return getattr(_hashing_numba, name)

    return load


# Values per call: "batch" is one server batch, 64 requests x 4 user fields.
_EXAMPLE_SIZES = {"small": 8, "batch": 256, "typical": 2048, "large": 4096}


def _example_strings(size: str) -> list[str]:
    n = _EXAMPLE_SIZES[size]
    rng = np.random.default_rng(0)
    # Hex ids like the Open Bandit Dataset's user features, and non-ASCII words, so the
    # example touches both string paths.
    hexes = [f"{int(v):032x}" for v in rng.integers(0, 2**63 - 1, size=n // 2)]
    words = ["ゾゾタウン", "Größe", "café", "👟 sneakers"] * (n // 8)
    return hexes + words


def _example_str(size: str):
    return (_example_strings(size), 0, 1 << 20, 1), {}


def _example_ucs4(size: str):
    values = np.array(_example_strings(size))
    return (_as_code_points(values), 0, 1 << 20, 1), {}


def _example_int64(size: str):
    n = _EXAMPLE_SIZES[size]
    values = np.random.default_rng(0).integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)
    return (values, 0, 1 << 20, 1), {}


for _op, _example in (
    ("murmurhash3_str", _example_str),
    ("murmurhash3_ucs4", _example_ucs4),
    ("murmurhash3_int64", _example_int64),
):
    REGISTRY.register(
        _op,
        {
            "cython": _load_cython(_op),
            "numba": _load_numba(_op),
            "numpy": lambda _op=_op: getattr(_hashing_ref, _op),
        },
        example=_example,
    )


def _as_code_points(values: np.ndarray) -> np.ndarray:
    """``values: <U{w}[n]`` as ``uint32[n, w]`` native-order code points (a view if it can)."""
    if not values.dtype.isnative:
        values = values.astype(values.dtype.newbyteorder("="))
    values = np.ascontiguousarray(values)
    width = values.dtype.itemsize // 4
    if width == 0:
        return np.zeros((values.shape[0], 0), dtype=np.uint32)
    return values.view(np.uint32).reshape(values.shape[0], width)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool | np.bool_) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int in [0, 2**32), got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed <= _UINT32_MAX:
        raise ValueError(f"seed must be in [0, 2**32) (an unsigned 32-bit int), got {seed}")
    return seed


def _check_n_buckets(n_buckets: object) -> int:
    if isinstance(n_buckets, bool | np.bool_) or not isinstance(n_buckets, int | np.integer):
        raise TypeError(f"n_buckets must be an int >= 1, got {type(n_buckets).__name__}")
    n_buckets = int(n_buckets)
    if not 1 <= n_buckets <= _INT64_MAX:
        raise ValueError(f"n_buckets must be >= 1 (and fit in int64), got {n_buckets}")
    return n_buckets


def _integer_ids(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.int64:
        return np.ascontiguousarray(values)
    if values.dtype.kind == "u" and values.dtype.itemsize == 8:
        # Same 8 bytes, read as int64: ids >= 2**63 keep their bit pattern.
        return np.ascontiguousarray(values).view(np.int64)
    return np.ascontiguousarray(values, dtype=np.int64)


def _prepare(values: object) -> tuple[str, object, int]:
    """Validate ``values``; return ``(op, kernel argument, n)``."""
    if isinstance(values, str | bytes):
        raise TypeError(
            f"values must be a 1-D sequence of str or integer ids, got a single "
            f"{type(values).__name__}; wrap it in a list"
        )
    if isinstance(values, list | tuple):
        if len(values) == 0:
            return "", None, 0
        if isinstance(values[0], str):
            # Element types are checked by the kernel, in the pass that hashes them.
            return "murmurhash3_str", values, len(values)
        if isinstance(values[0], bool | np.bool_) or not isinstance(values[0], int | np.integer):
            raise TypeError(
                f"values[0] is {type(values[0]).__name__}; values must hold str or int ids"
            )
        try:
            array = np.asarray(values)
        except OverflowError as exc:
            raise ValueError(f"values: an integer id does not fit in 64 bits ({exc})") from None
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise TypeError(
                "values starts with an int but is not all int ids that fit in 64 bits "
                f"(NumPy reads it as {array.dtype}, shape {array.shape})"
            )
        return "murmurhash3_int64", _integer_ids(array), len(array)
    if not isinstance(values, np.ndarray):
        raise TypeError(
            "values must be a list or tuple of str, or a 1-D NumPy array of str "
            f"(object or <U) or integers, got {type(values).__name__}"
        )
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    kind = values.dtype.kind
    if kind == "O":
        return "murmurhash3_str", np.ascontiguousarray(values), len(values)
    if kind == "U":
        return "murmurhash3_ucs4", _as_code_points(values), len(values)
    if kind in "iu":
        return "murmurhash3_int64", _integer_ids(values), len(values)
    raise TypeError(
        f"values has dtype {values.dtype}; expected str (object or <U) or an integer dtype"
    )


def _hash(values: object, seed: object, n_buckets: int) -> np.ndarray:
    seed = _check_seed(seed)
    op, arg, n = _prepare(values)
    if n == 0:
        return np.empty(0, dtype=np.uint32 if n_buckets == 0 else np.int64)
    return REGISTRY.get(op)(arg, seed, n_buckets, get_num_threads())


def murmurhash3_32(values, seed: int = 0) -> np.ndarray:
    """MurmurHash3_x86_32 of every element of ``values``.

    values: 1-D list/tuple/array of str or integer ids (see the module docstring).
    seed: int in ``[0, 2**32)``.
    Returns ``uint32[n]``, equal to ``mmh3.hash(utf8_or_le8_bytes, seed, signed=False)``.
    """
    return _hash(values, seed, 0)


def hash_categorical(values, n_buckets: int, seed: int = 0) -> np.ndarray:
    """Bucket ids ``murmurhash3_32(values, seed) % n_buckets``.

    values: 1-D list/tuple/array of str or integer ids (see the module docstring).
    n_buckets: int >= 1.
    seed: int in ``[0, 2**32)``.
    Returns ``int64[n]`` in ``[0, n_buckets)``.
    """
    return _hash(values, seed, _check_n_buckets(n_buckets))
