"""Evaluation: classification metrics with bootstrap intervals, ATE, Qini / AUUC.

Clicks in the OBD sample are rare (about 40 per 10,000 impressions), so every metric is
reported with a paired bootstrap 95% interval: each resample draws the same impressions
for every model, which makes model-minus-baseline differences meaningful even when the
intervals of the metrics themselves overlap. Bootstrap resamples are drawn as
multinomial counts (weights) over the original rows, so each metric is one O(n) pass
over data sorted once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

_EPS = 1e-7


def _check_pair(
    y: np.ndarray, p: np.ndarray, name: str = "scores"
) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y has {y.shape[0]} rows but {name} has {p.shape[0]}")
    return y, p


def _score_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, group): rows sorted by ascending score and the tie-group of each."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    new_group = np.empty(sorted_scores.shape[0], dtype=bool)
    if new_group.size:
        new_group[0] = True
        new_group[1:] = sorted_scores[1:] != sorted_scores[:-1]
    return order, np.cumsum(new_group) - 1


def _weighted_auc(y_sorted: np.ndarray, group: np.ndarray, w_sorted: np.ndarray) -> float:
    n_groups = int(group[-1]) + 1 if group.size else 0
    pos = np.bincount(group, weights=w_sorted * y_sorted, minlength=n_groups)
    neg = np.bincount(group, weights=w_sorted * (1.0 - y_sorted), minlength=n_groups)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (total_pos * total_neg))


def roc_auc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve (ties count one half); NaN without both classes.

    y: {0,1}[n]; scores: float[n]; weights: float[n] row weights (default 1).
    """
    y, scores = _check_pair(y, scores)
    order, group = _score_groups(scores)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    return _weighted_auc(y[order], group, w[order])


def log_loss(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean binary cross-entropy (natural log), probabilities clipped to [1e-7, 1-1e-7]."""
    y, p = _check_pair(y, p, "p")
    p = np.clip(p, _EPS, 1 - _EPS)
    losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    if weights is None:
        return float(losses.mean())
    w = np.asarray(weights, dtype=np.float64)
    return float(np.sum(w * losses) / np.sum(w))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval (``low``, ``high``) at ``level``."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    @property
    def width(self) -> float:
        return self.high - self.low

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "width": self.width}

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _percentile_interval(point: float, draws: np.ndarray, level: float) -> Interval:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(point, float("nan"), float("nan"), level)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(point, float(low), float(high), level)


def bootstrap_classification(
    y: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    reference: str | None = None,
) -> dict[str, dict[str, Interval]]:
    """AUC, log-loss and calibration ratio of every prediction, with paired intervals.

    y: {0,1}[n] outcomes; predictions: ``{name: float[n] probabilities}``.
    reference: a name in ``predictions``; adds ``auc_minus_<ref>`` and
        ``log_loss_minus_<ref>`` for every other model (paired: same resamples).
    Returns ``{name: {"auc", "log_loss", "calibration", ...: Interval}}`` where
    calibration = mean prediction / observed rate (1 is calibrated in the large).
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = y.shape[0]
    if n == 0:
        raise ValueError("y is empty")
    if reference is not None and reference not in predictions:
        raise ValueError(f"reference {reference!r} is not one of {sorted(predictions)}")
    prepared = {}
    for name, p in predictions.items():
        _, p = _check_pair(y, p, name)
        order, group = _score_groups(p)
        clipped = np.clip(p, _EPS, 1 - _EPS)
        losses = -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))
        prepared[name] = (order, group, losses, p)

    def metrics(w: np.ndarray) -> dict[str, dict[str, float]]:
        out = {}
        positives = float(np.sum(w * y))
        for name, (order, group, losses, p) in prepared.items():
            out[name] = {
                "auc": _weighted_auc(y[order], group, w[order]),
                "log_loss": float(np.sum(w * losses) / np.sum(w)),
                "calibration": float(np.sum(w * p) / positives) if positives else float("nan"),
            }
        if reference is not None:
            for name in prepared:
                if name != reference:
                    out[name][f"auc_minus_{reference}"] = out[name]["auc"] - out[reference]["auc"]
                    out[name][f"log_loss_minus_{reference}"] = (
                        out[name]["log_loss"] - out[reference]["log_loss"]
                    )
        return out

    point = metrics(np.ones(n))
    rng = np.random.default_rng(seed)
    draws: dict[str, dict[str, list[float]]] = {
        name: {k: [] for k in values} for name, values in point.items()
    }
    for _ in range(n_resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        for name, values in metrics(w).items():
            for key, value in values.items():
                draws[name][key].append(value)
    return {
        name: {
            key: _percentile_interval(value, np.asarray(draws[name][key]), level)
            for key, value in values.items()
        }
        for name, values in point.items()
    }


@dataclass(frozen=True)
class AteEstimate:
    """Difference in means of an outcome between a treated arm and the control arm.

    se is Neyman's sqrt(var_t/n_t + var_c/n_c) with sample variances (ddof=1); the
    interval is ``ate +- z * se`` (normal approximation; the arms are randomised).
    """

    ate: float
    se: float
    low: float
    high: float
    n_treated: int
    n_control: int
    mean_treated: float
    mean_control: float

    def as_dict(self) -> dict[str, float]:
        return {
            "ate": self.ate,
            "se": self.se,
            "low": self.low,
            "high": self.high,
            "width": self.high - self.low,
            "n_treated": self.n_treated,
            "n_control": self.n_control,
            "mean_treated": self.mean_treated,
            "mean_control": self.mean_control,
        }


def ate_difference_in_means(
    y: np.ndarray, treatment: np.ndarray, treated_arm: int, control_arm: int, z: float = 1.959964
) -> AteEstimate:
    """ATE of ``treated_arm`` vs ``control_arm`` on outcome ``y``.

    y: float[n] outcomes; treatment: int[n] arm index per row (other arms are ignored).
    """
    y = np.asarray(y, dtype=np.float64)
    treatment = np.asarray(treatment)
    if y.shape != treatment.shape:
        raise ValueError(f"y has shape {y.shape} but treatment has {treatment.shape}")
    yt, yc = y[treatment == treated_arm], y[treatment == control_arm]
    if yt.size < 2 or yc.size < 2:
        raise ValueError(
            f"each arm needs >= 2 rows (treated arm {treated_arm}: {yt.size}, "
            f"control arm {control_arm}: {yc.size})"
        )
    ate = yt.mean() - yc.mean()
    se = float(np.sqrt(yt.var(ddof=1) / yt.size + yc.var(ddof=1) / yc.size))
    return AteEstimate(
        float(ate),
        se,
        float(ate - z * se),
        float(ate + z * se),
        int(yt.size),
        int(yc.size),
        float(yt.mean()),
        float(yc.mean()),
    )


def qini_curve(
    uplift: np.ndarray, y: np.ndarray, treated: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve of targeting customers by descending predicted ``uplift``.

    uplift: float[n] scores; y: float[n] outcomes; treated: bool[n] (False = control).
    Returns (fraction, qini), float64[G+1] each, evaluated at the end of each group of
    tied scores (ties are never split, so a constant score gives the random line):
    qini(k) = Y_t(k) - Y_c(k) * N_t(k) / N_c(k) (Radcliffe), divided by n so the last
    point is the incremental outcome per customer of targeting everyone.
    """
    y, uplift = _check_pair(y, uplift, "uplift")
    treated = np.asarray(treated, dtype=bool).reshape(-1)
    if treated.shape != y.shape:
        raise ValueError(f"treated has {treated.shape[0]} rows but y has {y.shape[0]}")
    n = y.shape[0]
    if n == 0 or treated.all() or not treated.any():
        raise ValueError("qini needs treated and control rows")
    order, group = _score_groups(-uplift)  # descending uplift
    t, yy = treated[order], y[order]
    n_groups = int(group[-1]) + 1
    cum = {
        key: np.concatenate([[0.0], np.cumsum(np.bincount(group, weights=w, minlength=n_groups))])
        for key, w in {
            "nt": t.astype(np.float64),
            "nc": (~t).astype(np.float64),
            "yt": yy * t,
            "yc": yy * ~t,
        }.items()
    }
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled_control = np.where(cum["nc"] > 0, cum["yc"] * cum["nt"] / cum["nc"], 0.0)
    qini = (cum["yt"] - scaled_control) / n
    fraction = (cum["nt"] + cum["nc"]) / n
    return fraction, qini


def qini_coefficient(uplift: np.ndarray, y: np.ndarray, treated: np.ndarray) -> float:
    """Area between the Qini curve and the random-targeting line (trapezoids over the
    fraction targeted). 0 = no better than random; units: outcome per customer."""
    fraction, qini = qini_curve(uplift, y, treated)
    random_line = fraction * qini[-1]
    return float(np.trapezoid(qini - random_line, fraction))


def perfect_uplift_scores(y: np.ndarray, treated: np.ndarray) -> np.ndarray:
    """Scores of the ideal ranking on observed data: treated rows by descending outcome
    first, control rows by ascending outcome last (Radcliffe's optimum Qini curve)."""
    y = np.asarray(y, dtype=np.float64)
    return np.where(np.asarray(treated, dtype=bool), y, -y)


def auuc(uplift: np.ndarray, y: np.ndarray, treated: np.ndarray) -> float:
    """Area under the uplift curve minus the random line, per customer.

    uplift curve(k) = (Y_t(k)/N_t(k) - Y_c(k)/N_c(k)) * (N_t(k) + N_c(k)) / n, over the
    fraction targeted; like Qini but with both arms' means re-estimated at every k.
    """
    y, uplift = _check_pair(y, uplift, "uplift")
    treated = np.asarray(treated, dtype=bool).reshape(-1)
    n = y.shape[0]
    order, group = _score_groups(-uplift)
    t, yy = treated[order], y[order]
    n_groups = int(group[-1]) + 1

    def cumulative(w: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(np.bincount(group, weights=w, minlength=n_groups))])

    nt, nc = cumulative(t.astype(np.float64)), cumulative((~t).astype(np.float64))
    yt, yc = cumulative(yy * t), cumulative(yy * ~t)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where((nt > 0) & (nc > 0), (yt / nt - yc / nc) * (nt + nc), 0.0) / n
    fraction = (nt + nc) / n
    return float(np.trapezoid(gain - fraction * gain[-1], fraction))


def qini_report(
    uplift: np.ndarray,
    y: np.ndarray,
    treated: np.ndarray,
    *,
    n_random: int = 200,
    n_resamples: int = 200,
    seed: int = 0,
) -> dict[str, object]:
    """The model's Qini against random targeting measured in the same run.

    Returns ``{"qini": Interval (bootstrap), "qini_normalized": model / perfect,
    "auuc": float, "random_qini": Interval (mean and 95% range of ``n_random`` random
    rankings), "p_random_ge_model": share of random rankings at least as good}``.
    """
    y = np.asarray(y, dtype=np.float64)
    treated = np.asarray(treated, dtype=bool)
    uplift = np.asarray(uplift, dtype=np.float64)
    rng = np.random.default_rng(seed)
    model = qini_coefficient(uplift, y, treated)
    perfect = qini_coefficient(perfect_uplift_scores(y, treated), y, treated)
    random_draws = np.array(
        [qini_coefficient(rng.random(y.shape[0]), y, treated) for _ in range(n_random)]
    )
    boot = []
    n = y.shape[0]
    for _ in range(n_resamples):
        rows = rng.integers(0, n, n)
        if treated[rows].all() or not treated[rows].any():
            continue
        boot.append(qini_coefficient(uplift[rows], y[rows], treated[rows]))
    return {
        "qini": _percentile_interval(model, np.asarray(boot), 0.95),
        "qini_normalized": model / perfect if perfect > 0 else float("nan"),
        "auuc": auuc(uplift, y, treated),
        "random_qini": _percentile_interval(float(random_draws.mean()), random_draws, 0.95),
        "p_random_ge_model": float(np.mean(random_draws >= model)),
    }


def smoothed_rate_by_group(
    groups: np.ndarray, y: np.ndarray, n_groups: int, prior_strength: float
) -> np.ndarray:
    """float64[n_groups] per-group rate shrunk toward the overall rate.

    rate_g = (sum y_g + prior_strength * overall) / (n_g + prior_strength); the per-item
    CTR baseline uses it so an item with 0 clicks in 100 views is not predicted 0.
    """
    groups = np.asarray(groups, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    overall = y.mean()
    sums = np.bincount(groups, weights=y, minlength=n_groups)
    counts = np.bincount(groups, minlength=n_groups)
    return (sums + prior_strength * overall) / (counts + prior_strength)


def to_jsonable(value: object) -> object:
    """Intervals and estimates -> plain dicts/floats (for checkpoint metadata)."""
    if isinstance(value, Interval | AteEstimate):
        return value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
