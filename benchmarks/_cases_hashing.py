"""Benchmark cases: categorical hashing and the numeric transforms, against their baselines.

Hashing 100,000 values into 2**20 buckets: 32-character hex ids (the format of the Open
Bandit Dataset's user features), short product words in several scripts, the same hex ids
as a NumPy ``<U32`` array, and int64 ids. Baselines: scikit-learn's ``FeatureHasher``
(one string feature per row, the same bucket count) and pure-Python loops over ``mmh3``
and ``sklearn.utils.murmurhash3_32``.

Transforms on ``float32[4096, 64]`` (1% NaN): each backend against the plain NumPy
expression (which, unlike ours, lets NaN and inf through).

Our cases call each backend's kernel with validated arguments and the thread count the
harness set; one more case per hashing group times the public ``hash_categorical``.
"""

from __future__ import annotations

import mmh3
import numpy as np
from sklearn.feature_extraction import FeatureHasher
from sklearn.utils import murmurhash3_32

from benchmarks._timing import Case
from nudgeserve.kernels import REGISTRY, get_num_threads, hash_categorical

N_VALUES = 100_000
N_BUCKETS = 1 << 20
MATRIX_SHAPE = (4096, 64)
_WORDS = [
    "ワンピース",
    "スニーカー",
    "ジャケット",
    "バッグ",
    "Größe",
    "Ärmel",
    "café",
    "naïve",
    "señora",
    "jeans",
    "t-shirt",
    "hoodie",
    "coat",
    "dress",
    "socks",
    "帽子",
    "靴",
    "👟",
    "sale",
    "新作",
    "femme",
    "homme",
    "été",
    "hiver",
]


def hex_ids(n: int = N_VALUES, seed: int = 0) -> list[str]:
    """``n`` 32-character lowercase hex ids (the OBD user-feature format)."""
    rng = np.random.default_rng(seed)
    return [rng.bytes(16).hex() for _ in range(n)]


def product_words(n: int = N_VALUES, seed: int = 1) -> list[str]:
    """``n`` one- or two-word product phrases mixing ASCII, Latin-1, Japanese and emoji."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(_WORDS), n)
    second = rng.integers(-len(_WORDS), len(_WORDS), n)  # negative: a single word
    return [
        _WORDS[a] if b < 0 else f"{_WORDS[a]} {_WORDS[b]}"
        for a, b in zip(first.tolist(), second.tolist(), strict=True)
    ]


def _ours(group: str, op: str, arg) -> list[Case]:
    cases = []
    for backend, impl in REGISTRY.implementations(op).items():
        name = "numpy (reference)" if backend == "numpy" else backend
        cases.append(
            Case(group, name, lambda impl=impl: impl(arg, 0, N_BUCKETS, get_num_threads()))
        )
    return cases


def _hash_string_cases(group: str, values: list[str]) -> list[Case]:
    rows = [[v] for v in values]
    hasher = FeatureHasher(n_features=N_BUCKETS, input_type="string", alternate_sign=False)
    return [
        *_ours(group, "murmurhash3_str", values),
        Case(group, "hash_categorical (public)", lambda: hash_categorical(values, N_BUCKETS)),
        Case(group, "sklearn FeatureHasher", lambda: hasher.transform(rows), baseline=True),
        Case(
            group,
            "python loop: mmh3",
            lambda: [mmh3.hash(v, 0, signed=False) % N_BUCKETS for v in values],
            baseline=True,
        ),
        Case(
            group,
            "python loop: sklearn murmur",
            lambda: [murmurhash3_32(v, positive=True) % N_BUCKETS for v in values],
            baseline=True,
        ),
    ]


def hashing_cases() -> list[Case]:
    hexes = hex_ids()
    words = product_words()
    cases = _hash_string_cases(f"hash {N_VALUES // 1000}k hex-id str -> 2**20", hexes)
    cases += _hash_string_cases(f"hash {N_VALUES // 1000}k unicode words -> 2**20", words)

    group = f"hash {N_VALUES // 1000}k hex ids <U32 array -> 2**20"
    unicode = np.array(hexes)
    codes = unicode.view(np.uint32).reshape(len(unicode), -1)
    rows = [[v] for v in unicode.tolist()]
    hasher = FeatureHasher(n_features=N_BUCKETS, input_type="string", alternate_sign=False)
    cases += _ours(group, "murmurhash3_ucs4", codes)
    cases += [
        Case(group, "hash_categorical (public)", lambda: hash_categorical(unicode, N_BUCKETS)),
        # Given its rows ready-made (converting the array is not timed): the conservative
        # comparison.
        Case(group, "sklearn FeatureHasher", lambda: hasher.transform(rows), baseline=True),
    ]

    group = f"hash {N_VALUES // 1000}k int64 ids -> 2**20"
    ids = np.random.default_rng(2).integers(-(2**63), 2**63 - 1, N_VALUES, dtype=np.int64)
    id_list = ids.tolist()
    ids32 = ids.astype(np.int32)
    cases += _ours(group, "murmurhash3_int64", ids)
    cases += [
        Case(group, "hash_categorical (public)", lambda: hash_categorical(ids, N_BUCKETS)),
        Case(
            group,
            "python loop: mmh3 of 8 bytes",
            lambda: [
                mmh3.hash(v.to_bytes(8, "little", signed=True), 0, signed=False) % N_BUCKETS
                for v in id_list
            ],
            baseline=True,
        ),
        # Vectorised in scikit-learn's Cython, but over int32 (4 bytes, half our input).
        Case(
            group,
            "sklearn murmurhash3_32(int32[])",
            lambda: murmurhash3_32(ids32, positive=True) % N_BUCKETS,
            baseline=True,
        ),
    ]
    return cases


def _matrix(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(MATRIX_SHAPE) * 3 + 1).astype(np.float32)
    x.ravel()[rng.integers(0, x.size, x.size // 100)] = np.nan
    return x


def transform_cases() -> list[Case]:
    x = _matrix()
    amounts = np.abs(x) * 100  # log1p's usual input: non-negative money or counts
    n_cols = MATRIX_SHAPE[1]
    rng = np.random.default_rng(4)
    mean = rng.standard_normal(n_cols).astype(np.float32)
    std = rng.uniform(0.5, 3, n_cols).astype(np.float32)
    low, high = np.full(n_cols, -2, np.float32), np.full(n_cols, 4, np.float32)
    fill = np.zeros(n_cols, np.float32)
    bounds = np.quantile(x[~np.isnan(x)], np.linspace(0.05, 0.95, 16)).astype(np.float32)
    out = np.empty_like(x)
    ids = np.empty(x.shape, np.int32)
    shape = "x".join(map(str, MATRIX_SHAPE))
    specs = {
        "standardize": (
            (x, mean, std, np.float32(1e4), out),
            "(x - mean) / std",
            lambda: (x - mean) / std,
        ),
        "clip": ((x, low, high, fill, out), "np.clip", lambda: np.clip(x, low, high)),
        "log1p": (
            (amounts.ravel(), out.ravel()),
            "np.log1p (float32)",
            lambda: np.log1p(amounts),
        ),
        "bucketize": (
            (x.ravel(), bounds, ids.ravel()),
            "np.searchsorted right",
            lambda: np.searchsorted(bounds, x, side="right"),
        ),
    }
    cases = []
    for op, (args, baseline_name, baseline) in specs.items():
        group = f"{op} float32[{shape}]" + (" 16 bounds" if op == "bucketize" else "")
        for backend, impl in REGISTRY.implementations(op).items():
            name = "numpy (reference)" if backend == "numpy" else backend
            cases.append(
                Case(group, name, lambda impl=impl, args=args: impl(*args, get_num_threads()))
            )
        cases.append(Case(group, baseline_name, baseline, baseline=True))
    return cases


def cases() -> list[Case]:
    return hashing_cases() + transform_cases()
