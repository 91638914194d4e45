"""An engine's warm-up chooses the kernels' backends (auto-measured once per machine)
before it touches them."""

import os
from pathlib import Path

import nudgeserve.kernels as kernels


def test_warmup_autotunes_before_touching_the_kernels(engines, monkeypatch):
    engine = next(iter(engines.values()))
    calls = []
    monkeypatch.setattr(kernels, "autotune", lambda log=None: calls.append("autotune"))
    monkeypatch.setattr(kernels, "warmup", lambda: calls.append("warmup") or {})
    took = engine.warmup()
    assert calls == ["autotune", "warmup"]
    assert list(took)[:2] == ["kernel_autotune", "kernels"]


def test_the_test_session_caches_outside_the_user_cache():
    cache = Path(os.environ["NUDGESERVE_KERNEL_CACHE_DIR"])  # set by tests/conftest.py
    assert not cache.resolve().is_relative_to((Path.home() / ".cache").resolve())
