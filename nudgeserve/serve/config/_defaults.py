"""The shipped default configuration."""

from __future__ import annotations

from nudgeserve.serve.config._experiments import Experiment, Holdout, Variant
from nudgeserve.serve.config._policies import (
    Control,
    EpsilonGreedy,
    Greedy,
    LinearBanditPolicy,
    Thompson,
)
from nudgeserve.serve.config._serving import ServeConfig, ServerSettings
from nudgeserve.serve.config._usecases import HillstromUseCase, Interventions, ObdUseCase


def default_config() -> ServeConfig:
    """The shipped defaults (the same as ``configs/default.yaml`` in the repository): the
    OBD and Hillstrom use cases on their shipped checkpoints, an OBD experiment (greedy
    against two online bandits), a Hillstrom experiment with a no-e-mail holdout, the
    intervention use case (uplift intervals, costs, daily caps, its own holdout and
    exploration), decisions logged under ``.state``."""
    return ServeConfig(
        server=ServerSettings(),
        use_cases=(
            ObdUseCase(
                name="obd",
                model_name="obd_click",
                policy=EpsilonGreedy(epsilon=0.1),
            ),
            HillstromUseCase(
                name="hillstrom",
                model_name="hillstrom_uplift",
                objective="spend",
                value_per_unit=1.0,
                treatment_costs={"Mens E-Mail": 0.1, "Womens E-Mail": 0.1},
                min_gain=0.0,
                policy=EpsilonGreedy(epsilon=0.05),
            ),
            HillstromUseCase(
                name="interventions",
                model_name="hillstrom_interventions",
                objective="visit",
                policy=Greedy(),
                interventions=Interventions(
                    rule={
                        "objective": "visit",
                        "value_per_unit": 1.0,
                        "costs": {"Mens E-Mail": 0.05, "Womens E-Mail": 0.05},
                        "threshold": 0.0,
                        "confidence": 0.8,
                        "holdout_share": 0.2,
                        "explore_share": 0.1,
                        "daily_caps": {"Mens E-Mail": 100_000, "Womens E-Mail": 100_000},
                        "salt": "interventions",
                        "hash_seed": 0,
                    },
                    experiment="interventions",
                ),
            ),
        ),
        experiments=(
            Experiment(
                name="obd_exploration",
                use_case="obd",
                salt="obd_exploration",
                variants=(
                    Variant(name="greedy", weight=0.5, policy=Greedy()),
                    Variant(
                        name="thompson",
                        weight=0.25,
                        policy=Thompson(prior_alpha=1.0, prior_beta=100.0),
                    ),
                    Variant(
                        name="linucb",
                        weight=0.25,
                        policy=LinearBanditPolicy(method="ucb", alpha=0.01, epsilon=0.05),
                    ),
                ),
            ),
            Experiment(
                name="hillstrom_email",
                use_case="hillstrom",
                salt="hillstrom_email",
                holdout=Holdout(name="holdout", weight=0.2, policy=Control()),
                variants=(Variant(name="model", weight=0.8),),
            ),
        ),
    )
