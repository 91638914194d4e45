"""Effects of an experiment's arms: differences in means with Neyman intervals.

``arm_effect`` is one treatment against the control in one population (all randomised
units, the units a rule targets, a segment); ``segment_effects`` cuts the Hillstrom
customers by a feature and sets each segment's observed effect beside the model's mean
predicted uplift. NumPy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from nudgeserve.models.evaluation.metrics import ate_difference_in_means
from nudgeserve.models.evaluation.tables import format_table, format_value, outcome_digits
from nudgeserve.models.specs import HILLSTROM_OUTCOMES

if TYPE_CHECKING:
    from nudgeserve.models.learn.datasets import HillstromData

__all__ = ["Effect", "SegmentEffect", "arm_effect", "effect_table", "segment_effects"]


class Effect(msgspec.Struct, frozen=True, kw_only=True):
    """Difference in means of ``outcome`` between ``treatment`` and the control arm in
    ``population``; ``low``/``high`` is the 95% Neyman interval."""

    treatment: str
    outcome: str
    population: str
    estimate: float
    se: float
    low: float
    high: float
    n_treated: int
    n_control: int
    mean_treated: float
    mean_control: float


class SegmentEffect(msgspec.Struct, frozen=True, kw_only=True):
    """Observed and predicted effect of ``treatment`` in one segment of customers."""

    feature: str
    segment: str
    treatment: str
    outcome: str
    estimate: float
    low: float
    high: float
    n_treated: int
    n_control: int
    predicted: float


def arm_effect(
    y: np.ndarray, action: np.ndarray, t: int, c: int, names: Sequence[str], outcome: str, pop: str
) -> Effect | None:
    """Treatment ``t`` against control ``c`` (indices into ``names``) on ``y: float64[n]``
    for units with ``action: int64[n]``; None unless each arm has at least 2 units."""
    if np.count_nonzero(action == t) < 2 or np.count_nonzero(action == c) < 2:
        return None
    e = ate_difference_in_means(y, action, t, c)
    return Effect(
        treatment=names[t],
        outcome=outcome,
        population=pop,
        estimate=e.ate,
        se=e.se,
        low=e.low,
        high=e.high,
        n_treated=e.n_treated,
        n_control=e.n_control,
        mean_treated=e.mean_treated,
        mean_control=e.mean_control,
    )


def effect_table(effects: Sequence[Effect]) -> str:
    rows = []
    for e in effects:
        d = outcome_digits(e.outcome)
        rows.append(
            [
                e.population,
                e.treatment,
                e.outcome,
                f"{format_value(e.estimate, d)} [{format_value(e.low, d)}, {format_value(e.high, d)}]",
                f"{format_value(e.mean_treated, d)} vs {format_value(e.mean_control, d)}",
                f"{e.n_treated} / {e.n_control}",
            ]
        )
    return format_table(
        ["population", "treatment", "outcome", "effect [95% CI]", "treated vs control", "n t / c"],
        rows,
    )


def segment_effects(
    data: HillstromData,
    predicted_uplift: Mapping[str, np.ndarray],
    *,
    features: Sequence[str] = ("history_segment", "channel", "newbie"),
    outcomes: Sequence[str] = HILLSTROM_OUTCOMES,
) -> tuple[SegmentEffect, ...]:
    """Difference in means per segment of each feature, beside the model's mean uplift.

    predicted_uplift: {outcome: float[n, T]} the model's uplift per customer of ``data``.
    """
    control = 0  # Hillstrom's arm 0 is "No E-Mail"
    out = []
    for feature in features:
        values = np.asarray(getattr(data, feature)).astype(str)
        for segment in np.unique(values):
            rows = values == segment
            for o in outcomes:
                y = data.outcome(o)
                for t, name in enumerate(data.treatments):
                    if t == control:
                        continue
                    arm = data.treatment[rows]
                    if np.count_nonzero(arm == t) < 2 or np.count_nonzero(arm == control) < 2:
                        continue
                    e = ate_difference_in_means(y[rows], arm, t, control)
                    pair = rows & ((data.treatment == t) | (data.treatment == control))
                    out.append(
                        SegmentEffect(
                            feature=feature,
                            segment=str(segment),
                            treatment=name,
                            outcome=o,
                            estimate=e.ate,
                            low=e.low,
                            high=e.high,
                            n_treated=e.n_treated,
                            n_control=e.n_control,
                            predicted=float(predicted_uplift[o][pair, t].mean()),
                        )
                    )
    return tuple(out)
