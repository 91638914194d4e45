"""The hot-path ops measured once per machine at start: cache key, cache reuse, corrupt or
unwritable caches, two processes at once, precedence, the report and its metrics."""

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from nudgeserve import kernels
from nudgeserve.kernels import REGISTRY, _autotune
from nudgeserve.kernels._autotune import (
    HOT_PATH,
    SIZES,
    autotune,
    backend_report,
    cache_key,
    cache_path,
    choose,
    key_fields,
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("NUDGESERVE_KERNELS", raising=False)
    monkeypatch.delenv("NUDGESERVE_KERNEL_AUTOTUNE", raising=False)
    monkeypatch.setenv("NUDGESERVE_KERNEL_PROFILE", str(tmp_path / "profile.json"))
    monkeypatch.setenv("NUDGESERVE_KERNEL_CACHE_DIR", str(tmp_path / "cache"))
    REGISTRY.reset()
    monkeypatch.setattr(_autotune, "_last", None)
    yield
    REGISTRY.reset()


def _fake_timings(ops, fastest=None):
    """Timings where ``fastest[op]`` (default: the last registered backend) wins."""
    fastest = fastest or {}
    out = {}
    for op in ops:
        backends = REGISTRY.backends(op)
        win = fastest.get(op, backends[-1])
        out[op] = {b: {s: (1e-6 if b == win else 5e-6) for s in SIZES} for b in backends}
    return out


@pytest.fixture
def fake_measure(monkeypatch):
    """Replaces the timer: records each call, returns ``_fake_timings`` (NumPy wins unless
    ``fake_measure.fastest`` says otherwise)."""

    class Fake:
        calls = 0
        fastest: dict = {}

        def __call__(self, ops=None, **kwargs):
            Fake.calls += 1
            return _fake_timings(ops, self.fastest)

    fake = Fake()
    monkeypatch.setattr(_autotune, "measure", fake)
    return fake


# The real key inputs, for the cases that change one of their fields.
_CPU = _autotune._cpu
_VERSION = _autotune._version
_FILES = _autotune._package_files


def _again():
    """A fresh start of the same process (what a second server start sees)."""
    REGISTRY.reset()
    _autotune._last = None
    return autotune()


# -- the cache key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda mp: mp.setattr(_autotune, "_cpu", lambda: {"model name": "Other CPU"}),
        lambda mp: mp.setattr(_autotune, "_cpu", lambda: {**_CPU(), "flags_sha256": "x"}),
        lambda mp: mp.setattr(os, "cpu_count", lambda: 1024),
        lambda mp: mp.setattr(_autotune, "get_num_threads", lambda: 1024),
        lambda mp: mp.setattr(_autotune.sys, "version", "3.99.0 (other build)"),
        lambda mp: mp.setattr(
            _autotune, "_version", lambda dist: "0.0" if dist == "numpy" else _VERSION(dist)
        ),
        lambda mp: mp.setattr(
            _autotune, "_version", lambda dist: "0.0" if dist == "numba" else _VERSION(dist)
        ),
        lambda mp: mp.setattr(
            _autotune,
            "_package_files",
            lambda: {**_FILES(), "compiled": {"_topk.so": [1, 2]}},
        ),
        lambda mp: mp.setattr(
            _autotune, "_package_files", lambda: {**_FILES(), "sources_sha256": "edited"}
        ),
    ],
    ids=["cpu-model", "cpu-flags", "cpu-count", "threads", "python", "numpy", "numba",
         "compiled", "sources"],
)  # fmt: skip
def test_cache_key_changes_with_each_input(monkeypatch, change):
    before = cache_key(key_fields())
    assert cache_key(key_fields()) == before  # stable
    change(monkeypatch)
    assert cache_key(key_fields()) != before


def test_key_fields_read_this_machine():
    fields = key_fields()
    assert fields["cpu"]["model name"] and len(fields["cpu"]["flags_sha256"]) == 64
    assert fields["cpu_count"] == os.cpu_count()
    assert fields["numpy"] and fields["python"]
    assert any(name.startswith("_topk") for name in fields["compiled"])  # built extensions


def test_changed_version_measures_again(monkeypatch, fake_measure):
    assert autotune().status == "measured"
    assert _again().status == "cache" and fake_measure.calls == 1
    monkeypatch.setattr(
        _autotune, "_version", lambda dist: "9.9" if dist == "numba" else _VERSION(dist)
    )
    assert _again().status == "measured" and fake_measure.calls == 2
    assert len(list((_autotune.cache_dir()).glob("kernel-autotune-*.json"))) == 2


# -- the cache file ----------------------------------------------------------------------


def test_cached_result_is_reused_without_measuring(fake_measure, tmp_path):
    first = autotune()
    assert first.status == "measured" and fake_measure.calls == 1
    assert first.path is not None and first.path.parent == tmp_path / "cache"
    doc = json.loads(first.path.read_text())
    assert doc["key"] == cache_key(key_fields())
    assert set(doc["choices"]) == set(_autotune._measured_ops())
    assert autotune().status == "measured"  # same process: nothing read again
    second = _again()
    assert second.status == "cache" and fake_measure.calls == 1
    assert {op: e["backend"] for op, e in second.ops.items() if op in HOT_PATH} == {
        op: e["backend"] for op, e in first.ops.items() if op in HOT_PATH
    }
    assert REGISTRY.source("topk") == "cache"


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", '{"format": 1, "key": "other"}', "", "KEYED_BUT_EMPTY"],
)
def test_corrupt_cache_is_measured_again_and_replaced(fake_measure, caplog, content):
    path = cache_path(cache_key(key_fields()))
    path.parent.mkdir(parents=True)
    if content == "KEYED_BUT_EMPTY":
        content = json.dumps({"format": 1, "key": cache_key(key_fields()), "choices": {}})
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="nudgeserve.kernels"):
        result = autotune()
    assert result.status == "measured" and fake_measure.calls == 1
    assert "measuring again" in caplog.text
    assert json.loads(path.read_text())["choices"]  # replaced by a valid one
    assert _again().status == "cache"


def test_unwritable_cache_dir_keeps_the_choice_in_memory(
    monkeypatch, fake_measure, tmp_path, caplog
):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NUDGESERVE_KERNEL_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="nudgeserve.kernels"):
        result = autotune()
    assert result.status == "measured" and result.path is None
    assert "in memory" in caplog.text
    assert REGISTRY.backend("topk") == "numpy" and REGISTRY.source("topk") == "measured"


def test_cache_dir_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("NUDGESERVE_KERNEL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _autotune.cache_dir() == tmp_path / "xdg" / "nudgeserve"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _autotune.cache_dir() == tmp_path / "home" / ".cache" / "nudgeserve"


def test_cache_dir_inside_the_checkout_is_not_written(monkeypatch, fake_measure, caplog):
    inside = _autotune.Path(_autotune.__file__).resolve().parents[2] / "no-such-dir"
    monkeypatch.setenv("NUDGESERVE_KERNEL_CACHE_DIR", str(inside))
    with caplog.at_level(logging.WARNING, logger="nudgeserve.kernels"):
        result = autotune()
    assert result.status == "measured" and result.path is None
    assert not inside.exists() and "source checkout" in caplog.text


def test_second_process_waits_for_the_first_and_reads_its_result(
    monkeypatch, fake_measure, tmp_path
):
    """A process holding the lock is measuring: another one starting meanwhile waits, then
    reads what it wrote instead of measuring too."""
    directory = tmp_path / "cache"
    directory.mkdir()
    key = cache_key(key_fields())
    ops = _autotune._measured_ops()
    doc = {
        "format": _autotune.FORMAT,
        "key": key,
        "choices": choose(_fake_timings(ops, {op: REGISTRY.backends(op)[0] for op in ops})),
        "median_us": {op: {} for op in ops},
    }
    results = []
    with _autotune._locked(directory, logging.getLogger("test")):
        waiter = threading.Thread(target=lambda: results.append(autotune()))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive() and not results  # waiting on the lock
        _autotune._write_atomic(cache_path(key, directory), doc, logging.getLogger("test"))
    waiter.join(10)
    assert results and results[0].status == "cache" and fake_measure.calls == 0
    assert REGISTRY.backend("topk") == REGISTRY.backends("topk")[0]
    assert not list(directory.glob("*.tmp"))


# -- precedence ---------------------------------------------------------------------------


def test_precedence_env_over_profile_over_cache_over_built_in_order(
    monkeypatch, fake_measure, tmp_path
):
    fake_measure.fastest = {"topk": "numpy", "clip": "numpy", "standardize": "numpy"}
    assert REGISTRY.backend("topk") == "cython" and REGISTRY.source("topk") == "default"
    autotune()
    assert (REGISTRY.backend("topk"), REGISTRY.source("topk")) == ("numpy", "measured")
    (tmp_path / "profile.json").write_text(json.dumps({"choices": {"topk": "numba"}}))
    assert _again().status == "cache"
    assert (REGISTRY.backend("topk"), REGISTRY.source("topk")) == ("numba", "profile")
    assert (REGISTRY.backend("clip"), REGISTRY.source("clip")) == ("numpy", "cache")
    monkeypatch.setenv("NUDGESERVE_KERNELS", "topk=cython")
    _again()
    assert (REGISTRY.backend("topk"), REGISTRY.source("topk")) == ("cython", "env")
    assert (REGISTRY.backend("standardize"), REGISTRY.source("standardize")) == (
        "numpy",
        "cache",
    )
    assert fake_measure.calls == 1


def test_disabled_measures_nothing_and_uses_the_built_in_order(monkeypatch, fake_measure):
    monkeypatch.setenv("NUDGESERVE_KERNEL_AUTOTUNE", "0")
    result = autotune()
    assert result.status == "disabled" and fake_measure.calls == 0
    assert not (_autotune.cache_dir()).exists()
    assert (REGISTRY.backend("topk"), REGISTRY.source("topk")) == ("cython", "default")
    monkeypatch.setenv("NUDGESERVE_KERNEL_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="NUDGESERVE_KERNEL_AUTOTUNE"):
        autotune()


def test_a_failing_measurement_is_logged_and_the_built_in_order_kept(monkeypatch, caplog):
    def broken(ops=None, **kwargs):
        raise RuntimeError("kernel crashed")

    monkeypatch.setattr(_autotune, "measure", broken)
    with caplog.at_level(logging.WARNING, logger="nudgeserve.kernels"):
        result = autotune()
    assert result.status == "failed" and "kernel crashed" in caplog.text
    assert (REGISTRY.backend("topk"), REGISTRY.source("topk")) == ("cython", "default")
    assert not list(_autotune.cache_dir().glob("kernel-autotune-*.json"))


def test_env_forcing_every_op_measures_nothing(monkeypatch, fake_measure):
    monkeypatch.setenv("NUDGESERVE_KERNELS", "numpy")
    result = autotune()
    assert result.status == "overridden" and fake_measure.calls == 0
    assert {e["source"] for e in result.ops.values()} == {"env"}
    assert {e["backend"] for e in result.ops.values()} == {"numpy"}


def test_import_measures_nothing(tmp_path):
    code = (
        "import nudgeserve.kernels as k; from nudgeserve.kernels import REGISTRY; "
        "k.topk; assert REGISTRY.tuned() == {}, REGISTRY.tuned()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=os.environ)
    assert not (tmp_path / "cache").exists()


def test_choose_sums_relative_times_and_skips_pruned_backends():
    timings = {
        "topk": {
            "cython": {"batch": 6e-6, "large": 300e-6},
            "numba": {"batch": 5e-6, "large": 900e-6},  # wins the batch, loses overall
            "numpy": {"batch": 200e-6},  # pruned: never timed on the large size
        },
        "murmurhash3_int64": {b: {"batch": 4e-6} for b in ("numba", "cython")},  # a tie
    }
    assert choose(timings) == {"topk": "cython", "murmurhash3_int64": "cython"}


# -- the report and its exposition --------------------------------------------------------


def test_report_shape(fake_measure):
    result = autotune()
    report = backend_report()
    assert set(report) == set(REGISTRY.ops) and result.ops == report
    for op, entry in report.items():
        assert set(entry) == {"backend", "source", "median_us"}
        assert entry["backend"] in REGISTRY.backends(op)
        assert entry["source"] in ("measured", "default")
        if op in _autotune._measured_ops():
            assert entry["source"] == "measured"
            assert set(entry["median_us"]) == set(REGISTRY.backends(op))
            assert all(set(per) == set(SIZES) for per in entry["median_us"].values())
        else:
            assert entry["median_us"] == {}
    json.dumps(report)  # plain data
    assert kernels.backend_report is backend_report and kernels.autotune is autotune


def test_report_without_resolving_lists_only_chosen_ops():
    assert backend_report(resolve=False) == {}
    REGISTRY.get("topk")
    assert list(backend_report(resolve=False)) == ["topk"]


def test_log_has_one_line_per_op(fake_measure, caplog):
    with caplog.at_level(logging.INFO, logger="nudgeserve.kernels"):
        autotune()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("kernel ")]
    per_op = [line for line in lines if " -> " in line]
    assert len(per_op) == len(REGISTRY.ops)
    topk = next(line for line in per_op if line.startswith("kernel topk -> "))
    assert "auto-measured now" in topk and "batch:" in topk and "large:" in topk


def test_metrics_text_has_the_kernel_backend_family(fake_measure):
    from nudgeserve.serve.metrics import kernel_backend_text

    autotune()
    text = kernel_backend_text()
    assert "# TYPE nudgeserve_kernel_backend gauge" in text
    backend = REGISTRY.backend("topk")
    assert f'nudgeserve_kernel_backend{{op="topk",backend="{backend}",source="measured"}} 1' in text
    assert len([x for x in text.splitlines() if not x.startswith("#")]) == len(REGISTRY.ops)
    odd = kernel_backend_text({'a"b': {"backend": "x\\y", "source": "env"}})
    assert 'op="a\\"b",backend="x\\\\y"' in odd


def test_server_metadata_lists_the_chosen_kernels(fake_measure):
    from nudgeserve.serve.protocol.kserve import server_metadata

    assert server_metadata("1")["kernels"] == {}
    autotune()
    meta = server_metadata("1")
    assert meta["kernels"] == {op: REGISTRY.backend(op) for op in REGISTRY.ops}
    assert "binary_tensor_data" in meta["extensions"]


# -- the real thing -----------------------------------------------------------------------


def test_real_measurement_is_short_and_complete(tmp_path):
    t0 = time.perf_counter()
    result = autotune()
    took = time.perf_counter() - t0
    assert result.status == "measured"
    assert took < 15, f"first-start measuring took {took:.1f} s"  # ~1 s on 2 shared cores
    doc = json.loads(result.path.read_text())
    assert set(doc["choices"]) == set(_autotune._measured_ops()) == set(HOT_PATH)
    for op, backend in doc["choices"].items():
        assert result.ops[op]["backend"] == backend
        assert doc["median_us"][op][backend]["batch"] > 0
