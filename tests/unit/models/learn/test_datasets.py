"""Loaders on the shipped real data: shapes, dtypes, order, splits, hashing."""

from __future__ import annotations

import mmh3
import numpy as np
import pytest

from nudgeserve.kernels import hash_categorical
from nudgeserve.models import (
    hillstrom_strata,
    load_obd,
    load_obd_items,
    stratified_split,
    time_split,
)

N_ITEMS = {"all": 80, "men": 34, "women": 46}


@pytest.mark.parametrize("policy", ["random", "bts"])
@pytest.mark.parametrize("campaign", ["all", "men", "women"])
def test_obd_loader_shapes_dtypes_and_order(policy, campaign):
    log = load_obd(policy, campaign)
    n, n_items = 10_000, N_ITEMS[campaign]
    assert len(log) == n and log.n_items == n_items
    assert log.timestamp.dtype == np.int64 and log.timestamp.shape == (n,)
    assert np.all(np.diff(log.timestamp) >= 0)
    assert log.item_id.dtype == np.int64 and 0 <= log.item_id.min() and log.item_id.max() < n_items
    assert log.position.dtype == np.int64 and set(np.unique(log.position)) == {0, 1, 2}
    assert log.click.dtype == np.int8 and set(np.unique(log.click)) <= {0, 1}
    assert 0 < log.click.sum() < 100  # 0.38%-0.69% CTR per the data README
    assert log.propensity.dtype == np.float64
    assert np.all((log.propensity > 0) & (log.propensity <= 1))
    if policy == "random":
        # Uniform logging: every item at every slot with probability 1 / n_items.
        np.testing.assert_allclose(log.propensity, 1.0 / n_items, rtol=1e-6)
    assert log.user_features.shape == (n, 4) and log.user_features.dtype.kind == "U"
    assert log.user_buckets.shape == (n, 4) and log.user_buckets.dtype == np.int64
    assert log.affinity.shape == (n, n_items) and log.affinity.dtype == np.float32
    assert log.affinity.min() >= 0
    items = log.items
    assert items.item_id.tolist() == list(range(n_items))
    assert items.numeric.shape == (n_items, 1) and items.numeric.dtype == np.float32
    assert items.categorical.shape == (n_items, 3)
    assert items.categorical_buckets.shape == (n_items, 3)


def test_obd_loader_rejects_unknown_policy_and_campaign():
    with pytest.raises(ValueError, match="policy"):
        load_obd("greedy", "all")
    with pytest.raises(ValueError, match="campaign"):
        load_obd("random", "kids")


def test_obd_user_features_are_hashed_by_the_kernel(obd_random):
    raw = obd_random.user_features
    expected = hash_categorical(raw.reshape(-1), 64, seed=0).reshape(raw.shape)
    np.testing.assert_array_equal(obd_random.user_buckets, expected)
    # Independent oracle: the kernel is MurmurHash3-32 (unsigned) modulo the buckets.
    for value, bucket in zip(raw[:50, 2], obd_random.user_buckets[:50, 2], strict=True):
        assert mmh3.hash(value, 0, signed=False) % 64 == bucket
    other = load_obd("random", "all", n_buckets=1024, hash_seed=7)
    expected = hash_categorical(raw.reshape(-1), 1024, seed=7).reshape(raw.shape)
    np.testing.assert_array_equal(other.user_buckets, expected)
    items = load_obd_items("random", "all", n_buckets=32, hash_seed=1)
    expected = hash_categorical(items.categorical.reshape(-1), 32, seed=1).reshape(-1, 3)
    np.testing.assert_array_equal(items.categorical_buckets, expected)


def test_time_split_is_ordered_and_complete(obd_random):
    train, val = time_split(obd_random, 0.2)
    assert len(train) == 8000 and len(val) == 2000
    assert train.timestamp.max() <= val.timestamp.min()
    np.testing.assert_array_equal(np.concatenate([train.item_id, val.item_id]), obd_random.item_id)
    with pytest.raises(ValueError, match="validation_fraction"):
        time_split(obd_random, 1.0)


def test_time_split_refuses_an_unsorted_log(obd_random):
    shuffled = obd_random.take(np.random.default_rng(0).permutation(len(obd_random)))
    with pytest.raises(ValueError, match="sorted"):
        time_split(shuffled)


def test_hillstrom_loader(hillstrom):
    n = 64_000
    assert len(hillstrom) == n
    assert hillstrom.treatments == ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
    # Arm sizes published with the data set.
    assert np.bincount(hillstrom.treatment).tolist() == [21306, 21307, 21387]
    assert hillstrom.recency.dtype == np.int64 and hillstrom.history.dtype == np.float32
    for name in ("mens", "womens", "newbie", "visit", "conversion"):
        assert getattr(hillstrom, name).dtype == np.int8
    assert hillstrom.spend.dtype == np.float32
    assert hillstrom.categorical_buckets.shape == (n, 3)
    assert hillstrom.categorical_buckets.dtype == np.int64
    for j, name in enumerate(("history_segment", "zip_code", "channel")):
        column = getattr(hillstrom, name)
        np.testing.assert_array_equal(
            hillstrom.categorical_buckets[:, j], hash_categorical(column, 64, seed=0)
        )
    # Every conversion is a visit and every spend a conversion (the uplift model's
    # factorisation relies on it).
    assert np.all(hillstrom.visit[hillstrom.conversion == 1] == 1)
    assert np.all(hillstrom.conversion[hillstrom.spend > 0] == 1)


@pytest.mark.parametrize("seed", [0, 11])
def test_stratified_split_keeps_arm_and_visit_shares(hillstrom, seed):
    strata = hillstrom_strata(hillstrom)
    parts = stratified_split(strata, (0.6, 0.2, 0.2), seed=seed)
    assert sum(p.size for p in parts) == len(hillstrom)
    assert np.unique(np.concatenate(parts)).size == len(hillstrom)  # disjoint, complete
    overall = np.bincount(strata, minlength=6) / strata.size
    for part, fraction in zip(parts, (0.6, 0.2, 0.2), strict=True):
        counts = np.bincount(strata[part], minlength=6)
        # Each stratum is cut at its own cumulative fraction: off by < 1 row per stratum.
        assert np.all(np.abs(counts - fraction * np.bincount(strata, minlength=6)) <= 1)
        np.testing.assert_allclose(counts / part.size, overall, atol=2e-4)


def test_stratified_split_validates_arguments():
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(np.zeros(10, dtype=np.int64), (0.5, 0.6))
    with pytest.raises(ValueError, match="1-D"):
        stratified_split(np.zeros((2, 2), dtype=np.int64))
