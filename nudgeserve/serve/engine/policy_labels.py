"""The names and labels of policies, as answers and the decision log carry them.

An answer names the policy's kind (``epsilon_greedy``); the log records its label with
the parameters (``epsilon_greedy(epsilon=0.1)``), so two configurations of one kind stay
apart in reports. An intervention use case's decisions carry the rule's label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nudgeserve.serve.config import (
    Control,
    EpsilonGreedy,
    Greedy,
    LinearBanditPolicy,
    PlackettLuce,
    Policy,
    Thompson,
)

if TYPE_CHECKING:
    from nudgeserve.models.policies.intervention import InterventionConfig


def policy_name(policy: Policy) -> str:
    """The policy's kind (``greedy``, ``epsilon_greedy``, ...), as answers name it."""
    return str(type(policy).__struct_config__.tag)


def policy_label(policy: Policy) -> str:
    """The policy with its parameters, e.g. ``epsilon_greedy(epsilon=0.1)``: what the
    decision log records, so two configurations of one kind stay apart in reports."""
    name = policy_name(policy)
    if isinstance(policy, Greedy | Control):
        return name
    if isinstance(policy, EpsilonGreedy):
        return f"{name}(epsilon={policy.epsilon:g})"
    if isinstance(policy, PlackettLuce):
        return f"{name}(temperature={policy.temperature:g})"
    if isinstance(policy, Thompson):
        return f"{name}(prior_alpha={policy.prior_alpha:g}, prior_beta={policy.prior_beta:g})"
    if isinstance(policy, LinearBanditPolicy):
        if policy.method == "ucb":
            return f"{name}(method=ucb, alpha={policy.alpha:g}, epsilon={policy.epsilon:g})"
        return f"{name}(method=thompson, scale={policy.alpha:g})"
    raise TypeError(f"policy must be one of the configured policy kinds, got {policy!r}")


def intervention_policy_label(config: InterventionConfig) -> str:
    """The intervention rule with its parameters, as the decision log's ``policy``
    records it."""
    return (
        f"intervention(objective={config.objective}, value={config.value_per_unit:g}, "
        f"threshold={config.threshold:g}, confidence={config.confidence:g}, "
        f"holdout={config.holdout_share:g}, explore={config.explore_share:g})"
    )
