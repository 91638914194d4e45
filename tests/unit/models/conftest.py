"""Shared fixtures: the real data loaded once, and small models trained once per session."""

from __future__ import annotations

import pytest

from nudgeserve.models import load_hillstrom, load_obd
from nudgeserve.models.learn.training import (
    HillstromTrainConfig,
    ObdTrainConfig,
    train_hillstrom,
    train_obd,
)


@pytest.fixture(scope="session")
def obd_random():
    return load_obd("random", "all")


@pytest.fixture(scope="session")
def hillstrom():
    return load_hillstrom()


@pytest.fixture(scope="session")
def obd_trained():
    """A click model trained for 2 epochs on the first 3,000 impressions (seconds)."""
    config = ObdTrainConfig(epochs=2, max_rows=3000, bootstrap=20, progress=False, seed=3)
    return train_obd(config, command="test")


@pytest.fixture(scope="session")
def hillstrom_trained():
    """An uplift model trained for 2 epochs on the first 6,000 customers (seconds)."""
    config = HillstromTrainConfig(
        epochs=2, max_rows=6000, bootstrap=20, qini_resamples=10, progress=False, seed=5
    )
    return train_hillstrom(config, command="test")
