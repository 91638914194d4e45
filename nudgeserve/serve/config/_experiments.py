"""Experiments: deterministic assignment of units to arms (variants and a holdout)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from nudgeserve.serve.config._base import Name, Settings
from nudgeserve.serve.config._policies import Control, Policy

Share = Annotated[float, msgspec.Meta(gt=0, le=1)]
# Shares of an experiment must add up to 1 within this (YAML decimals such as 0.1 are
# not exact in binary).
SHARE_TOLERANCE = 1e-6


class Variant(Settings):
    """One arm of an experiment.

    weight: its share of the experiment's units; the shares of the variants and the
        holdout add up to 1.
    policy: the policy it decides with (default: the use case's).
    use_case: decide with another configured use case of the same kind and catalog
        instead of the experiment's, e.g. the same model family on a new checkpoint
        (its model version is then the one answered and logged).
    """

    name: Name
    weight: Share
    policy: Policy | None = None
    use_case: Name | None = None


class Holdout(Settings):
    """Units set aside from the intervention: the first ``weight`` of the hash range.

    policy: what they get; by default ``control`` (no intervention: the control action),
    which only use cases with a control action have. Elsewhere give it a policy, e.g.
    ``{kind: epsilon_greedy, epsilon: 1.0}`` (a uniformly random slate: a randomized
    control that off-policy evaluation can use too).
    """

    weight: Annotated[float, msgspec.Meta(gt=0, lt=1)]
    name: Name = "holdout"
    policy: Policy = msgspec.field(default_factory=Control)


class Experiment(Settings):
    """Deterministic assignment of units (``unit_id``) to the arms of one use case.

    A unit's point in [0, 1) is MurmurHash3 (the hash kernel) of ``"{salt}:{unit_id}"``
    over 2^32; the holdout takes the first ``holdout.weight`` of the range, the variants
    the rest in order of their weights. The same unit gets the same arm in every process
    for as long as the salt and the shares stay the same.

    control: the arm that reports measure lift against (default: the holdout, else the
    first variant).
    """

    name: Name
    use_case: Name
    variants: tuple[Variant, ...]
    salt: str = ""
    holdout: Holdout | None = None
    control: Name | None = None

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants must list at least one variant")
        names = [a.name for a in self.arms()]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names (holdout included) must be unique, got {names}")
        total = sum(a.weight for a in self.arms())
        if abs(total - 1.0) > SHARE_TOLERANCE:
            shares = " + ".join(f"{a.weight:g}" for a in self.arms())
            raise ValueError(
                f"the shares of the variants and the holdout must add up to 1, got {shares} "
                f"= {total:g}"
            )
        if self.control is not None and self.control not in names:
            raise ValueError(f"control {self.control!r} is not one of the arms {names}")

    def arms(self) -> tuple[Variant, ...]:
        """Every arm in hash-range order: the holdout (as a variant) first."""
        if self.holdout is None:
            return self.variants
        h = self.holdout
        return (Variant(name=h.name, weight=h.weight, policy=h.policy), *self.variants)

    def control_arm(self) -> str:
        """The name of the arm lift is measured against."""
        if self.control is not None:
            return self.control
        return self.holdout.name if self.holdout is not None else self.variants[0].name
