"""Where tests may write: temporary directories only, never the checkout.

``ray_temp_dir(name)``: a short directory under the system's temp dir for one local Ray
(Ray puts Unix sockets under it, whose paths must stay within Linux's 107-byte limit, too
short for pytest's ``tmp_path``). One parent per test session, removed at its end.

``checkout_snapshot()``: every file of the checkout with its size and modification time,
except what the build and the interpreter own (``.venv``, ``.git``, ``build``, compiled
kernels, ``__pycache__``, which also holds Numba's on-disk cache of the kernels, a build
artefact like the ``.so`` files) and sources (``.py``, ``.pyx``, ``.md``: a person may edit
them while tests run; no test writes them). ``tests/conftest.py`` compares a snapshot taken before
the session with one taken after and fails the run when a test wrote into the checkout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_SKIPPED_DIRS = {".git", ".venv", "build", "__pycache__", ".ruff_cache", "dist"}
_SKIPPED_SUFFIXES = (".so", ".egg-info")
_SOURCE_SUFFIXES = (".py", ".pyx", ".pxd", ".pyi", ".md")
_session_dir: Path | None = None


def session_scratch() -> Path:
    """This session's short scratch directory (created on first use)."""
    global _session_dir
    if _session_dir is None:
        _session_dir = Path(tempfile.mkdtemp(prefix="ns-"))
    return _session_dir


def ray_temp_dir(name: str) -> Path:
    """A fresh short directory for one local Ray's temp files."""
    path = session_scratch() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_session_scratch() -> None:
    global _session_dir
    if _session_dir is not None:
        shutil.rmtree(_session_dir, ignore_errors=True)
        _session_dir = None


def checkout_snapshot(root: Path = REPO) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of the checkout's files (see the module doc)."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [
            d for d in dirnames if d not in _SKIPPED_DIRS and not d.endswith(_SKIPPED_SUFFIXES)
        ]
        for name in filenames:
            if name.endswith(_SKIPPED_SUFFIXES + _SOURCE_SUFFIXES):
                continue
            path = Path(dirpath) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def checkout_changes(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> list[str]:
    """Human-readable lines for files created, changed or removed between two snapshots."""
    lines = [f"created  {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed  {p}" for p in sorted(before.keys() - after.keys())]
    lines += [
        f"modified {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]
    ]
    return lines
