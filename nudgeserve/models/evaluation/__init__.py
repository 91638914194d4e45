"""Evaluation, NumPy only (no torch; pyarrow for log files): off-policy estimators,
metrics, statistics, causal impact of interventions, plots."""
