"""Featurizers: the same arrays as a direct NumPy computation; bad input names the field."""

from __future__ import annotations

import numpy as np
import pytest

from nudgeserve.kernels import hash_categorical
from nudgeserve.models import (
    HillstromFeatureSpec,
    HillstromFeaturizer,
    InvalidFeatures,
    InvalidFeatureType,
    ObdFeatureSpec,
    ObdFeaturizer,
    choose_hash_seed,
)


@pytest.fixture(scope="module")
def obd_featurizer(obd_random):
    spec = ObdFeaturizer.fit_spec("all", obd_random.items, obd_random.user_features)
    return ObdFeaturizer(spec)


def test_obd_fit_spec_picks_a_collision_free_seed(obd_random, obd_featurizer):
    spec = obd_featurizer.spec
    assert spec.n_items == 80 and spec.n_positions == 3
    buckets = obd_featurizer.hash_users(obd_random.user_features)
    for j in range(4):
        vocab = np.unique(obd_random.user_features[:, j])
        assert np.unique(buckets[:, j]).size == vocab.size
    table = obd_featurizer.item_table(obd_random.items)
    for j in range(3):
        assert (
            np.unique(table.categorical_buckets[:, j]).size
            == np.unique(obd_random.items.categorical[:, j]).size
        )


def test_choose_hash_seed_is_smallest_collision_free():
    vocab = [f"v{i}" for i in range(12)]
    seed = choose_hash_seed([vocab], 16)
    assert np.unique(hash_categorical(vocab, 16, seed=seed)).size == 12
    for earlier in range(seed):
        assert np.unique(hash_categorical(vocab, 16, seed=earlier)).size < 12
    with pytest.raises(ValueError, match="n_buckets"):
        choose_hash_seed([vocab], 8)


def test_obd_transform_matches_numpy(obd_random, obd_featurizer):
    rows = slice(0, 257)
    raw_aff = obd_random.affinity[rows].copy()
    raw_aff[0, :5] = [0.0, 1.0, 15.0, 1e6, 2.0]
    features = obd_featurizer.transform(obd_random.user_features[rows], raw_aff)
    spec = obd_featurizer.spec
    expected_buckets = hash_categorical(
        obd_random.user_features[rows].reshape(-1), spec.n_buckets, seed=spec.hash_seed
    ).reshape(-1, 4)
    np.testing.assert_array_equal(features.user_buckets, expected_buckets)
    expected_aff = np.clip(np.log1p(raw_aff), 0, spec.affinity_clip)
    np.testing.assert_allclose(features.affinity, expected_aff, rtol=1e-6)
    assert features.affinity.dtype == np.float32
    # Lists of lists work too, and None means no affinity.
    listed = obd_featurizer.transform(obd_random.user_features[:3].tolist())
    np.testing.assert_array_equal(listed.user_buckets, expected_buckets[:3])
    assert not listed.affinity.any()


def test_obd_transform_errors_name_the_argument(obd_random, obd_featurizer):
    users = obd_random.user_features[:4]
    with pytest.raises(InvalidFeatures, match=r"user_features must be \[batch, 4\]"):
        obd_featurizer.transform(users[:, :3])
    with pytest.raises(InvalidFeatures, match="affinity must have 80 columns"):
        obd_featurizer.transform(users, np.zeros((4, 79)))
    with pytest.raises(InvalidFeatures, match="affinity has 3 rows"):
        obd_featurizer.transform(users, np.zeros((3, 80)))
    with pytest.raises(InvalidFeatures, match="affinity contains NaN"):
        obd_featurizer.transform(users, np.full((4, 80), np.nan))
    with pytest.raises(InvalidFeatureType, match="user_features"):
        obd_featurizer.transform(np.zeros((4, 4)))
    with pytest.raises(InvalidFeatureType, match="user_features"):
        obd_featurizer.transform([["a", "b", "c", None]])
    with pytest.raises(TypeError, match="affinity must be numeric"):
        obd_featurizer.transform(users, "not numbers")


def test_hillstrom_transform_matches_numpy(hillstrom):
    data = hillstrom.take(slice(0, 500))
    spec = HillstromFeaturizer.fit_spec(data)
    featurizer = HillstromFeaturizer(spec)
    features = featurizer.transform(data.raw_columns())
    raw = np.stack(
        [data.recency, np.log1p(data.history), data.mens, data.womens, data.newbie], axis=1
    ).astype(np.float64)
    np.testing.assert_allclose(spec.numeric_mean, raw.mean(axis=0), rtol=1e-5)
    expected = np.clip((raw - raw.mean(axis=0)) / raw.std(axis=0), -5, 5)
    np.testing.assert_allclose(features.numeric, expected, atol=1e-5)
    assert features.numeric.dtype == np.float32 and features.categorical.dtype == np.int64
    for j, name in enumerate(spec.categorical_names):
        np.testing.assert_array_equal(
            features.categorical[:, j],
            hash_categorical(getattr(data, name), spec.n_buckets, seed=spec.hash_seed),
        )
        assert np.unique(features.categorical[:, j]).size == np.unique(getattr(data, name)).size


def test_hillstrom_transform_errors_name_the_field(hillstrom):
    spec = HillstromFeatureSpec(numeric_mean=(0.0,) * 5, numeric_std=(1.0,) * 5)
    featurizer = HillstromFeaturizer(spec)
    columns = hillstrom.take(slice(0, 3)).raw_columns()
    del columns["zip_code"]
    with pytest.raises(InvalidFeatures, match="missing field 'zip_code'"):
        featurizer.transform(columns)
    columns = hillstrom.take(slice(0, 3)).raw_columns()
    columns["history"] = columns["history"][:2]
    with pytest.raises(InvalidFeatures, match="history has 2 rows, expected 3"):
        featurizer.transform(columns)
    columns = hillstrom.take(slice(0, 3)).raw_columns()
    columns["recency"] = ["x", "y", "z"]
    with pytest.raises(InvalidFeatureType, match="recency must be numeric"):
        featurizer.transform(columns)
    columns = hillstrom.take(slice(0, 3)).raw_columns()
    columns["history"] = np.array([1.0, -5.0, 2.0])
    with pytest.raises(InvalidFeatures, match="history must be >= 0"):
        featurizer.transform(columns)
    columns = hillstrom.take(slice(0, 3)).raw_columns()
    columns["channel"] = [1, 2, 3]
    with pytest.raises(InvalidFeatureType, match="channel"):
        featurizer.transform(columns)
    with pytest.raises(InvalidFeatureType, match="mapping"):
        featurizer.transform([1, 2, 3])


def test_specs_validate_when_built():
    with pytest.raises(ValueError, match="n_items"):
        ObdFeatureSpec(campaign="all", n_items=0)
    with pytest.raises(ValueError, match="numeric_mean/std must have 5"):
        HillstromFeatureSpec(numeric_mean=(0.0,), numeric_std=(1.0,))
    with pytest.raises(ValueError, match="control"):
        HillstromFeatureSpec(numeric_mean=(0.0,) * 5, numeric_std=(1.0,) * 5, control="SMS")
