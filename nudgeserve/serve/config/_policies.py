"""Selection policies: how a use case picks the slate from the model's scores.

Each policy is a tagged Struct (``kind: greedy`` ...); ``Policy`` is their union.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from nudgeserve.serve.config._base import PositiveFloat, Probability, Settings


class Greedy(Settings, tag="greedy", tag_field="kind"):
    """Show the k best-scoring candidates; each has propensity 1."""


class EpsilonGreedy(Settings, tag="epsilon_greedy", tag_field="kind"):
    """Each slot: with probability ``epsilon`` a uniformly random remaining candidate."""

    epsilon: Probability = 0.1


class PlackettLuce(Settings, tag="plackett_luce", tag_field="kind"):
    """Sample the slate without replacement from softmax(score / temperature)."""

    temperature: PositiveFloat = 1.0


class Thompson(Settings, tag="thompson", tag_field="kind"):
    """Beta-Bernoulli Thompson sampling per arm: each catalog action has a Beta posterior
    over its reward rate (the learner's, from joined feedback); each decision draws one
    rate per candidate and shows the k largest. The model's scores do not choose (they
    are logged). prior_alpha / prior_beta: the prior of an arm with no feedback yet (and
    of inline candidates)."""

    prior_alpha: PositiveFloat = 1.0
    prior_beta: PositiveFloat = 1.0


class LinearBanditPolicy(Settings, tag="linear", tag_field="kind"):
    """Contextual linear bandit on the model's features (the learner's per-arm ridge
    regressions, from joined feedback).

    method: ``ucb`` (LinUCB: the k largest upper confidence bounds, mixed with
    ``epsilon`` uniform exploration so that its logs can evaluate other policies; slot
    propensities exact) or ``thompson`` (linear Thompson sampling: one posterior draw of
    the weights per decision; its slot propensities have no closed form and are Monte
    Carlo estimates from ``propensity_draws`` further draws, biased up by at most
    1 / (draws + 1)). alpha: the width of the confidence bound (``ucb``) or the scale of
    the posterior draw (``thompson``).
    """

    method: Literal["ucb", "thompson"] = "ucb"
    alpha: PositiveFloat = 1.0
    epsilon: Probability = 0.05
    propensity_draws: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000


class Control(Settings, tag="control", tag_field="kind"):
    """No intervention: the use case's control action (Hillstrom: the model's control
    treatment, "No E-Mail") in the first slot, then the best-scoring others; every slot has
    propensity 1. Meant for holdouts; only use cases with a control action accept it."""


Policy = Greedy | EpsilonGreedy | PlackettLuce | Thompson | LinearBanditPolicy | Control


# Plackett-Luce slot marginals (what the log records) are exact up to this many slots.
MAX_PLACKETT_LUCE_K = 3
