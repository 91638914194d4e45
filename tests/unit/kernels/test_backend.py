"""The per-op backend choice: environment override, machine profile, fallbacks."""

import json

import numpy as np
import pytest

from nudgeserve.kernels._backend import Registry


def _registry(with_cython_broken=False):
    reg = Registry()

    def broken():
        raise ImportError("compiled module not built")

    reg.register(
        "double",
        {
            "cython": broken if with_cython_broken else (lambda: lambda x: x * 2 + 0),
            "numba": lambda: lambda x: x * 2 + 0,
            "numpy": lambda: lambda x: np.multiply(x, 2),
        },
        example=lambda size: ((np.arange(4 if size == "small" else 1000),), {}),
    )
    reg.register(
        "only_numpy",
        {"numpy": lambda: lambda x: x},
        example=lambda size: ((1,), {}),
    )
    return reg


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv("NUDGESERVE_KERNELS", raising=False)
    monkeypatch.setenv("NUDGESERVE_KERNEL_PROFILE", str(tmp_path / "profile.json"))


def test_default_order_prefers_compiled():
    reg = _registry()
    assert reg.backend("double") == "cython"
    assert reg.backend("only_numpy") == "numpy"


def test_broken_compiled_backend_falls_back_with_warning():
    reg = _registry(with_cython_broken=True)
    with pytest.warns(UserWarning, match="cython backend unavailable"):
        assert reg.backend("double") == "numba"


def test_env_forces_one_backend_for_all_ops(monkeypatch):
    monkeypatch.setenv("NUDGESERVE_KERNELS", "numpy")
    reg = _registry()
    assert reg.backend("double") == "numpy"
    assert reg.backend("only_numpy") == "numpy"


def test_env_global_backend_missing_for_op_uses_reference(monkeypatch):
    monkeypatch.setenv("NUDGESERVE_KERNELS", "numba")
    reg = _registry()
    assert reg.backend("double") == "numba"
    assert reg.backend("only_numpy") == "numpy"


def test_env_per_op(monkeypatch):
    monkeypatch.setenv("NUDGESERVE_KERNELS", "double=numba")
    reg = _registry()
    assert reg.backend("double") == "numba"


def test_env_forced_broken_backend_raises(monkeypatch):
    monkeypatch.setenv("NUDGESERVE_KERNELS", "double=cython")
    reg = _registry(with_cython_broken=True)
    with pytest.raises(ImportError, match="not built"):
        reg.get("double")


@pytest.mark.parametrize(
    "value, match",
    [
        ("fortran", "must be one of"),
        ("double=gpu", "must be one of"),
        ("nosuchop=numpy", "unknown op"),
    ],
)
def test_env_typos_are_errors(monkeypatch, value, match):
    monkeypatch.setenv("NUDGESERVE_KERNELS", value)
    reg = _registry()
    with pytest.raises(ValueError, match=match):
        reg.get("double")


def test_profile_choice_is_used(tmp_path):
    (tmp_path / "profile.json").write_text(json.dumps({"choices": {"double": "numpy"}}))
    reg = _registry()
    assert reg.backend("double") == "numpy"


def test_unreadable_profile_warns_and_uses_default(tmp_path):
    (tmp_path / "profile.json").write_text("{not json")
    reg = _registry()
    with pytest.warns(UserWarning, match="unreadable kernel profile"):
        assert reg.backend("double") == "cython"


def test_register_requires_numpy_reference():
    reg = Registry()
    with pytest.raises(ValueError, match="numpy reference"):
        reg.register("x", {"numba": lambda: abs}, example=lambda s: ((), {}))


def test_real_registry_write_profile_round_trip(tmp_path):
    from nudgeserve.kernels import REGISTRY, chosen_backends
    from nudgeserve.kernels._profile import write_profile

    # The autouse fixture points NUDGESERVE_KERNEL_PROFILE at tmp_path/profile.json.
    path, choices, timings = write_profile(samples=3)
    assert path == tmp_path / "profile.json"
    assert set(choices) == set(REGISTRY.ops)
    for op, backend in choices.items():
        assert timings[op][backend] == min(timings[op].values())
    assert json.loads(path.read_text())["choices"] == choices
    try:
        assert chosen_backends() == choices  # import-time choice now follows the profile
    finally:
        REGISTRY.reset()


def test_op_default_order_applies_without_profile():
    reg = Registry()
    reg.register(
        "slow_cython",
        {
            "cython": lambda: lambda x: x,
            "numba": lambda: lambda x: x,
            "numpy": lambda: lambda x: x,
        },
        example=lambda size: ((1,), {}),
        default_order=("numba", "cython", "numpy"),
    )
    assert reg.backend("slow_cython") == "numba"


def test_shipped_log1p_prefers_numba_without_profile():
    from nudgeserve.kernels import REGISTRY

    REGISTRY.reset()
    try:
        assert REGISTRY.backend("log1p") in ("numba", "numpy")  # numpy only if numba is absent
    finally:
        REGISTRY.reset()
