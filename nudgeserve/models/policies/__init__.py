"""Policies, NumPy only (no torch): slot marginals of slate policies (``slates``: the
propensities serving logs and the distributions OPE replays), the linear bandit, the
intervention decision rule."""
