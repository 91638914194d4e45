"""Cython MurmurHash3 (x86, 32-bit) kernels; same arguments and results as ``_hashing_ref``.

Strings are hashed as UTF-8 without building a bytes object per string: ASCII strings are
hashed straight from their internal buffer, other strings are encoded from their
internal 1/2/4-byte representation into a scratch buffer (which, unlike
``PyUnicode_AsUTF8AndSize``, leaves no cached UTF-8 copy on every string object). The
``<U`` (UCS-4) and int64 paths run without the GIL and split rows over OpenMP threads for
large batches.
"""

from cpython.object cimport PyObject
from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc

cimport numpy as cnp

import numpy as np

from ._hashing_ref import element_error, first_bad_code_point

cnp.import_array()

cdef extern from "Python.h":
    int PyUnicode_Check(PyObject* o)
    int PyUnicode_READY(PyObject* o)
    int PyUnicode_IS_ASCII(PyObject* o)
    int PyUnicode_KIND(PyObject* o)
    void* PyUnicode_DATA(PyObject* o)
    Py_ssize_t PyUnicode_GET_LENGTH(PyObject* o)
    PyObject** PySequence_Fast_ITEMS(object o)

# Below these batch sizes one thread is faster than waking the OpenMP team.
PARALLEL_MIN_UCS4_CHARS = 1 << 18
PARALLEL_MIN_INT64 = 1 << 16

cdef uint32_t C1 = 0xCC9E2D51
cdef uint32_t C2 = 0x1B873593


cdef inline uint32_t rotl32(uint32_t x, int r) noexcept nogil:
    return (x << r) | (x >> (32 - r))


cdef inline uint32_t mix_k(uint32_t k) noexcept nogil:
    k *= C1
    k = rotl32(k, 15)
    return k * C2


cdef inline uint32_t mix_h(uint32_t h, uint32_t k) noexcept nogil:
    h ^= mix_k(k)
    h = rotl32(h, 13)
    return h * 5 + <uint32_t>0xE6546B64


cdef inline uint32_t fmix32(uint32_t h) noexcept nogil:
    h ^= h >> 16
    h *= <uint32_t>0x85EBCA6B
    h ^= h >> 13
    h *= <uint32_t>0xC2B2AE35
    h ^= h >> 16
    return h


cdef inline uint32_t load_le32(const uint8_t* p) noexcept nogil:
    # Assembled byte by byte so the result is little-endian on any host; compilers turn
    # this into one load on little-endian machines.
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef inline uint32_t murmur3_32(const uint8_t* data, Py_ssize_t length,
                                uint32_t seed) noexcept nogil:
    cdef Py_ssize_t nblocks = length // 4
    cdef Py_ssize_t i
    cdef uint32_t h = seed
    cdef uint32_t k = 0
    cdef const uint8_t* tail = data + nblocks * 4
    cdef int rem = length & 3
    for i in range(nblocks):
        h = mix_h(h, load_le32(data + i * 4))
    if rem == 3:
        k ^= <uint32_t>tail[2] << 16
    if rem >= 2:
        k ^= <uint32_t>tail[1] << 8
    if rem >= 1:
        k ^= tail[0]
        h ^= mix_k(k)
    h ^= <uint32_t>length
    return fmix32(h)


cdef inline Py_ssize_t utf8_encode(const void* data, int kind, Py_ssize_t n,
                                   uint8_t* out, Py_ssize_t* bad_pos) noexcept nogil:
    """Encode ``n`` code points (``kind`` bytes each) into ``out`` (room for 4 per point).

    Returns the byte count, or -1 with ``bad_pos`` set at a surrogate or a value beyond
    U+10FFFF (which have no UTF-8 form).
    """
    cdef Py_ssize_t j
    cdef Py_ssize_t p = 0
    cdef uint32_t c
    for j in range(n):
        if kind == 1:
            c = (<const uint8_t*>data)[j]
        elif kind == 2:
            c = (<const uint16_t*>data)[j]
        else:
            c = (<const uint32_t*>data)[j]
        if c < 0x80:
            out[p] = <uint8_t>c
            p += 1
        elif c < 0x800:
            out[p] = <uint8_t>(0xC0 | (c >> 6))
            out[p + 1] = <uint8_t>(0x80 | (c & 0x3F))
            p += 2
        elif c < 0x10000:
            if 0xD800 <= c <= 0xDFFF:
                bad_pos[0] = j
                return -1
            out[p] = <uint8_t>(0xE0 | (c >> 12))
            out[p + 1] = <uint8_t>(0x80 | ((c >> 6) & 0x3F))
            out[p + 2] = <uint8_t>(0x80 | (c & 0x3F))
            p += 3
        elif c <= 0x10FFFF:
            out[p] = <uint8_t>(0xF0 | (c >> 18))
            out[p + 1] = <uint8_t>(0x80 | ((c >> 12) & 0x3F))
            out[p + 2] = <uint8_t>(0x80 | ((c >> 6) & 0x3F))
            out[p + 3] = <uint8_t>(0x80 | (c & 0x3F))
            p += 4
        else:
            bad_pos[0] = j
            return -1
    return p


cdef inline uint32_t murmur3_32_ascii_ucs4(const uint32_t* row, Py_ssize_t length,
                                           uint32_t seed) noexcept nogil:
    """MurmurHash3 of code points all below 0x80: each is its own UTF-8 byte, so blocks are
    packed straight from the code points, with no encoding pass."""
    cdef Py_ssize_t nblocks = length // 4
    cdef Py_ssize_t i
    cdef uint32_t h = seed
    cdef uint32_t k = 0
    cdef const uint32_t* tail = row + nblocks * 4
    cdef int rem = length & 3
    for i in range(nblocks):
        h = mix_h(h, row[4 * i] | (row[4 * i + 1] << 8) | (row[4 * i + 2] << 16)
                  | (row[4 * i + 3] << 24))
    if rem == 3:
        k ^= tail[2] << 16
    if rem >= 2:
        k ^= tail[1] << 8
    if rem >= 1:
        k ^= tail[0]
        h ^= mix_k(k)
    h ^= <uint32_t>length
    return fmix32(h)


cdef inline int64_t hash_ucs4_row(const uint32_t* row, Py_ssize_t width, uint8_t* buf,
                                  uint32_t seed) noexcept nogil:
    """The row's hash (as a non-negative int64), or -1 if a code point has no UTF-8 form."""
    cdef Py_ssize_t length = width
    cdef Py_ssize_t nbytes, j
    cdef Py_ssize_t bad_pos = 0
    cdef uint32_t any_bits = 0
    # NumPy pads <U elements with trailing zeros and drops them when reading.
    while length > 0 and row[length - 1] == 0:
        length -= 1
    for j in range(length):
        any_bits |= row[j]
    if any_bits < 0x80:
        return murmur3_32_ascii_ucs4(row, length, seed)
    nbytes = utf8_encode(row, 4, length, buf, &bad_pos)
    if nbytes < 0:
        return -1
    return murmur3_32(buf, nbytes, seed)


cdef object _alloc_out(Py_ssize_t n, uint64_t n_buckets):
    return np.empty(n, dtype=np.uint32 if n_buckets == 0 else np.int64)


def murmurhash3_str(values, uint32_t seed, uint64_t n_buckets, int n_threads=1):
    """Hash the str elements of ``values`` (list, tuple or 1-D C-contiguous object array).

    Returns ``uint32[n]`` hashes when ``n_buckets == 0``, else ``int64[n]`` buckets.
    Holds the GIL: the elements are Python objects that another thread could replace.
    """
    cdef PyObject** items
    cdef Py_ssize_t n, i, length, nbytes
    cdef Py_ssize_t bad_pos = 0
    cdef Py_ssize_t cap = 0
    cdef uint8_t* buf = NULL
    cdef uint8_t* grown
    cdef PyObject* o
    cdef uint32_t h
    cdef int kind
    if isinstance(values, np.ndarray):
        n = values.shape[0]
        items = <PyObject**>cnp.PyArray_DATA(values)
    else:
        n = len(values)
        items = PySequence_Fast_ITEMS(values)
    out = _alloc_out(n, n_buckets)
    cdef uint32_t[::1] out32 = out if n_buckets == 0 else np.empty(0, np.uint32)
    cdef int64_t[::1] out64 = out if n_buckets != 0 else np.empty(0, np.int64)
    try:
        for i in range(n):
            o = items[i]
            if not PyUnicode_Check(o) or PyUnicode_READY(o) < 0:
                raise element_error(i, <object>o)
            length = PyUnicode_GET_LENGTH(o)
            if PyUnicode_IS_ASCII(o):
                h = murmur3_32(<const uint8_t*>PyUnicode_DATA(o), length, seed)
            else:
                kind = PyUnicode_KIND(o)
                if length * 4 > cap:
                    cap = max(length * 4, 256)
                    grown = <uint8_t*>realloc(buf, cap)
                    if grown == NULL:
                        raise MemoryError()
                    buf = grown
                nbytes = utf8_encode(PyUnicode_DATA(o), kind, length, buf, &bad_pos)
                if nbytes < 0:
                    raise element_error(i, <object>o)
                h = murmur3_32(buf, nbytes, seed)
            if n_buckets == 0:
                out32[i] = h
            else:
                out64[i] = <int64_t>(h % n_buckets)
    finally:
        free(buf)
    return out


def murmurhash3_ucs4(const uint32_t[:, ::1] codes, uint32_t seed, uint64_t n_buckets,
                     int n_threads=1):
    """Hash the rows of ``codes: uint32[n, width]`` (a ``<U`` array's code points) as UTF-8."""
    cdef Py_ssize_t n = codes.shape[0]
    cdef Py_ssize_t width = codes.shape[1]
    cdef Py_ssize_t stride = 4 * width + 4
    cdef Py_ssize_t i
    cdef Py_ssize_t nbad = 0
    cdef int64_t r
    cdef int team = n_threads if n_threads > 1 and n * width >= PARALLEL_MIN_UCS4_CHARS else 1
    out = _alloc_out(n, n_buckets)
    cdef uint32_t[::1] out32 = out if n_buckets == 0 else np.empty(0, np.uint32)
    cdef int64_t[::1] out64 = out if n_buckets != 0 else np.empty(0, np.int64)
    if n == 0:
        return out
    if width == 0:
        # Every element is the empty string (and &codes[i, 0] would not exist).
        r = murmur3_32(NULL, 0, seed)
        out[:] = r if n_buckets == 0 else <uint64_t>r % n_buckets
        return out
    # One scratch buffer per thread, each big enough for a row's UTF-8 form.
    cdef uint8_t* bufs = <uint8_t*>malloc(team * stride)
    if bufs == NULL:
        raise MemoryError()
    try:
        with nogil:
            for i in prange(n, schedule="static", num_threads=team):
                r = hash_ucs4_row(&codes[i, 0], width, bufs + threadid() * stride, seed)
                if r < 0:
                    nbad += 1
                elif n_buckets == 0:
                    out32[i] = <uint32_t>r
                else:
                    out64[i] = <int64_t>(<uint64_t>r % n_buckets)
    finally:
        free(bufs)
    if nbad:
        raise first_bad_code_point(np.asarray(codes))
    return out


def murmurhash3_int64(const int64_t[::1] values, uint32_t seed, uint64_t n_buckets,
                      int n_threads=1):
    """Hash each of ``values: int64[n]`` as its 8 little-endian bytes."""
    cdef Py_ssize_t n = values.shape[0]
    cdef Py_ssize_t i
    cdef uint64_t v
    cdef uint32_t h
    cdef int team = n_threads if n_threads > 1 and n >= PARALLEL_MIN_INT64 else 1
    out = _alloc_out(n, n_buckets)
    cdef uint32_t[::1] out32 = out if n_buckets == 0 else np.empty(0, np.uint32)
    cdef int64_t[::1] out64 = out if n_buckets != 0 else np.empty(0, np.int64)
    with nogil:
        if n_buckets == 0:
            for i in prange(n, schedule="static", num_threads=team):
                v = <uint64_t>values[i]
                h = fmix32(mix_h(mix_h(seed, <uint32_t>v), <uint32_t>(v >> 32)) ^ 8)
                out32[i] = h
        else:
            for i in prange(n, schedule="static", num_threads=team):
                v = <uint64_t>values[i]
                h = fmix32(mix_h(mix_h(seed, <uint32_t>v), <uint32_t>(v >> 32)) ^ 8)
                out64[i] = <int64_t>(h % n_buckets)
    return out
