"""Numba MurmurHash3 (x86, 32-bit) kernels; same arguments and results as ``_hashing_ref``.

Numba cannot read Python ``str`` objects quickly, so the str path encodes in Python (into
one buffer: a single call for an all-ASCII batch) and hashes the buffer here; the ``<U`` and
int64 paths are pure machine code, split over threads for large batches.

Arithmetic is done in uint64 and masked to 32 bits: Numba widens uint32 scalars anyway,
and mixing unsigned with signed integers would silently give float64.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types

from nudgeserve.kernels._hashing_ref import first_bad_code_point, utf8_concat

# Below these batch sizes one thread is faster than starting the thread team.
PARALLEL_MIN_UCS4_CHARS = 1 << 18
PARALLEL_MIN_INT64 = 1 << 16
PARALLEL_MIN_BYTES = 1 << 20
# Chunks per thread: small enough to even out rows of different lengths.
_CHUNKS_PER_THREAD = 4

_M32 = np.uint64(0xFFFFFFFF)
_C1 = np.uint64(0xCC9E2D51)
_C2 = np.uint64(0x1B873593)
_F1 = np.uint64(0x85EBCA6B)
_F2 = np.uint64(0xC2B2AE35)
_N = np.uint64(0xE6546B64)
_U0 = np.uint64(0)
_U5 = np.uint64(5)
_U8 = np.uint64(8)
_U13 = np.uint64(13)
_U15 = np.uint64(15)
_U16 = np.uint64(16)
_U17 = np.uint64(17)
_U19 = np.uint64(19)
_U24 = np.uint64(24)
_U32 = np.uint64(32)
_U6 = np.uint64(6)
_U12 = np.uint64(12)
_U18 = np.uint64(18)
_U3F = np.uint64(0x3F)
_U80 = np.uint64(0x80)
_XC0 = np.uint64(0xC0)
_XE0 = np.uint64(0xE0)
_XF0 = np.uint64(0xF0)
_X800 = np.uint64(0x800)
_X10000 = np.uint64(0x10000)
_XD800 = np.uint64(0xD800)
_XDFFF = np.uint64(0xDFFF)
_X10FFFF = np.uint64(0x10FFFF)

# error_model="numpy": no zero-divisor check per division (it blocks vectorisation; every
# divisor here is validated or guarded non-zero).
_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}

# Inputs are typed read-only so read-only arrays (np.frombuffer, memory maps) are
# accepted; writable arrays convert to these types for free.
_RO_U8 = types.Array(types.uint8, 1, "C", readonly=True)
_RO_I64 = types.Array(types.int64, 1, "C", readonly=True)
_RO_U64 = types.Array(types.uint64, 1, "C", readonly=True)
_RO_U32_2D = types.Array(types.uint32, 2, "C", readonly=True)
_OUTS = (types.uint32[::1], types.int64[::1])
_u64, _i64 = types.uint64, types.int64


@njit("uint64(uint64)", inline="always", **_OPTS)
def _mix_k(k):
    k = (k * _C1) & _M32
    k = ((k << _U15) | (k >> _U17)) & _M32
    return (k * _C2) & _M32


@njit("uint64(uint64, uint64)", inline="always", **_OPTS)
def _mix_h(h, k):
    h ^= _mix_k(k)
    h = ((h << _U13) | (h >> _U19)) & _M32
    return (h * _U5 + _N) & _M32


@njit("uint64(uint64, uint64)", inline="always", **_OPTS)
def _finish(h, length):
    h ^= length & _M32
    h ^= h >> _U16
    h = (h * _F1) & _M32
    h ^= h >> _U13
    h = (h * _F2) & _M32
    return h ^ (h >> _U16)


@njit([_u64(buf, _i64, _i64, _u64) for buf in (_RO_U8, types.uint8[::1])], inline="always", **_OPTS)
def _murmur_bytes(buf, start, length, seed):
    h = seed
    nblocks = length // 4
    for b in range(nblocks):
        p = start + 4 * b
        k = (
            np.uint64(buf[p])
            | (np.uint64(buf[p + 1]) << _U8)
            | (np.uint64(buf[p + 2]) << _U16)
            | (np.uint64(buf[p + 3]) << _U24)
        )
        h = _mix_h(h, k)
    rem = length & 3
    if rem:
        p = start + 4 * nblocks
        k = _U0
        if rem == 3:
            k ^= np.uint64(buf[p + 2]) << _U16
        if rem >= 2:
            k ^= np.uint64(buf[p + 1]) << _U8
        k ^= np.uint64(buf[p])
        h ^= _mix_k(k)
    return _finish(h, np.uint64(length))


@njit(
    _u64(types.Array(types.uint32, 1, "C", readonly=True), _i64, _u64),
    inline="always",
    **_OPTS,
)
def _murmur_ascii_row(row, length, seed):
    h = seed
    nblocks = length // 4
    for b in range(nblocks):
        p = 4 * b
        k = (
            np.uint64(row[p])
            | (np.uint64(row[p + 1]) << _U8)
            | (np.uint64(row[p + 2]) << _U16)
            | (np.uint64(row[p + 3]) << _U24)
        )
        h = _mix_h(h, k)
    rem = length & 3
    if rem:
        p = 4 * nblocks
        k = _U0
        if rem == 3:
            k ^= np.uint64(row[p + 2]) << _U16
        if rem >= 2:
            k ^= np.uint64(row[p + 1]) << _U8
        k ^= np.uint64(row[p])
        h ^= _mix_k(k)
    return _finish(h, np.uint64(length))


@njit([types.void(_RO_U8, _RO_I64, _u64, _u64, out, _i64, _i64) for out in _OUTS], **_OPTS)
def _bytes_chunk(buf, offsets, seed, n_buckets, out, lo, hi):
    for i in range(lo, hi):
        h = _murmur_bytes(buf, offsets[i], offsets[i + 1] - offsets[i], seed)
        out[i] = h if n_buckets == 0 else h % n_buckets


@njit([types.void(_RO_U8, _RO_I64, _u64, _u64, out, _i64) for out in _OUTS], parallel=True, **_OPTS)
def _bytes_parallel(buf, offsets, seed, n_buckets, out, n_chunks):
    n = out.shape[0]
    for c in prange(n_chunks):
        _bytes_chunk(buf, offsets, seed, n_buckets, out, c * n // n_chunks, (c + 1) * n // n_chunks)


@njit([_i64(_RO_U32_2D, _u64, _u64, out, _i64, _i64) for out in _OUTS], **_OPTS)
def _ucs4_chunk(codes, seed, n_buckets, out, lo, hi):
    """Hash rows ``lo:hi``; returns the first row with no UTF-8 form, or -1."""
    width = codes.shape[1]
    buf = np.empty(4 * width + 4, dtype=np.uint8)
    for i in range(lo, hi):
        length = width
        # NumPy pads <U elements with trailing zeros and drops them when reading.
        while length > 0 and codes[i, length - 1] == 0:
            length -= 1
        any_bits = np.uint32(0)
        for j in range(length):
            any_bits |= codes[i, j]
        if any_bits < 0x80:
            # All ASCII: each code point is its own UTF-8 byte; pack blocks directly.
            h = _murmur_ascii_row(codes[i], length, seed)
            out[i] = h if n_buckets == 0 else h % n_buckets
            continue
        p = 0
        for j in range(length):
            c = np.uint64(codes[i, j])
            if c < _U80:
                buf[p] = c
                p += 1
            elif c < _X800:
                buf[p] = _XC0 | (c >> _U6)
                buf[p + 1] = _U80 | (c & _U3F)
                p += 2
            elif c < _X10000:
                if _XD800 <= c <= _XDFFF:
                    return i
                buf[p] = _XE0 | (c >> _U12)
                buf[p + 1] = _U80 | ((c >> _U6) & _U3F)
                buf[p + 2] = _U80 | (c & _U3F)
                p += 3
            elif c <= _X10FFFF:
                buf[p] = _XF0 | (c >> _U18)
                buf[p + 1] = _U80 | ((c >> _U12) & _U3F)
                buf[p + 2] = _U80 | ((c >> _U6) & _U3F)
                buf[p + 3] = _U80 | (c & _U3F)
                p += 4
            else:
                return i
        h = _murmur_bytes(buf, 0, p, seed)
        out[i] = h if n_buckets == 0 else h % n_buckets
    return -1


@njit(
    [types.void(_RO_U32_2D, _u64, _u64, out, _i64, _i64[::1]) for out in _OUTS],
    parallel=True,
    **_OPTS,
)
def _ucs4_parallel(codes, seed, n_buckets, out, n_chunks, bad):
    n = out.shape[0]
    for c in prange(n_chunks):
        bad[c] = _ucs4_chunk(
            codes, seed, n_buckets, out, c * n // n_chunks, (c + 1) * n // n_chunks
        )


@njit([types.void(_RO_U64, _u64, _u64, out, _i64, _i64) for out in _OUTS], **_OPTS)
def _int64_chunk(values, seed, n_buckets, out, lo, hi):
    vs = values[lo:hi]  # slices: a loop index starting at 0 vectorises
    outs = out[lo:hi]
    for i in range(vs.shape[0]):
        v = vs[i]
        h = _finish(_mix_h(_mix_h(seed, v & _M32), v >> _U32), _U8)
        outs[i] = h if n_buckets == 0 else h % n_buckets


@njit([types.void(_RO_U64, _u64, _u64, out, _i64) for out in _OUTS], parallel=True, **_OPTS)
def _int64_parallel(values, seed, n_buckets, out, n_chunks):
    n = out.shape[0]
    for c in prange(n_chunks):
        _int64_chunk(values, seed, n_buckets, out, c * n // n_chunks, (c + 1) * n // n_chunks)


def _alloc_out(n: int, n_buckets: int) -> np.ndarray:
    return np.empty(n, dtype=np.uint32 if n_buckets == 0 else np.int64)


def _team(n_threads: int, work: int, threshold: int) -> int:
    """Threads to use (1 = call the serial chunk directly), with Numba's pool capped to it."""
    if n_threads <= 1 or work < threshold:
        return 1
    team = min(n_threads, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != team:
        numba.set_num_threads(team)
    return team


def murmurhash3_str(values, seed: int, n_buckets: int, n_threads: int = 1) -> np.ndarray:
    """Hash str elements as their UTF-8 bytes (see ``_hashing_ref``)."""
    data, offsets = utf8_concat(values)
    n = len(offsets) - 1
    buf = np.frombuffer(data, dtype=np.uint8)
    out = _alloc_out(n, n_buckets)
    team = _team(n_threads, int(offsets[-1]), PARALLEL_MIN_BYTES)
    if team == 1:
        _bytes_chunk(buf, offsets, np.uint64(seed), np.uint64(n_buckets), out, 0, n)
    else:
        n_chunks = team * _CHUNKS_PER_THREAD
        _bytes_parallel(buf, offsets, np.uint64(seed), np.uint64(n_buckets), out, n_chunks)
    return out


def murmurhash3_ucs4(codes: np.ndarray, seed: int, n_buckets: int, n_threads: int = 1):
    """Hash the rows of ``codes: uint32[n, width]`` as UTF-8 text (see ``_hashing_ref``)."""
    n, width = codes.shape
    out = _alloc_out(n, n_buckets)
    team = _team(n_threads, n * width, PARALLEL_MIN_UCS4_CHARS)
    if team == 1:
        bad = _ucs4_chunk(codes, np.uint64(seed), np.uint64(n_buckets), out, 0, n)
    else:
        flags = np.empty(team * _CHUNKS_PER_THREAD, dtype=np.int64)
        _ucs4_parallel(codes, np.uint64(seed), np.uint64(n_buckets), out, flags.size, flags)
        bad = int(flags.max())
    if bad >= 0:
        raise first_bad_code_point(codes)
    return out


def murmurhash3_int64(values: np.ndarray, seed: int, n_buckets: int, n_threads: int = 1):
    """Hash each of ``values: int64[n]`` as its 8 little-endian bytes."""
    n = values.shape[0]
    words = values.view(np.uint64)
    out = _alloc_out(n, n_buckets)
    team = _team(n_threads, n, PARALLEL_MIN_INT64)
    if team == 1:
        _int64_chunk(words, np.uint64(seed), np.uint64(n_buckets), out, 0, n)
    else:
        _int64_parallel(
            words, np.uint64(seed), np.uint64(n_buckets), out, team * _CHUNKS_PER_THREAD
        )
    return out
