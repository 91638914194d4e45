"""The Triton baseline's own virtualenv (``.bench/triton-venv``), installed on first use.

PyTriton (``nvidia-pytriton``, which bundles a real ``tritonserver`` binary) needs
``numpy<2`` while nudgeserve runs NumPy 2, so it gets a venv of its own. torch is pinned
to the version the project uses so the CPU wheel is taken (an unpinned torch could pull
the multi-gigabyte CUDA build); the model side of nudgeserve (``nudgeserve.models`` and
the kernels it uses) is imported from the source tree through ``PYTHONPATH``, so its
runtime dependencies are installed here too.

Launch facts (see ``launch_env``):
- PyTriton's Python-backend stub (``triton_python_backend_stub``) links
  ``libpython3.X.so.1.0`` and must find *this interpreter's* copy, so the interpreter's
  ``LIBDIR`` goes on ``LD_LIBRARY_PATH``; otherwise the stub loads whichever libpython the
  system has, or fails to start.
- PyTriton's default security config restricts the statistics endpoint to callers with
  an access token; perf_analyzer reads it, so ``_triton_app`` opens only that endpoint
  (the server binds to loopback).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def requirements() -> list[str]:
    """What the Triton venv installs (PyTriton plus nudgeserve.models' runtime deps)."""
    torch_version = version("torch").split("+", 1)[0]
    return [
        "nvidia-pytriton",
        "numpy<2",
        f"torch=={torch_version}",
        "msgspec>=0.18",
        "pyarrow>=15,<21",  # 21+ needs NumPy 2
        "safetensors>=0.4",
        "numba>=0.60",
        "pyyaml>=6",
    ]


def venv_python(bench_dir: Path) -> Path:
    return bench_dir / "triton-venv" / "bin" / "python"


def ensure_triton_venv(bench_dir: Path, log: Callable[[str], None]) -> Path:
    """Create and fill ``bench_dir/triton-venv`` unless it already matches; its python."""
    venv = bench_dir / "triton-venv"
    python = venv_python(bench_dir)
    reqs = requirements()
    stamp = venv / ".nudgeserve-requirements"
    digest = hashlib.sha256("\n".join(reqs).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    if not python.exists():
        # The interpreter running this benchmark: PyTriton picks its backend stub by the
        # Python version, and nudgeserve's compiled kernels were built for this version.
        base = getattr(sys, "_base_executable", sys.executable)
        log(f"triton: creating {venv} with {base}")
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    log(f"triton: installing {' '.join(reqs)} (first run only; progress below)")
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--progress-bar", "off", *reqs], check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"installing the Triton venv failed (pip exit {proc.returncode}); "
            f"remove {venv} and re-run to start over"
        )
    stamp.write_text(digest)
    return python


def launch_env(python: Path) -> dict[str, str]:
    """Environment for running a PyTriton server with ``python`` (see module docstring)."""
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env
