"""Settings every test session needs before anything starts Ray, and the guard that keeps
tests out of the checkout."""

import os
import secrets

import pytest

from tests._scratch import (
    checkout_changes,
    checkout_snapshot,
    remove_session_scratch,
    session_scratch,
)

# Ray 2.60 turns token authentication on for every new local cluster. Its driver reads the
# token once per process and keeps it, so every cluster this pytest process starts must
# use the same token; one random token set here, before any test runs, also keeps Ray
# from writing a token file into the user's home directory. End-to-end tests start the
# server in a subprocess with its own token (see tests/e2e/conftest.py).
if not any(os.environ.get(name) for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)

# The server's warm-up caches its kernel measurement in ~/.cache/nudgeserve by default
# (nudgeserve.kernels._autotune); this session's servers and engines, e2e subprocesses
# included (they inherit the environment), cache it in the scratch dir instead.
os.environ["NUDGESERVE_KERNEL_CACHE_DIR"] = str(session_scratch() / "kernel-cache")

# Hypothesis keeps its example database and caches (``constants``, ``unicode_data``) in
# ./.hypothesis by default: the checkout. Both go to this session's scratch directory.
try:
    from hypothesis import settings
    from hypothesis.configuration import set_hypothesis_home_dir
    from hypothesis.database import DirectoryBasedExampleDatabase

    set_hypothesis_home_dir(str(session_scratch() / "hypothesis-home"))

    settings.register_profile(
        "scratch", database=DirectoryBasedExampleDatabase(str(session_scratch() / "hypothesis"))
    )
    settings.load_profile("scratch")
except ImportError:  # hypothesis is a dev dependency; without it its tests are not collected
    pass

_BEFORE: dict = {}


def pytest_sessionstart(session):
    _BEFORE.update(checkout_snapshot())


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when any test wrote into the checkout (tests use temp dirs only)."""
    try:
        changes = checkout_changes(_BEFORE, checkout_snapshot())
        if changes:
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            text = "tests wrote into the checkout (use tmp_path or tests._scratch):\n  " + (
                "\n  ".join(changes[:50])
            )
            if reporter is not None:
                reporter.write_sep("=", "checkout written", red=True)
                reporter.write_line(text)
            else:
                print(text)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        remove_session_scratch()
