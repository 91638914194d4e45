"""Use-case settings: the model served, its batching, deployment and online learning, and
the intervention rule of a Hillstrom use case."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from nudgeserve.serve.config._base import (
    PATH_RE,
    Name,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Settings,
)
from nudgeserve.serve.config._policies import EpsilonGreedy, Policy

# --- deployments ---------------------------------------------------------------------------


class Autoscaling(Settings):
    """Ray Serve ``autoscaling_config`` (replicas follow the ongoing requests per replica)."""

    min_replicas: NonNegativeInt = 1
    max_replicas: PositiveInt = 1
    target_ongoing_requests: PositiveFloat = 32.0
    upscale_delay_s: NonNegativeFloat = 3.0
    downscale_delay_s: NonNegativeFloat = 60.0

    def __post_init__(self) -> None:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )


class DeploymentSettings(Settings):
    """How Ray Serve runs a deployment's replicas and bounds their queues.

    max_ongoing_requests: requests one replica works on at once (a batch fills from these).
    max_queued_requests: requests each caller queues for this deployment beyond that;
        more are refused with 503 and ``Retry-After: retry_after_s`` (never unbounded waits).
    num_cpus: CPUs reserved per replica; num_gpus: ``"auto"`` reserves one GPU per replica
        when the cluster has GPUs and none otherwise, or a number (fractions share a GPU).
    """

    autoscaling: Autoscaling = msgspec.field(default_factory=Autoscaling)
    max_ongoing_requests: PositiveInt = 256
    max_queued_requests: Annotated[int, msgspec.Meta(ge=-1)] = 1024
    retry_after_s: PositiveFloat = 1.0
    num_cpus: NonNegativeFloat = 0.5
    num_gpus: Literal["auto"] | NonNegativeFloat = "auto"

    def __post_init__(self) -> None:
        if self.max_queued_requests == 0:
            raise ValueError("max_queued_requests must be -1 (no limit) or >= 1, got 0")


class Batching(Settings):
    """A replica scores up to ``max_batch_size`` requests at once (``engine.batcher``):
    requests that arrive while a batch runs form the next batch; an idle replica waits
    ``batch_wait_timeout_s`` for batch-mates before it starts one (0: no wait; batches
    still grow under load)."""

    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    batch_wait_timeout_s: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.0


class Learning(Settings):
    """Online learning of a use case's bandit policies (``thompson``, ``linear``): one
    learner actor per use case reads the decision log and replicas serve from its
    snapshots (``nudgeserve.serve.engine.learning``, which states the staleness bound).

    reward: the outcome kind that is the reward (one of ``decision_log.outcome_kinds``).
    reward_delay_s: a decision is learned from this long after it was made (its reward
        window: feedback joined later still reaches the log and reports, not the bandits).
    poll_interval_s: pause between two reads of the log by the learner.
    refresh_s: pause between two snapshot fetches by each replica.
    ridge: the linear bandit's ridge (prior precision, in observations).
    persist_every_s: how often the learner saves its state under ``state_dir/learner``.
    """

    reward: Annotated[str, msgspec.Meta(min_length=1)] = "click"
    reward_delay_s: NonNegativeFloat = 60.0
    poll_interval_s: PositiveFloat = 1.0
    refresh_s: PositiveFloat = 1.0
    ridge: PositiveFloat = 1.0
    persist_every_s: PositiveFloat = 60.0


# --- use cases -----------------------------------------------------------------------------


class _UseCase(Settings):
    """Settings shared by every use case.

    name: the use case's name in ``/v1/decide`` (``use_case``); model_name: the model's
        name under ``/v2/models/``.
    checkpoint: ``"default"`` (the shipped checkpoint) or a checkpoint path (either file
        or their common stem).
    version: the model's version under ``/v2/models/{model_name}/versions/``: a positive
        integer, as Triton's clients (``perf_analyzer``) parse it. Decisions report it with
        the checkpoint's identity (the first 12 hex digits of its weights' SHA-256).
    device: ``auto`` (CUDA when the replica has a GPU), ``cpu`` or ``cuda``.
    max_k: the largest ``k`` a decision may ask for.
    """

    name: Name
    model_name: Name
    checkpoint: str = "default"
    version: Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]{0,17}$")] = "1"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batching: Batching = msgspec.field(default_factory=Batching)
    deployment: DeploymentSettings = msgspec.field(default_factory=DeploymentSettings)
    policy: Policy = msgspec.field(default_factory=EpsilonGreedy)
    max_k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    learning: Learning = msgspec.field(default_factory=Learning)


class ObdUseCase(_UseCase, tag="obd", tag_field="kind"):
    """Item selection on the Open Bandit Dataset click model.

    slot: the page position (0-based) whose click probabilities rank the candidates.
    """

    slot: NonNegativeInt = 0


# Outcomes the uplift ensemble predicts (an intervention rule's objective).
INTERVENTION_OBJECTIVES = ("visit", "conversion", "spend")


class Interventions(Settings):
    """Intervention decisions with uncertainty, shared daily caps and a random holdout
    (``nudgeserve.serve.engine.interventions``; the rule: ``nudgeserve.models.policies.intervention``).

    rule: the decision rule, ``InterventionConfig``'s fields (``objective``,
        ``value_per_unit``, ``costs``, ``threshold``, ``confidence``, ``holdout_share``,
        ``explore_share``, ``daily_caps``, ``salt``, ``hash_seed``, ``treatments``,
        ``control``); checked when the config is loaded, errors name ``rule.<field>``.
    ensemble: the uplift ensemble the intervals come from: ``default`` (shipped) or a
        path (either file or their stem).
    experiment: the name the decisions are logged under (``experiment``; ``variant`` is
        the decision's reason) and ``GET /v1/experiments/{experiment}/impact`` reports on;
        default: the use case's name.
    level: coverage of the uplift intervals in answers.
    chunk_rows: most rows one ensemble forward takes (large batches are chunked).
    max_batch_units: most units one ``POST /v1/decide/batch`` may carry.
    day_utc_offset_s: where the caps' day starts (0: midnight UTC).
    budget_timeout_s: longest wait for the shared budget actor per batch (then 503).
    """

    rule: dict[str, Any] = msgspec.field(default_factory=dict)
    ensemble: str = "default"
    experiment: Name | None = None
    level: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.95
    chunk_rows: Annotated[int, msgspec.Meta(ge=1, le=65_536)] = 1024
    max_batch_units: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 20_000
    day_utc_offset_s: Annotated[float, msgspec.Meta(ge=-50_400, le=50_400)] = 0.0
    budget_timeout_s: PositiveFloat = 5.0

    def __post_init__(self) -> None:
        if not self.ensemble:
            raise ValueError("ensemble must be 'default' or a path")
        self.rule_config()

    def rule_config(self) -> Any:
        """The rule as an ``InterventionConfig`` (ValueError naming ``rule.<field>``).

        Imported here, not at module level: importing the models package imports torch,
        and importing the config must not.
        """
        from nudgeserve.models.policies.intervention import InterventionConfig

        try:
            rule = msgspec.convert(self.rule, InterventionConfig)
        except msgspec.ValidationError as exc:
            text = str(exc)
            match = PATH_RE.search(text)
            path = match.group("path") if match else ""
            reason = text[: match.start()] if match else text
            first = reason.split(" ", 1)[0].split("[", 1)[0]
            if not path and first in InterventionConfig.__struct_fields__:
                # The rule's own checks start with the field they name.
                raise ValueError(f"rule.{reason}") from None
            raise ValueError(f"rule{path}: {reason}") from None
        if rule.objective not in INTERVENTION_OBJECTIVES:
            raise ValueError(
                f"rule.objective = {rule.objective!r} is invalid; allowed: "
                + ", ".join(INTERVENTION_OBJECTIVES)
            )
        return rule


class HillstromUseCase(_UseCase, tag="hillstrom", tag_field="kind"):
    """E-mail intervention choice on the Hillstrom uplift model.

    Without ``interventions``: a treatment's score is its predicted uplift over the
    control in ``objective`` times ``value_per_unit`` minus its cost
    (``treatment_costs``, by treatment name); the control scores ``min_gain``, so a
    treatment is preferred only when its expected net gain clears that margin, and
    ``policy`` selects.

    With ``interventions``: the intervention rule decides instead (uplift intervals from
    the ensemble, costs, a confidence threshold, shared daily caps, its own random
    holdout and exploration); ``objective``, ``value_per_unit``, ``treatment_costs``,
    ``min_gain`` and ``policy`` are then unused, and no configured experiment may run on
    the use case (the rule's holdout is its experiment).
    """

    objective: Literal["visit", "conversion", "spend"] = "spend"
    value_per_unit: PositiveFloat = 1.0
    treatment_costs: dict[str, NonNegativeFloat] = msgspec.field(default_factory=dict)
    min_gain: float = 0.0
    max_k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    learning: Learning = msgspec.field(default_factory=lambda: Learning(reward="conversion"))
    interventions: Interventions | None = None

    @property
    def intervention_experiment(self) -> str | None:
        """The experiment name intervention decisions are logged under (None: no rule)."""
        if self.interventions is None:
            return None
        return self.interventions.experiment or self.name


UseCase = ObdUseCase | HillstromUseCase
