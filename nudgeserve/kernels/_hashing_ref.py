"""NumPy reference for MurmurHash3 (x86, 32-bit): the test oracle and the last fallback.

Every function here is one backend of a registered op and takes the arguments that
``hashing.py`` has already validated:

- ``murmurhash3_str(values, seed, n_buckets, n_threads)``: ``values`` a list, tuple or
  1-D C-contiguous object array whose elements should be ``str`` (checked here, during
  the one pass over them; a separate Python pass would cost as much as the hashing);
- ``murmurhash3_ucs4(codes, seed, n_buckets, n_threads)``: ``codes: uint32[n, width]``,
  the native-order code points of a NumPy ``<U{width}`` array (trailing zeros are
  padding, as NumPy reads them);
- ``murmurhash3_int64(values, seed, n_buckets, n_threads)``: ``values: int64[n]``,
  each hashed as its 8 little-endian bytes.

``seed`` is an int in ``[0, 2**32)``. ``n_buckets == 0`` returns the hashes as
``uint32[n]``; ``n_buckets >= 1`` returns ``hash % n_buckets`` (the hash read as unsigned)
as ``int64[n]``. ``n_threads`` is accepted for a uniform signature and ignored here.

The mixing runs vectorised over all strings at once, one 4-byte block position at a time
(strings sorted by length so the still-active ones are a prefix).
"""

from __future__ import annotations

import numpy as np

_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_MAX_CODE_POINT = 0x10FFFF


def element_error(index: int, value: object) -> Exception:
    """The error every backend raises for an element of ``values`` it cannot hash."""
    if not isinstance(value, str):
        return TypeError(
            f"values[{index}] is {type(value).__name__}, expected str "
            "(every element of a string input must be a str)"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        err = ValueError(
            f"values[{index}] cannot be encoded as UTF-8 "
            f"(lone surrogate at character {exc.start}): {value!r}"
        )
        err.__cause__ = exc
        return err
    return ValueError(f"values[{index}] could not be hashed: {value!r}")  # pragma: no cover


def code_point_error(index: int, code_point: int, position: int) -> ValueError:
    """The error every backend raises for a ``<U`` element that is not valid Unicode."""
    return ValueError(
        f"values[{index}] holds U+{code_point:04X} at character {position}, which has no "
        "UTF-8 encoding (a surrogate or beyond U+10FFFF)"
    )


def first_bad_code_point(codes: np.ndarray) -> ValueError | None:
    """``code_point_error`` for the first invalid code point in ``codes``, or None."""
    bad = (codes > _MAX_CODE_POINT) | ((codes >= 0xD800) & (codes <= 0xDFFF))
    if not bad.any():
        return None
    row, col = np.argwhere(bad)[0]
    return code_point_error(int(row), int(codes[row, col]), int(col))


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _mix_k(k: np.ndarray) -> np.ndarray:
    k = k * np.uint32(_C1)
    k = _rotl(k, 15)
    return k * np.uint32(_C2)


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _finish(h: np.ndarray, n_buckets: int) -> np.ndarray:
    if n_buckets == 0:
        return h
    return h.astype(np.int64) % np.int64(n_buckets)


def utf8_concat(values) -> tuple[bytes, np.ndarray]:
    """All str elements of ``values`` as one UTF-8 buffer, and ``offsets: int64[n + 1]``.

    Element types are checked here (``element_error`` names the first bad one).
    """
    n = len(values)
    try:
        joined = "".join(values)
    except TypeError:
        joined = None  # a non-str element; found below
    offsets = np.zeros(n + 1, dtype=np.int64)
    if joined is not None and joined.isascii():
        # ASCII: one byte per character, so character counts are byte offsets and the
        # whole batch encodes in one call.
        np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=n), out=offsets[1:])
        return joined.encode("ascii"), offsets
    try:
        encoded = [str.encode(v, "utf-8") for v in values]
    except (TypeError, UnicodeEncodeError):
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise element_error(i, v) from None
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise element_error(i, v) from None
        raise
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
    return b"".join(encoded), offsets


def murmurhash3_concat(buf: bytes, offsets: np.ndarray, seed: int) -> np.ndarray:
    """MurmurHash3_x86_32 of ``buf[offsets[i]:offsets[i + 1]]`` for each i: ``uint32[n]``."""
    n = len(offsets) - 1
    # Three zero bytes of padding let every tail be read as a whole little-endian word.
    data = np.frombuffer(buf + b"\0\0\0", dtype=np.uint8).astype(np.uint32)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    nblocks = lengths // 4

    def word_at(pos: np.ndarray) -> np.ndarray:
        return data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16) | (data[pos + 3] << 24)

    order = np.argsort(-nblocks, kind="stable")
    sorted_starts = starts[order]
    # active[j] = how many strings have more than j full blocks (a prefix of ``order``).
    max_blocks = int(nblocks.max()) if n else 0
    active = n - np.cumsum(np.bincount(nblocks, minlength=max_blocks + 1))
    h = np.full(n, seed, dtype=np.uint32)
    for j in range(max_blocks):
        m = int(active[j])
        k = _mix_k(word_at(sorted_starts[:m] + 4 * j))
        hm = h[:m] ^ k
        h[:m] = _rotl(hm, 13) * np.uint32(5) + np.uint32(0xE6546B64)
    out = np.empty(n, dtype=np.uint32)
    out[order] = h

    rem = lengths % 4
    has_tail = rem != 0
    if has_tail.any():
        # The tail key is the last 1-3 bytes as a little-endian word; mask off what follows.
        tail = word_at(starts[has_tail] + 4 * nblocks[has_tail])
        mask = (np.uint32(1) << (8 * rem[has_tail]).astype(np.uint32)) - np.uint32(1)
        out[has_tail] ^= _mix_k(tail & mask)
    out ^= lengths.astype(np.uint32)
    return _fmix(out)


def murmurhash3_str(values, seed: int, n_buckets: int, n_threads: int = 1) -> np.ndarray:
    """Hash str elements as their UTF-8 bytes (see the module docstring)."""
    buf, offsets = utf8_concat(values)
    return _finish(murmurhash3_concat(buf, offsets, seed), n_buckets)


def murmurhash3_ucs4(codes: np.ndarray, seed: int, n_buckets: int, n_threads: int = 1):
    """Hash the rows of ``codes: uint32[n, width]`` as UTF-8 text (see the module docstring)."""
    err = first_bad_code_point(codes)
    if err is not None:
        raise err
    n, width = codes.shape
    if width == 0:
        strings = [""] * n
    else:
        strings = codes.view(np.dtype(f"=U{width}")).reshape(n).tolist()
    return murmurhash3_str(strings, seed, n_buckets)


def murmurhash3_int64(values: np.ndarray, seed: int, n_buckets: int, n_threads: int = 1):
    """Hash each of ``values: int64[n]`` as its 8 little-endian bytes."""
    words = values.astype("<i8").view("<u4").astype(np.uint32).reshape(-1, 2)
    h = np.full(len(values), seed, dtype=np.uint32)
    for j in range(2):
        h ^= _mix_k(words[:, j])
        h = _rotl(h, 13) * np.uint32(5) + np.uint32(0xE6546B64)
    h ^= np.uint32(8)
    return _finish(_fmix(h), n_buckets)
