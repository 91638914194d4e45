"""Shared fixtures of the serve unit tests: real engines on the shipped checkpoints.

Nothing here starts Ray; engines are loaded once per session (a few seconds, most of it
compiling the kernels).
"""

from __future__ import annotations

import pytest

from nudgeserve.serve.config import default_config
from nudgeserve.serve.engine.usecases import build_engine


@pytest.fixture(scope="session")
def config():
    return default_config()


@pytest.fixture(scope="session")
def engines(config):
    loaded = {}
    for settings in config.use_cases:
        engine = build_engine(settings)
        engine.load(device="cpu")
        loaded[settings.name] = engine
    return loaded


@pytest.fixture(scope="session")
def infos(engines):
    return {name: engine.info for name, engine in engines.items()}
