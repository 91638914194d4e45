"""MurmurHash3 kernels: every backend against mmh3 / scikit-learn, and the public API."""

from __future__ import annotations

import mmh3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils import murmurhash3_32 as sklearn_murmurhash3_32

from nudgeserve.kernels import REGISTRY, hash_categorical, murmurhash3_32
from nudgeserve.kernels._backend import BACKENDS

OPS = ("murmurhash3_str", "murmurhash3_ucs4", "murmurhash3_int64")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXTREME_IDS = [0, 1, -1, 255, -256, 2**31, -(2**31) - 1, 2**32, INT64_MAX, INT64_MIN]
SEEDS = st.integers(0, 2**32 - 1)
BUCKETS = st.one_of(st.just(0), st.integers(1, 2**40))  # 0 = raw hashes (op convention)


def _impl(op: str, backend: str):
    impl = REGISTRY.implementations(op).get(backend)
    if impl is None:
        pytest.skip(f"{backend} backend of {op} is not available (not built / not installed)")
    return impl


def _oracle_bytes(data: list[bytes], seed: int, n_buckets: int) -> np.ndarray:
    h = np.array([mmh3.hash(b, seed, signed=False) for b in data], dtype=np.uint32)
    return h if n_buckets == 0 else h.astype(np.int64) % n_buckets


def _le8(ids) -> list[bytes]:
    return [int(v).to_bytes(8, "little", signed=True) for v in ids]


def _code_points(strings: list[str]) -> np.ndarray:
    arr = np.array(strings, dtype=str)
    return arr.view(np.uint32).reshape(len(arr), arr.dtype.itemsize // 4)


def _check(got: np.ndarray, want: np.ndarray, n_buckets: int) -> None:
    assert got.dtype == (np.uint32 if n_buckets == 0 else np.int64)
    np.testing.assert_array_equal(got, want)


backend_param = pytest.mark.parametrize("backend", BACKENDS)


# -- every backend against the public oracles -------------------------------------------


@backend_param
@settings(max_examples=60, deadline=None)
@given(strings=st.lists(st.text(), max_size=12), seed=SEEDS, n_buckets=BUCKETS)
def test_str_backend_matches_mmh3(backend, strings, seed, n_buckets):
    impl = _impl("murmurhash3_str", backend)
    want = _oracle_bytes([s.encode("utf-8") for s in strings], seed, n_buckets)
    _check(impl(strings, seed, n_buckets, 1), want, n_buckets)
    _check(impl(np.array(strings, dtype=object), seed, n_buckets, 1), want, n_buckets)


@backend_param
@settings(max_examples=60, deadline=None)
@given(strings=st.lists(st.text(), min_size=1, max_size=12), seed=SEEDS, n_buckets=BUCKETS)
def test_ucs4_backend_matches_mmh3(backend, strings, seed, n_buckets):
    impl = _impl("murmurhash3_ucs4", backend)
    codes = _code_points(strings)
    # NumPy drops trailing NULs when it reads a <U element; the oracle hashes what it reads.
    read_back = np.array(strings, dtype=str).tolist()
    want = _oracle_bytes([s.encode("utf-8") for s in read_back], seed, n_buckets)
    _check(impl(codes, seed, n_buckets, 1), want, n_buckets)


@backend_param
@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from(EXTREME_IDS))),
    seed=SEEDS,
    n_buckets=BUCKETS,
)
def test_int64_backend_matches_mmh3(backend, ids, seed, n_buckets):
    impl = _impl("murmurhash3_int64", backend)
    want = _oracle_bytes(_le8(ids), seed, n_buckets)
    _check(impl(np.array(ids, dtype=np.int64), seed, n_buckets, 1), want, n_buckets)


ADVERSARIAL_STRINGS = [
    "",
    "a",
    "ab",
    "abc",
    "abcd",
    "\x00",
    "a\x00b",
    "é",
    "ÿ" * 5,
    "Ā",
    "日本語テキスト",
    "𝄞",
    "😀👟🛒",
    "mixed ascii é 日 😀",
    "\U0010ffff",
    "x" * 10_001,
    "😀" * 10_003,
    "ゾ" * 12_345 + "z",
]


@backend_param
@pytest.mark.parametrize("seed", [0, 1, 42, 2**31, 2**32 - 1])
def test_adversarial_strings_match_mmh3_and_sklearn(backend, seed):
    encoded = [s.encode("utf-8") for s in ADVERSARIAL_STRINGS]
    want = _oracle_bytes(encoded, seed, 0)
    sklearn = [sklearn_murmurhash3_32(b, seed=seed, positive=True) for b in encoded]
    np.testing.assert_array_equal(want, sklearn)
    _check(_impl("murmurhash3_str", backend)(ADVERSARIAL_STRINGS, seed, 0, 1), want, 0)
    got = _impl("murmurhash3_ucs4", backend)(_code_points(ADVERSARIAL_STRINGS), seed, 0, 1)
    # "\x00" and "a\x00b" keep or lose NULs as NumPy reads them: compare what it reads.
    read_back = np.array(ADVERSARIAL_STRINGS).tolist()
    _check(got, _oracle_bytes([s.encode() for s in read_back], seed, 0), 0)


@backend_param
def test_int64_extremes_match_sklearn(backend):
    ids = np.array(EXTREME_IDS, dtype=np.int64)
    want = [sklearn_murmurhash3_32(b, seed=7, positive=True) for b in _le8(ids)]
    _check(_impl("murmurhash3_int64", backend)(ids, 7, 0, 1), np.array(want, np.uint32), 0)


@backend_param
@pytest.mark.parametrize("n_buckets", [0, 1000])
def test_parallel_paths_match_reference(backend, n_buckets):
    """Batches big enough for the threaded paths give the single-threaded answer."""
    rng = np.random.default_rng(20240601)
    ids = rng.integers(INT64_MIN, INT64_MAX, size=70_000, dtype=np.int64, endpoint=True)
    hexes = [f"{v:032x}" for v in rng.integers(0, 2**62, size=40_000)]
    for j, i in enumerate(range(0, len(hexes), 97)):  # non-ASCII and empty rows too
        hexes[i] = ("ゾゾタウン", "👟", "", "Größe")[j % 4]
    codes = _code_points(hexes)
    cases = [
        ("murmurhash3_int64", ids),
        ("murmurhash3_str", hexes),
        ("murmurhash3_ucs4", codes),
    ]
    for op, arg in cases:
        reference = REGISTRY.implementations(op)["numpy"](arg, 99, n_buckets, 1)
        got = _impl(op, backend)(arg, 99, n_buckets, 2)
        _check(got, reference, n_buckets)


@backend_param
@pytest.mark.parametrize("op", OPS)
def test_examples_agree_with_reference(backend, op):
    impl = _impl(op, backend)
    reference = REGISTRY.implementations(op)["numpy"]
    for size in ("small", "batch", "typical", "large"):
        args, kwargs = REGISTRY.example(op, size)
        np.testing.assert_array_equal(impl(*args, **kwargs), reference(*args, **kwargs))


# -- bad elements are caught by every backend, with the same message --------------------


@backend_param
@pytest.mark.parametrize(
    ("values", "error", "match"),
    [
        (["ok", None], TypeError, r"values\[1\] is NoneType, expected str"),
        (["ok", "fine", 3], TypeError, r"values\[2\] is int"),
        (["ok", b"bytes"], TypeError, r"values\[1\] is bytes"),
        (["ok", "bad \ud800 surrogate"], ValueError, r"values\[1\] cannot be encoded as UTF-8"),
    ],
)
def test_str_backend_rejects_bad_elements(backend, values, error, match):
    impl = _impl("murmurhash3_str", backend)
    with pytest.raises(error, match=match):
        impl(values, 0, 0, 1)
    with pytest.raises(error, match=match):
        impl(np.array(values, dtype=object), 0, 16, 1)


@backend_param
@pytest.mark.parametrize("n_threads", [1, 2])
def test_ucs4_backend_rejects_code_points_without_utf8(backend, n_threads):
    impl = _impl("murmurhash3_ucs4", backend)
    codes = _code_points(["fine"] * 70_000)
    codes = codes.copy()
    codes[65_001, 2] = 0xDFFF
    with pytest.raises(ValueError, match=r"values\[65001\] holds U\+DFFF at character 2"):
        impl(codes, 0, 0, n_threads)
    codes[65_001, 2] = ord("n")
    codes[12, 0] = 0x110000
    with pytest.raises(ValueError, match=r"values\[12\] holds U\+110000"):
        impl(codes, 0, 8, n_threads)


# -- public API ------------------------------------------------------------------------


def test_public_accepts_every_string_container():
    strings = ["81ce123cbb5bd8ce818f60fb3586bba5", "ゾゾタウン", "", "Größe", "👟"] * 3
    want = _oracle_bytes([s.encode() for s in strings], 11, 0)
    as_object = np.array(strings, dtype=object)
    as_unicode = np.array(strings)
    for values in (
        strings,
        tuple(strings),
        [np.str_(s) for s in strings],
        as_object,
        as_unicode,
        as_unicode.astype(as_unicode.dtype.newbyteorder(">")),
    ):
        _check(murmurhash3_32(values, seed=11), want, 0)
    # Non-contiguous views are copied before the kernel sees them.
    for values in (as_object[::2], as_unicode[::2], np.stack([as_unicode, as_unicode], 1)[:, 1]):
        expect = _oracle_bytes([s.encode() for s in values.tolist()], 11, 0)
        _check(murmurhash3_32(values, seed=11), expect, 0)


@pytest.mark.parametrize(
    "dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32]
)
def test_public_integer_dtypes_hash_as_int64(dtype):
    info = np.iinfo(dtype)
    ids = np.array([info.min, 0, 1, info.max], dtype=dtype)
    want = _oracle_bytes(_le8(ids.astype(np.int64)), 3, 0)
    _check(murmurhash3_32(ids, seed=3), want, 0)
    _check(murmurhash3_32(ids[::-1][::-1], seed=3), want, 0)
    _check(murmurhash3_32(ids.tolist(), seed=3), want, 0)


def test_public_uint64_keeps_bit_pattern():
    ids = np.array([0, 2**63, 2**64 - 1], dtype=np.uint64)
    want = _oracle_bytes([int(v).to_bytes(8, "little") for v in ids], 0, 0)
    _check(murmurhash3_32(ids), want, 0)
    np.testing.assert_array_equal(murmurhash3_32(ids)[2], murmurhash3_32([-1])[0])


def test_public_noncontiguous_int_ids():
    ids = np.arange(-50, 50, dtype=np.int64)[::3]
    _check(murmurhash3_32(ids, seed=5), _oracle_bytes(_le8(ids), 5, 0), 0)


@settings(max_examples=40, deadline=None)
@given(strings=st.lists(st.text(), max_size=10), n_buckets=st.integers(1, 2**62), seed=SEEDS)
def test_hash_categorical_is_hash_mod_buckets(strings, n_buckets, seed):
    got = hash_categorical(strings, n_buckets, seed=seed)
    want = _oracle_bytes([s.encode() for s in strings], seed, n_buckets)
    _check(got, want, n_buckets)
    assert ((got >= 0) & (got < n_buckets)).all()


def test_hash_categorical_spreads_obd_ids_over_buckets():
    rng = np.random.default_rng(7)
    ids = [f"{int(v):032x}" for v in rng.integers(0, 2**62, size=20_000)]
    counts = np.bincount(hash_categorical(ids, 16), minlength=16)
    # 1,250 expected per bucket; 5 standard deviations is about 175.
    assert np.abs(counts - 1250).max() < 175, counts


def test_hash_categorical_one_bucket_and_empty_input():
    np.testing.assert_array_equal(hash_categorical(["a", "b"], 1), [0, 0])
    for empty in ([], (), np.array([], dtype=object), np.array([], dtype=str), np.array([], int)):
        assert hash_categorical(empty, 10).dtype == np.int64
        assert hash_categorical(empty, 10).shape == (0,)
        assert murmurhash3_32(empty).dtype == np.uint32


@pytest.mark.parametrize(
    ("values", "error", "match"),
    [
        ("one string", TypeError, r"values must be a 1-D sequence.*single str"),
        (b"bytes", TypeError, r"values must be a 1-D sequence.*single bytes"),
        ({"a", "b"}, TypeError, r"values must be a list or tuple"),
        (np.array([1.5, 2.0]), TypeError, r"values has dtype float64"),
        (np.array([True, False]), TypeError, r"values has dtype bool"),
        (np.array([b"a", b"b"]), TypeError, r"values has dtype \|S1"),
        (np.array([["a"], ["b"]]), ValueError, r"values must be 1-D, got shape \(2, 1\)"),
        (np.array("a"), ValueError, r"values must be 1-D, got shape \(\)"),
        (np.array(["a", None], dtype=object), TypeError, r"values\[1\] is NoneType"),
        (["a", 1], TypeError, r"values\[1\] is int"),
        ([1, "a"], TypeError, r"values starts with an int"),
        ([1, 2.5], TypeError, r"values starts with an int"),
        ([None, "a"], TypeError, r"values\[0\] is NoneType"),
        ([True, False], TypeError, r"values\[0\] is bool"),
        ([1.0], TypeError, r"values\[0\] is float"),
        ([2**64], TypeError, r"values starts with an int"),
        (["ok", "\udc00"], ValueError, r"values\[1\] cannot be encoded as UTF-8"),
        (np.array(["ok", "\udc00"]), ValueError, r"values\[1\] holds U\+DC00"),
    ],
)
def test_public_rejects_bad_values(values, error, match):
    with pytest.raises(error, match=match):
        murmurhash3_32(values)
    with pytest.raises(error, match=match):
        hash_categorical(values, 100)


@pytest.mark.parametrize(
    ("n_buckets", "error", "match"),
    [
        (0, ValueError, r"n_buckets must be >= 1.*got 0"),
        (-5, ValueError, r"n_buckets must be >= 1"),
        (2**63, ValueError, r"n_buckets must be >= 1 \(and fit in int64\)"),
        (2.0, TypeError, r"n_buckets must be an int >= 1, got float"),
        (True, TypeError, r"n_buckets must be an int >= 1, got bool"),
        ("10", TypeError, r"n_buckets must be an int"),
    ],
)
def test_public_rejects_bad_n_buckets(n_buckets, error, match):
    with pytest.raises(error, match=match):
        hash_categorical(["a"], n_buckets)


@pytest.mark.parametrize(
    ("seed", "error", "match"),
    [
        (-1, ValueError, r"seed must be in \[0, 2\*\*32\).*got -1"),
        (2**32, ValueError, r"seed must be in \[0, 2\*\*32\)"),
        (1.0, TypeError, r"seed must be an int.*got float"),
        (None, TypeError, r"seed must be an int.*got NoneType"),
        (np.bool_(True), TypeError, r"seed must be an int.*got bool"),
    ],
)
def test_public_rejects_bad_seed(seed, error, match):
    with pytest.raises(error, match=match):
        murmurhash3_32(["a"], seed=seed)
    with pytest.raises(error, match=match):
        hash_categorical([1, 2], 10, seed=seed)


def test_public_accepts_numpy_integer_arguments():
    got = hash_categorical(["a", "b"], np.int32(7), seed=np.uint32(2**32 - 1))
    want = _oracle_bytes([b"a", b"b"], 2**32 - 1, 7)
    _check(got, want, 7)
