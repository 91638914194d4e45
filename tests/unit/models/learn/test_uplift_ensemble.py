"""Uplift intervals: the stacked ensemble, interval arithmetic, calibration, checkpoints."""

from __future__ import annotations

import dataclasses
import shutil
from statistics import NormalDist

import numpy as np
import pytest
import torch

from nudgeserve.models import CheckpointError, hillstrom_strata, load_hillstrom, stratified_split
from nudgeserve.models.evaluation.uplift_calibration import calibration_summary
from nudgeserve.models.learn.nets import UpliftModel
from nudgeserve.models.learn.uplift_ensemble import (
    EnsemblePrediction,
    StackedUpliftModule,
    default_ensemble_path,
    load_uplift_ensemble,
    read_ensemble_metadata,
    save_uplift_ensemble,
)
from nudgeserve.models.learn.uplift_ensemble_training import (
    EnsembleTrainConfig,
    bootstrap_within_arms,
    train_uplift_ensemble,
)
from nudgeserve.models.specs import HILLSTROM_OUTCOMES, HILLSTROM_TREATMENTS


@pytest.fixture(scope="module")
def shipped():
    return load_uplift_ensemble(device="cpu")


@pytest.fixture(scope="module")
def small_ensemble():
    """Two members, two epochs, 4,000 customers (seconds)."""
    config = EnsembleTrainConfig(
        n_members=2, epochs=2, max_rows=4000, progress=False, seed=3, calibration_groups=4
    )
    return train_uplift_ensemble(config, command="test")


def test_stacked_module_equals_each_member():
    torch.manual_seed(0)
    members = [
        UpliftModel(n_categorical=3, n_buckets=8, n_numeric=5, n_treatments=3, hidden=16)
        for _ in range(4)
    ]
    for m in members:  # move the heads off their near-constant initialisation
        for p in m.parameters():
            p.data.add_(0.2 * torch.randn_like(p))
    stacked = StackedUpliftModule(members).eval()
    categorical = torch.randint(0, 8, (37, 3))
    numeric = torch.randn(37, 5)
    with torch.no_grad():
        out = stacked(categorical, numeric)
        for k, m in enumerate(members):
            torch.testing.assert_close(out[k], m.eval()(categorical, numeric), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="architecture"):
        StackedUpliftModule(
            [members[0], UpliftModel(n_categorical=3, n_buckets=4, n_numeric=5, n_treatments=3)]
        )


def test_interval_arithmetic_from_member_predictions():
    rng = np.random.default_rng(1)
    k, b = 5, 7
    members = rng.uniform(0.05, 0.3, (k, b, 3, 3)).astype(np.float32)
    prediction = EnsemblePrediction(members, HILLSTROM_TREATMENTS, 0, {"visit": 1.5})
    interval = prediction.uplift("visit", level=0.9)
    u = members[:, :, 0, :].astype(np.float64) - members[:, :, 0, :1]
    sd = u.std(axis=0, ddof=1) * 1.5
    z = NormalDist().inv_cdf(0.95)
    np.testing.assert_allclose(interval.mean, u.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(interval.sd, sd, atol=1e-6)
    np.testing.assert_allclose(interval.low, u.mean(axis=0) - z * sd, atol=1e-6)
    np.testing.assert_allclose(interval.high, u.mean(axis=0) + z * sd, atol=1e-6)
    np.testing.assert_allclose(interval.baseline, members[:, :, 0, 0].mean(axis=0), atol=1e-6)
    assert np.all(interval.mean[:, 0] == 0) and np.all(interval.sd[:, 0] == 0)
    # Outcomes without a fitted scale use 1.
    np.testing.assert_allclose(
        prediction.uplift("spend").sd,
        (members[:, :, 2] - members[:, :, 2, :1]).std(0, ddof=1),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="level"):
        prediction.uplift("visit", level=1.0)
    with pytest.raises(ValueError, match="outcome"):
        prediction.uplift("clicks")


def test_shipped_ensemble_metadata_and_weights(shipped, tmp_path):
    meta = shipped.metadata
    assert meta.n_members == shipped.n_members == 8
    assert meta.training.command.startswith("nudgeserve impact train-ensemble --members 8")
    assert meta.member_seeds == tuple(range(8))
    assert set(meta.interval_scale) == set(HILLSTROM_OUTCOMES)
    assert all(s >= 1.0 for s in meta.interval_scale.values())
    assert {c["outcome"] for c in meta.calibration["test"]} == set(HILLSTROM_OUTCOMES)
    # A tampered weights file is refused before use.
    copy = tmp_path / "ens"
    shutil.copy(default_ensemble_path(), copy.with_suffix(".safetensors"))
    shutil.copy(default_ensemble_path().with_suffix(".json"), copy.with_suffix(".json"))
    blob = bytearray(copy.with_suffix(".safetensors").read_bytes())
    blob[-1] ^= 0xFF
    copy.with_suffix(".safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_uplift_ensemble(copy)
    copy.with_suffix(".json").write_text("{}")
    with pytest.raises(CheckpointError, match="format_version"):
        read_ensemble_metadata(copy)


def test_shipped_calibration_reproduces_on_the_test_split(shipped):
    data = load_hillstrom()
    _, _, test_rows = stratified_split(hillstrom_strata(data), (0.6, 0.2, 0.2), seed=0)
    test = data.take(test_rows)
    prediction = shipped.score(test.raw_columns())
    stored = {c["outcome"]: c for c in shipped.metadata.calibration["test"]}
    # The stored figures were computed on another CPU. torch's float32 results differ across
    # CPUs (vector width, FMA, threads) by a few units in the last place, which can move a
    # customer whose predicted uplift sits on a group boundary into the next group and so
    # move the statistic. So the tolerance is measured, not guessed: the spread of each
    # statistic when every prediction is perturbed by 1e-5 relative (about 100 float32 ulps,
    # above any cross-CPU difference), times 3, plus the float64 noise floor.
    rng = np.random.default_rng(0)
    perturbed = [
        dataclasses.replace(
            prediction,
            members=prediction.members
            * (1 + 1e-5 * rng.standard_normal(prediction.members.shape)).astype(np.float32),
        )
        for _ in range(4)
    ]
    for outcome in HILLSTROM_OUTCOMES:
        y = test.outcome(outcome)

        def summary_of(p, outcome=outcome, y=y):
            return calibration_summary(p, test.treatment, y, outcome, split="test")

        here = summary_of(prediction)
        assert summary_of(prediction) == here  # deterministic on one machine
        spread = [summary_of(p) for p in perturbed]
        for stat in ("coverage", "mean_z2"):
            value = getattr(here, stat)
            wobble = max(abs(getattr(s, stat) - value) for s in spread)
            tolerance = 3 * wobble + 1e-9 * max(1.0, abs(value))
            assert abs(value - stored[outcome][stat]) <= tolerance, (
                outcome,
                stat,
                value,
                stored[outcome][stat],
                tolerance,
            )
    # The ensemble's mean uplift on held-out customers sits near the experiment's effect.
    visit = prediction.uplift("visit")
    for arm in (1, 2):
        pair = (test.treatment == arm) | (test.treatment == 0)
        observed = test.visit[test.treatment == arm].mean() - test.visit[test.treatment == 0].mean()
        assert abs(visit.mean[pair, arm].mean() - observed) < 0.02


def test_training_is_deterministic_and_round_trips(small_ensemble, tmp_path):
    meta = small_ensemble.metadata
    assert meta.n_members == 2 and meta.member_seeds == (3, 4)
    first = load_hillstrom().take(slice(0, 4000))
    train_rows, _, _ = stratified_split(hillstrom_strata(first), (0.6, 0.2, 0.2), seed=0)
    assert meta.training.train_rows == len(train_rows) and meta.training.command == "test"
    # Members differ (own resample, own seed).
    a, b = small_ensemble.members
    assert not torch.equal(a.embedding.weight, b.embedding.weight)
    again = train_uplift_ensemble(
        EnsembleTrainConfig(
            n_members=2, epochs=2, max_rows=4000, progress=False, seed=3, calibration_groups=4
        ),
        command="test",
    )
    for first, second in zip(small_ensemble.members, again.members, strict=True):
        for name, tensor in first.state_dict().items():
            torch.testing.assert_close(tensor, second.state_dict()[name], rtol=0, atol=0)
    assert again.metadata.interval_scale == meta.interval_scale
    path = save_uplift_ensemble(small_ensemble.members, meta, tmp_path / "ens")
    loaded = load_uplift_ensemble(path, device="cpu")
    data = load_hillstrom().take(slice(0, 50))
    features = loaded.featurizer.transform(data.raw_columns())
    with torch.no_grad():
        direct = a(torch.from_numpy(features.categorical), torch.from_numpy(features.numeric))
    # The loaded ensemble runs its members stacked (one batched matmul per layer); the
    # direct call runs one member: float32 sums in another order, so they agree to a few
    # ulps of the layer width's accumulation, not bit for bit (the same tolerance as
    # test_stacked_module_equals_each_member).
    np.testing.assert_allclose(
        loaded.predict(features).members[0], direct.numpy(), rtol=1e-5, atol=1e-6
    )


def test_bootstrap_within_arms_keeps_each_arm_size():
    treatment = np.repeat([0, 1, 2], [50, 30, 20])
    rows = bootstrap_within_arms(treatment, seed=5)
    assert np.bincount(treatment[rows]).tolist() == [50, 30, 20]
    assert len(np.unique(rows)) < 100  # with replacement
    np.testing.assert_array_equal(rows, bootstrap_within_arms(treatment, seed=5))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n_members"):
        EnsembleTrainConfig(n_members=1)
    with pytest.raises(ValueError, match="calibration_groups"):
        EnsembleTrainConfig(calibration_groups=0)


@pytest.mark.parametrize("rows", [1, 7, 1100])
def test_both_stacked_paths_equal_the_members(rows):
    # Batches from 1,024 rows on CPU loop over members; smaller ones use batched matmuls.
    torch.manual_seed(rows)
    members = [
        UpliftModel(n_categorical=3, n_buckets=8, n_numeric=5, n_treatments=3, hidden=16)
        for _ in range(3)
    ]
    for m in members:
        for p in m.parameters():
            p.data.add_(0.2 * torch.randn_like(p))
    stacked = StackedUpliftModule(members).eval()
    categorical = torch.randint(0, 8, (rows, 3))
    numeric = torch.randn(rows, 5)
    with torch.no_grad():
        out = stacked(categorical, numeric)
        for k, m in enumerate(members):
            torch.testing.assert_close(out[k], m.eval()(categorical, numeric), rtol=1e-5, atol=1e-6)
