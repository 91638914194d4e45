"""Training: the loss goes down, runs are deterministic, the command writes a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nudgeserve.cli import main
from nudgeserve.models import load_checkpoint
from nudgeserve.models.learn.training import (
    HillstromTrainConfig,
    ObdTrainConfig,
    fit_platt,
    train_hillstrom,
)


def test_one_epoch_on_a_subset_lowers_the_validation_loss():
    config = HillstromTrainConfig(
        epochs=1, max_rows=4000, bootstrap=10, qini_resamples=5, progress=False, seed=1
    )
    result = train_hillstrom(config)
    before, after = result.history[0]["val_loss"], result.history[1]["val_loss"]
    assert after < before, result.history
    assert result.metadata.training.best_epoch == 1


def test_same_seed_same_weights_other_seed_other_weights():
    def weights(seed):
        config = HillstromTrainConfig(
            epochs=1, max_rows=2000, bootstrap=10, qini_resamples=5, progress=False, seed=seed
        )
        return train_hillstrom(config).module.state_dict()

    a, b, c = weights(4), weights(4), weights(5)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert any(not torch.equal(a[name], c[name]) for name in a if a[name].is_floating_point())


def test_obd_training_metadata_and_metrics(obd_trained):
    meta = obd_trained.metadata
    assert meta.kind == "obd_click"
    info = meta.training
    assert info.train_rows == 2400 and info.validation_rows == 600
    assert info.data[0].path == "nudgeserve/models/data/obd/random/all/all.csv.gz"
    assert info.data[1].path == "nudgeserve/models/data/obd/bts/all/all.csv.gz"
    models = meta.metrics["bts/all"]["models"]
    assert set(models) == {"global CTR", "per-item CTR", "click model"}
    for values in models.values():
        auc = values["auc"]
        assert auc["low"] <= auc["estimate"] <= auc["high"]
        assert auc["width"] == pytest.approx(auc["high"] - auc["low"])
    assert models["global CTR"]["auc"]["estimate"] == 0.5
    assert "Clicks are rare" in obd_trained.summary


def test_hillstrom_metrics_report_ate_and_qini(hillstrom_trained):
    treatments = hillstrom_trained.metadata.metrics["treatments"]
    assert set(treatments) == {"Mens E-Mail", "Womens E-Mail"}
    for outcomes in treatments.values():
        assert set(outcomes) == {"visit", "conversion", "spend"}
        for values in outcomes.values():
            ate = values["ate_difference_in_means"]
            assert ate["low"] <= ate["ate"] <= ate["high"]
            assert {"qini", "random_qini", "qini_normalized", "auuc"} <= set(values)


def test_fit_platt_recovers_known_parameters():
    rng = np.random.default_rng(0)
    logits = rng.normal(-3, 1.5, 200_000)
    y = (rng.random(logits.size) < 1 / (1 + np.exp(-(0.7 * logits - 0.4)))).astype(float)
    a, b = fit_platt(logits, y, prior_sd=10.0)
    assert a == pytest.approx(0.7, abs=0.03) and b == pytest.approx(-0.4, abs=0.1)
    # With almost no data the identity prior wins.
    a, b = fit_platt(logits[:20], np.zeros(20), prior_sd=0.01)
    assert a == pytest.approx(1.0, abs=0.01) and b == pytest.approx(0.0, abs=0.01)


def test_train_configs_validate():
    with pytest.raises(ValueError, match="epochs"):
        ObdTrainConfig(epochs=0)
    with pytest.raises(ValueError, match="max_rows"):
        HillstromTrainConfig(max_rows=5)


def test_train_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "ckpt"
    code = main(
        [
            "train",
            "hillstrom",
            "--epochs",
            "1",
            "--seed",
            "2",
            "--out",
            str(out),
            "--max-rows",
            "3000",
            "--bootstrap",
            "10",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "ATE diff-in-means" in printed and "hillstrom.safetensors" in printed
    loaded = load_checkpoint(out / "hillstrom.safetensors", expected_kind="hillstrom_uplift")
    assert loaded.metadata.training.command == (
        f"nudgeserve train hillstrom --epochs 1 --seed 2 --out {out.as_posix()} "
        "--bootstrap 10 --max-rows 3000"
    )
    assert json.loads((out / "hillstrom.json").read_text())["training"]["seed"] == 2


def test_train_command_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "criteo"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["train", "obd", "--epochs", "0"])
    assert "positive integer" in capsys.readouterr().err
