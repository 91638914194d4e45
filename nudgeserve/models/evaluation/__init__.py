"""Evaluation, NumPy only (no torch; pyarrow for log files): off-policy estimators
(``ope``), interval statistics (``stats``), causal impact of interventions (``impact``,
from logs: ``impact_logs``), experiment effects (``effects``), Qini (``qini``), uplift
calibration (``uplift_calibration``), classification metrics (``metrics``), plots.
``hillstrom_impact`` drives the shipped torch ensemble, imported when it runs."""
