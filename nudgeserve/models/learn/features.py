"""Featurizers: raw request columns of a whole batch -> model input arrays.

Training and serving run this same code (through the compiled kernels), so a feature is
computed identically offline and on the hot path. A featurizer is built from the feature
spec stored in a checkpoint; it holds no torch state and knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from nudgeserve.kernels import clip, hash_categorical, log1p, standardize
from nudgeserve.models.errors import InvalidFeatures, InvalidFeatureType
from nudgeserve.models.learn.datasets import HillstromData, ObdItemContext
from nudgeserve.models.specs import HillstromFeatureSpec, ObdFeatureSpec


class ObdFeatures(NamedTuple):
    """Click-model inputs for a batch of B contexts.

    user_buckets: int64[B, n_user_fields] hashed user features (one column per field)
    affinity: float32[B, n_items] ``clip(log1p(max(affinity, 0)), 0, affinity_clip)``
    """

    user_buckets: np.ndarray
    affinity: np.ndarray


class ObdItemTable(NamedTuple):
    """Item-side inputs, computed once per catalog.

    categorical_buckets: int64[n_items, n_item_categorical]
    numeric: float32[n_items, n_item_numeric] standardised
    """

    categorical_buckets: np.ndarray
    numeric: np.ndarray


class HillstromFeatures(NamedTuple):
    """Uplift-model inputs for a batch of B customers.

    categorical: int64[B, n_categorical] hashed categorical columns
    numeric: float32[B, n_numeric] log1p (where the spec says), standardised, clipped
    """

    categorical: np.ndarray
    numeric: np.ndarray


def _as_string_array(values: Any, name: str) -> np.ndarray:
    """A ``<U`` or object array of ``values`` without copying one that already is."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "UO":
            raise InvalidFeatureType(f"{name} must hold strings, got dtype {values.dtype}")
        return values
    try:
        array = np.asarray(values, dtype=object)
    except ValueError as exc:  # ragged nested lists
        raise InvalidFeatures(f"{name} must be rectangular: {exc}") from None
    return array


def _hash(values: np.ndarray, n_buckets: int, seed: int, name: str) -> np.ndarray:
    """int64 bucket ids with ``values``' shape, in one kernel call."""
    flat = np.ascontiguousarray(values).reshape(-1)
    try:
        hashed = hash_categorical(flat, n_buckets, seed=seed)
    except TypeError as exc:
        raise InvalidFeatureType(f"{name}: {exc}") from None
    except ValueError as exc:
        raise InvalidFeatures(f"{name}: {exc}") from None
    return np.asarray(hashed, dtype=np.int64).reshape(values.shape)


def _float_matrix(values: Any, name: str, n_cols: int | None = None) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidFeatureType(f"{name} must be numeric: {exc}") from None
    if array.ndim != 2:
        raise InvalidFeatures(f"{name} must be 2-D [batch, columns], got shape {array.shape}")
    if n_cols is not None and array.shape[1] != n_cols:
        raise InvalidFeatures(f"{name} must have {n_cols} columns, got {array.shape[1]}")
    if not np.isfinite(array).all():
        raise InvalidFeatures(f"{name} contains NaN or infinity")
    return np.ascontiguousarray(array)


def choose_hash_seed(
    vocabularies: Sequence[Sequence[str]], n_buckets: int, *, start: int = 0, tries: int = 10_000
) -> int:
    """Smallest seed >= ``start`` that hashes every vocabulary without a collision.

    Each categorical column has its own embedding table, so only collisions inside one
    column merge two known categories; picking the seed once, at training, keeps every
    known category distinct and is recorded in the feature spec. Raises ValueError when a
    vocabulary is larger than ``n_buckets`` or no seed is found in ``tries``.
    """
    vocabs = [np.unique(np.asarray(v, dtype=str)) for v in vocabularies]
    for vocab in vocabs:
        if vocab.shape[0] > n_buckets:
            raise ValueError(f"a vocabulary of {vocab.shape[0]} values needs n_buckets >= it")
    for seed in range(start, start + tries):
        if all(
            np.unique(_hash(vocab, n_buckets, seed, "vocabulary")).shape[0] == vocab.shape[0]
            for vocab in vocabs
        ):
            return seed
    raise ValueError(f"no collision-free hash seed in [{start}, {start + tries}); raise n_buckets")


class ObdFeaturizer:
    """Turns OBD contexts (raw user features + affinities) into ``ObdFeatures``."""

    def __init__(self, spec: ObdFeatureSpec) -> None:
        if not isinstance(spec, ObdFeatureSpec):
            raise TypeError(f"spec must be an ObdFeatureSpec, got {type(spec).__name__}")
        self.spec = spec
        self._item_mean = np.asarray(spec.item_numeric_mean, dtype=np.float32)
        self._item_std = np.asarray(spec.item_numeric_std, dtype=np.float32)
        self._affinity_input_cap = float(np.expm1(spec.affinity_clip))

    @staticmethod
    def fit_spec(
        campaign: str,
        items: ObdItemContext,
        user_features: np.ndarray,
        *,
        n_buckets: int = 64,
        affinity_clip: float = 3.0,
        n_positions: int = 3,
    ) -> ObdFeatureSpec:
        """A spec from training data: collision-free hash seed, item numeric statistics.

        user_features: str[n, n_user_fields] raw training contexts (their vocabularies
        choose the hash seed together with the item categorical columns).
        """
        vocabularies = [user_features[:, j] for j in range(user_features.shape[1])]
        vocabularies += [items.categorical[:, j] for j in range(items.categorical.shape[1])]
        std = items.numeric.astype(np.float64).std(axis=0)
        return ObdFeatureSpec(
            campaign=campaign,
            n_items=items.n_items,
            n_positions=n_positions,
            n_buckets=n_buckets,
            hash_seed=choose_hash_seed(vocabularies, n_buckets),
            item_numeric_mean=tuple(float(m) for m in items.numeric.mean(axis=0)),
            item_numeric_std=tuple(float(s) if s > 0 else 1.0 for s in std),
            affinity_clip=affinity_clip,
        )

    def hash_users(self, user_features: Any) -> np.ndarray:
        """user_features: str[B, n_user_fields] -> int64[B, n_user_fields] bucket ids."""
        values = _as_string_array(user_features, "user_features")
        n_fields = len(self.spec.user_feature_names)
        if values.ndim != 2 or values.shape[1] != n_fields:
            raise InvalidFeatures(
                f"user_features must be [batch, {n_fields}] "
                f"({', '.join(self.spec.user_feature_names)}), got shape {values.shape}"
            )
        return _hash(values, self.spec.n_buckets, self.spec.hash_seed, "user_features")

    def transform_affinity(self, affinity: Any, batch_size: int) -> np.ndarray:
        """affinity: float32[B, n_items] raw (or None: all zeros) -> transformed copy."""
        n_items = self.spec.n_items
        if affinity is None:
            return np.zeros((batch_size, n_items), dtype=np.float32)
        values = _float_matrix(affinity, "affinity", n_items)
        if values.shape[0] != batch_size:
            raise InvalidFeatures(
                f"affinity has {values.shape[0]} rows but user_features has {batch_size}"
            )
        # Affinities are non-negative counts with a long tail (up to 15 in the logs);
        # log1p then a cap keeps one heavy user from dominating the logit. log1p is
        # increasing, so capping the input at expm1(cap) first does both in two passes.
        values = clip(values, 0.0, self._affinity_input_cap)
        return log1p(values, out=values)

    def transform(self, user_features: Any, affinity: Any = None) -> ObdFeatures:
        """A batch of raw contexts -> ``ObdFeatures``.

        user_features: str[B, 4] raw categorical strings (``user_feature_0..3``), as a
            ``<U``/object array or nested lists.
        affinity: float[B, n_items] user-item affinities, or None for none known.
        Raises InvalidFeatures / InvalidFeatureType naming the bad argument.
        """
        buckets = self.hash_users(user_features)
        return ObdFeatures(buckets, self.transform_affinity(affinity, buckets.shape[0]))

    def item_table(self, items: ObdItemContext) -> ObdItemTable:
        """The catalog's item-side inputs (hashed with this spec's buckets and seed)."""
        if items.n_items != self.spec.n_items:
            raise InvalidFeatures(
                f"items has {items.n_items} items but the spec expects {self.spec.n_items}"
            )
        buckets = _hash(items.categorical, self.spec.n_buckets, self.spec.hash_seed, "items")
        numeric = standardize(
            np.ascontiguousarray(items.numeric, dtype=np.float32), self._item_mean, self._item_std
        )
        return ObdItemTable(buckets, np.ascontiguousarray(numeric, dtype=np.float32))


class HillstromFeaturizer:
    """Turns Hillstrom customer columns into ``HillstromFeatures``."""

    def __init__(self, spec: HillstromFeatureSpec) -> None:
        if not isinstance(spec, HillstromFeatureSpec):
            raise TypeError(f"spec must be a HillstromFeatureSpec, got {type(spec).__name__}")
        self.spec = spec
        self._mean = np.asarray(spec.numeric_mean, dtype=np.float32)
        self._std = np.asarray(spec.numeric_std, dtype=np.float32)
        self._log_columns = [spec.numeric_names.index(n) for n in spec.log1p_names]
        self.field_names = spec.numeric_names + spec.categorical_names

    @staticmethod
    def fit_spec(data: HillstromData, *, n_buckets: int = 64) -> HillstromFeatureSpec:
        """A spec from training rows: collision-free hash seed, numeric statistics."""
        columns = data.raw_columns()
        base = HillstromFeatureSpec(numeric_mean=(0.0,) * 5, numeric_std=(1.0,) * 5)
        vocabularies = [columns[name] for name in base.categorical_names]
        raw = HillstromFeaturizer(base)._raw_numeric(columns, len(data))
        std = raw.astype(np.float64).std(axis=0)
        return HillstromFeatureSpec(
            numeric_mean=tuple(float(m) for m in raw.astype(np.float64).mean(axis=0)),
            numeric_std=tuple(float(s) if s > 0 else 1.0 for s in std),
            n_buckets=n_buckets,
            hash_seed=choose_hash_seed(vocabularies, n_buckets),
        )

    def _column(self, columns: Mapping[str, Any], name: str, batch_size: int | None) -> Any:
        if name not in columns:
            raise InvalidFeatures(f"missing field {name!r}; need {', '.join(self.field_names)}")
        values = columns[name]
        n = len(values) if hasattr(values, "__len__") else None
        if n is None or np.ndim(values) != 1:
            raise InvalidFeatures(f"{name} must be a 1-D column of the batch")
        if batch_size is not None and n != batch_size:
            raise InvalidFeatures(f"{name} has {n} rows, expected {batch_size}")
        return values

    def _raw_numeric(self, columns: Mapping[str, Any], batch_size: int) -> np.ndarray:
        """float32[B, n_numeric] with log1p applied, before standardising."""
        out = np.empty((batch_size, len(self.spec.numeric_names)), dtype=np.float32)
        for j, name in enumerate(self.spec.numeric_names):
            try:
                out[:, j] = np.asarray(self._column(columns, name, batch_size), dtype=np.float32)
            except (TypeError, ValueError) as exc:
                if isinstance(exc, InvalidFeatures):
                    raise
                raise InvalidFeatureType(f"{name} must be numeric: {exc}") from None
        if not np.isfinite(out).all():
            bad = self.spec.numeric_names[int(np.flatnonzero(~np.isfinite(out).all(axis=0))[0])]
            raise InvalidFeatures(f"{bad} contains NaN or infinity")
        if self._log_columns:
            logged = out[:, self._log_columns]
            if (logged < 0).any():
                raise InvalidFeatures(
                    f"{', '.join(self.spec.log1p_names)} must be >= 0 (dollars of history)"
                )
            out[:, self._log_columns] = log1p(np.ascontiguousarray(logged))
        return out

    def transform(self, columns: Mapping[str, Any]) -> HillstromFeatures:
        """A batch of customers, column by column -> ``HillstromFeatures``.

        columns: ``{name: [B] values}`` for every field of the spec: numeric
            ``recency``, ``history``, ``mens``, ``womens``, ``newbie`` and string
            ``history_segment``, ``zip_code``, ``channel``. Extra keys are ignored.
        Raises InvalidFeatures / InvalidFeatureType naming the bad field.
        """
        if not isinstance(columns, Mapping):
            raise InvalidFeatureType(f"columns must be a mapping, got {type(columns).__name__}")
        first = self._column(columns, self.spec.numeric_names[0], None)
        batch_size = len(first)
        numeric = self._raw_numeric(columns, batch_size)
        # max_z clamps the z-scores to [-numeric_clip, numeric_clip] in the same pass.
        numeric = standardize(numeric, self._mean, self._std, max_z=self.spec.numeric_clip)
        buckets = np.empty((batch_size, len(self.spec.categorical_names)), dtype=np.int64)
        for j, name in enumerate(self.spec.categorical_names):
            values = _as_string_array(self._column(columns, name, batch_size), name)
            buckets[:, j] = _hash(values, self.spec.n_buckets, self.spec.hash_seed, name)
        return HillstromFeatures(buckets, np.ascontiguousarray(numeric, dtype=np.float32))
