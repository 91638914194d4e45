"""Policies, NumPy only (no torch): slate selection with exact propensities, the linear
bandit, the intervention decision rule."""
