"""Targeting by predicted uplift against random rankings: Qini with intervals and bands.

``qini_result`` summarises the model's Qini coefficient with a bootstrap interval and
the range of random rankings' (``metrics.qini_report``); ``qini_band`` draws the curves
on a grid for plotting. NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from nudgeserve.models.evaluation.metrics import qini_curve, qini_report
from nudgeserve.models.evaluation.tables import format_table, format_value, outcome_digits

__all__ = ["QiniBand", "QiniResult", "qini_band", "qini_result", "qini_table"]


class QiniResult(msgspec.Struct, frozen=True, kw_only=True):
    """Targeting ``treatment`` by the model's predicted uplift vs random rankings.

    qini / low / high: the model's Qini coefficient with a bootstrap interval;
    random_low / random_high: the 95% range of random rankings' Qini;
    p_random_ge_model: share of random rankings at least as good as the model.
    """

    treatment: str
    outcome: str
    population: str
    n: int
    qini: float
    low: float
    high: float
    random_mean: float
    random_low: float
    random_high: float
    qini_normalized: float
    p_random_ge_model: float


class QiniBand(msgspec.Struct, frozen=True, kw_only=True):
    """A Qini curve on a fixed grid of fractions targeted, for plotting.

    fraction: float[G]; model: the model's curve; model_low/high: its bootstrap 95% band;
    random_low/high: the 95% band of random rankings' curves; random_line: the straight
    line of random targeting (fraction x incremental outcome of targeting everyone).
    """

    treatment: str
    outcome: str
    fraction: list[float]
    model: list[float]
    model_low: list[float]
    model_high: list[float]
    random_line: list[float]
    random_low: list[float]
    random_high: list[float]


def qini_table(results: Sequence[QiniResult]) -> str:
    rows = []
    for q in results:
        d = outcome_digits(q.outcome) + 1
        rows.append(
            [
                q.treatment,
                q.outcome,
                f"{format_value(q.qini, d)} [{format_value(q.low, d)}, {format_value(q.high, d)}]",
                f"[{format_value(q.random_low, d)}, {format_value(q.random_high, d)}]",
                f"{q.qini_normalized:.3f}",
                f"{q.p_random_ge_model:.3f}",
                "yes" if q.p_random_ge_model < 0.05 else "no",
            ]
        )
    return format_table(
        [
            "treatment",
            "outcome",
            "model Qini [95% CI]",
            "random rankings 95% range",
            "Qini/perfect",
            "P(random >= model)",
            "beats random (P < 0.05)",
        ],
        rows,
    )


def qini_result(
    uplift: np.ndarray,
    y: np.ndarray,
    treated: np.ndarray,
    treatment: str,
    outcome: str,
    population: str,
    resamples: int,
    seed: int,
) -> QiniResult:
    """The model's Qini for ``treatment`` against random rankings (``QiniResult``).

    uplift: float[n] predicted uplift; y: float[n] outcomes; treated: bool[n] (False =
    control); resamples: bootstrap resamples and random rankings, each.
    """
    r = qini_report(uplift, y, treated, n_random=resamples, n_resamples=resamples, seed=seed)
    q, rq = r["qini"], r["random_qini"]
    return QiniResult(
        treatment=treatment,
        outcome=outcome,
        population=population,
        n=int(y.shape[0]),
        qini=q.estimate,
        low=q.low,
        high=q.high,
        random_mean=rq.estimate,
        random_low=rq.low,
        random_high=rq.high,
        qini_normalized=float(r["qini_normalized"]),
        p_random_ge_model=float(r["p_random_ge_model"]),
    )


def qini_band(
    uplift: np.ndarray,
    y: np.ndarray,
    treated: np.ndarray,
    *,
    treatment: str,
    outcome: str,
    grid: int = 101,
    n_resamples: int = 200,
    seed: int = 0,
) -> QiniBand:
    """The model's Qini curve (``evaluation.qini_curve``) on ``grid`` fractions with a
    bootstrap band, and the band of random rankings, for plotting.

    uplift: float[n] predicted uplift; y: float[n]; treated: bool[n] (False = control).
    """
    uplift = np.asarray(uplift, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    treated = np.asarray(treated, dtype=bool)
    xs = np.linspace(0.0, 1.0, grid)
    rng = np.random.default_rng(seed)

    def on_grid(scores: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is None:
            f, q = qini_curve(scores, y, treated)
        else:
            f, q = qini_curve(scores[rows], y[rows], treated[rows])
        return np.interp(xs, f, q)

    model = on_grid(uplift)
    n = y.shape[0]
    boot, rand = [], []
    for _ in range(n_resamples):
        rows = rng.integers(0, n, n)
        if treated[rows].all() or not treated[rows].any():
            continue
        boot.append(on_grid(uplift, rows))
        rand.append(on_grid(rng.random(n)))
    boot_a, rand_a = np.asarray(boot), np.asarray(rand)
    return QiniBand(
        treatment=treatment,
        outcome=outcome,
        fraction=xs.tolist(),
        model=model.tolist(),
        model_low=np.percentile(boot_a, 2.5, axis=0).tolist(),
        model_high=np.percentile(boot_a, 97.5, axis=0).tolist(),
        random_line=(xs * model[-1]).tolist(),
        random_low=np.percentile(rand_a, 2.5, axis=0).tolist(),
        random_high=np.percentile(rand_a, 97.5, axis=0).tolist(),
    )
