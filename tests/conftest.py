"""Settings every test session needs before anything starts Ray."""

import os
import secrets

# Ray 2.60 turns token authentication on for every new local cluster. Its driver reads the
# token once per process and keeps it, so every cluster this pytest process starts must
# use the same token; one random token set here, before any test runs, also keeps Ray
# from writing a token file into the user's home directory. End-to-end tests start the
# server in a subprocess with its own token (see tests/e2e/conftest.py).
if not any(os.environ.get(name) for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
