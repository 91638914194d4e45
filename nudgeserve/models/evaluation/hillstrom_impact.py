"""The Hillstrom e-mail experiment's impact report, with the shipped uplift ensemble.

Drives the torch ensemble (``learn.uplift_ensemble``): it scores the held-out customers,
the rule decides from its predictions, and ``impact_report`` evaluates the rule against
the experiment's own randomisation (uniform 1/3 propensities). Adds the experiment's
difference in means on all 64,000 customers and on the held-out test split, Qini curves
with bands, effects by segment and the uplift intervals' calibration. torch is imported
only when the shipped ensemble is loaded (importing this module does not load it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import numpy as np

from nudgeserve.models.evaluation.effects import (
    Effect,
    SegmentEffect,
    arm_effect,
    effect_table,
    segment_effects,
)
from nudgeserve.models.evaluation.impact import ImpactReport, impact_report
from nudgeserve.models.evaluation.qini import QiniBand, qini_band
from nudgeserve.models.evaluation.uplift_calibration import (
    CalibrationSummary,
    calibration_summary,
    calibration_table,
)
from nudgeserve.models.learn.datasets import (
    HillstromData,
    hillstrom_strata,
    load_hillstrom,
    stratified_split,
)
from nudgeserve.models.policies.intervention import InterventionConfig, decide_from_ensemble
from nudgeserve.models.specs import HILLSTROM_OUTCOMES

if TYPE_CHECKING:
    from nudgeserve.models.learn.uplift_ensemble import UpliftEnsemble

__all__ = ["HillstromImpactReport", "hillstrom_impact"]


class HillstromImpactReport(msgspec.Struct, frozen=True, kw_only=True):
    """The Hillstrom report: the experiment's own effects, the rule on held-out customers.

    ate_all / ate_test: difference in means per e-mail and outcome on all customers and on
    the held-out test split; impact: ``impact_report`` of the rule on the test split;
    calibration: the ensemble's interval calibration on the test split; qini_bands and
    segments: what the plots draw.
    """

    config: InterventionConfig
    n_all: int
    n_test: int
    split: str
    ensemble: str
    ate_all: tuple[Effect, ...]
    ate_test: tuple[Effect, ...]
    impact: ImpactReport
    calibration: tuple[CalibrationSummary, ...]
    qini_bands: tuple[QiniBand, ...]
    segments: tuple[SegmentEffect, ...]

    def to_text(self) -> str:
        lines = [
            "== Hillstrom e-mail experiment: the experiment's own effects ==",
            f"difference in means per e-mail vs no e-mail; all {self.n_all} customers and "
            f"the {self.n_test} held-out test customers ({self.split})",
            effect_table(self.ate_all + self.ate_test),
            "",
            self.impact.to_text(),
            "",
            f"== Uplift intervals: group calibration on the test split ({self.ensemble}) ==",
            calibration_table(self.calibration),
            "coverage: share of groups (deciles of predicted uplift per e-mail) whose "
            "observed difference in means lies within 1.96 x sqrt(model sd^2 + se^2) of the "
            "prediction; 'sampling only' ignores the model's sd.",
        ]
        return "\n".join(lines)


def _arm_effects(data: HillstromData, population: str) -> list[Effect]:
    out = []
    for t in range(len(data.treatments)):
        if t == 0:
            continue
        for o in HILLSTROM_OUTCOMES:
            e = arm_effect(data.outcome(o), data.treatment, t, 0, data.treatments, o, population)
            if e is not None:
                out.append(e)
    return out


def hillstrom_impact(
    config: InterventionConfig | None = None,
    *,
    ensemble: UpliftEnsemble | None = None,
    data: HillstromData | None = None,
    split: tuple[float, float, float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    n_bootstrap: int = 1000,
    qini_resamples: int = 200,
    calibration_groups: int = 10,
    seed: int = 0,
) -> HillstromImpactReport:
    """The Hillstrom report (module docstring).

    config: the rule (default ``InterventionConfig(costs={each e-mail: 0.05})``: a visit
        worth 1, an e-mail costing 0.05). Holdout and exploration shares play no part:
        the experiment's own randomisation is the data.
    ensemble: default the shipped one. data: default ``load_hillstrom()``.
    split / split_seed: must be the ensemble's training split so the test customers are
        held out (the defaults are).
    """
    if config is None:
        config = InterventionConfig(costs={"Mens E-Mail": 0.05, "Womens E-Mail": 0.05})
    if config.objective not in HILLSTROM_OUTCOMES:
        raise ValueError(
            f"config.objective must be one of {HILLSTROM_OUTCOMES} on Hillstrom, got "
            f"{config.objective!r}"
        )
    data = load_hillstrom() if data is None else data
    if ensemble is None:
        from nudgeserve.models.learn.uplift_ensemble import load_uplift_ensemble

        ensemble = load_uplift_ensemble()
    if tuple(data.treatments) != tuple(config.treatments):
        raise ValueError(
            f"config.treatments {config.treatments} differ from the data's {data.treatments}"
        )
    if data.treatments[0] != config.control:
        raise ValueError("the Hillstrom control must be 'No E-Mail' (arm 0)")
    _, _, test_rows = stratified_split(hillstrom_strata(data), split, seed=split_seed)
    test = data.take(test_rows)
    ate_all = _arm_effects(data, "all customers")
    ate_test = _arm_effects(test, "test split")

    prediction = ensemble.score(test.raw_columns())
    decisions = decide_from_ensemble(config, test_rows, prediction)
    mean = prediction.mean()
    predicted = {o: mean.outcome(o).astype(np.float64) for o in HILLSTROM_OUTCOMES}
    n_arms = len(config.treatments)
    impact = impact_report(
        config,
        action=test.treatment,
        # The experiment e-mailed each customer's arm with probability 1/3 by design.
        propensity=np.full(len(test), 1.0 / n_arms),
        outcomes={o: test.outcome(o) for o in HILLSTROM_OUTCOMES},
        policy_action=decisions.policy_action,
        predicted=predicted,
        n_bootstrap=n_bootstrap,
        qini_resamples=qini_resamples,
        seed=seed,
        title=(
            f"The decision rule on the {len(test)} held-out test customers (value per "
            f"{config.objective} {config.value_per_unit:g}, confidence {config.confidence:g}, "
            f"threshold {config.threshold:g})"
        ),
    )
    calibration = tuple(
        calibration_summary(
            prediction,
            test.treatment,
            test.outcome(o),
            o,
            split="test",
            n_groups=calibration_groups,
        )
        for o in HILLSTROM_OUTCOMES
    )
    uplift = {o: prediction.uplift(o).mean.astype(np.float64) for o in HILLSTROM_OUTCOMES}
    bands = []
    for o in HILLSTROM_OUTCOMES:
        for t in range(1, n_arms):
            pair = (test.treatment == t) | (test.treatment == 0)
            bands.append(
                qini_band(
                    uplift[o][pair, t],
                    test.outcome(o)[pair],
                    test.treatment[pair] == t,
                    treatment=config.treatments[t],
                    outcome=o,
                    n_resamples=qini_resamples,
                    seed=seed,
                )
            )
    return HillstromImpactReport(
        config=config,
        n_all=len(data),
        n_test=len(test),
        split=f"stratified {split}, split_seed {split_seed}: the ensemble's test part",
        ensemble=(
            f"{ensemble.n_members}-member bootstrap ensemble, interval scale "
            + ", ".join(f"{o} {s:.2f}" for o, s in ensemble.metadata.interval_scale.items())
        ),
        ate_all=tuple(ate_all),
        ate_test=tuple(ate_test),
        impact=impact,
        calibration=calibration,
        qini_bands=tuple(bands),
        segments=segment_effects(test, uplift),
    )
