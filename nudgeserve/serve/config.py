"""The server's typed configuration: msgspec Structs loaded from YAML, validated at load.

One file serves both ways of running:

- ``nudgeserve run --config FILE`` reads it, starts a local Ray and the app;
- ``serve deploy FILE`` on a Ray cluster reads the same file, because it *is* a Ray Serve
  config: our settings are the ``args`` of the application whose ``import_path`` is
  ``nudgeserve.serve.ray.app:app_builder``, and Ray's ``http_options`` say host and port.

A file holding only our settings (no ``applications`` key) is accepted too. Every value is
checked when the file is loaded; an error names the setting as a path, the bad value and
what is allowed, e.g. ``use_cases[0].batching.max_batch_size = 0: Expected `int` >= 1``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect as mi
import yaml

from nudgeserve.serve.errors import ConfigError

APP_IMPORT_PATH = "nudgeserve.serve.ray.app:app_builder"

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class _Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every config section: immutable, unknown keys rejected (typos fail)."""


# --- selection policies -----------------------------------------------------------------


class Greedy(_Settings, tag="greedy", tag_field="kind"):
    """Show the k best-scoring candidates; each has propensity 1."""


class EpsilonGreedy(_Settings, tag="epsilon_greedy", tag_field="kind"):
    """Each slot: with probability ``epsilon`` a uniformly random remaining candidate."""

    epsilon: Probability = 0.1


class PlackettLuce(_Settings, tag="plackett_luce", tag_field="kind"):
    """Sample the slate without replacement from softmax(score / temperature)."""

    temperature: PositiveFloat = 1.0


class Thompson(_Settings, tag="thompson", tag_field="kind"):
    """Beta-Bernoulli Thompson sampling per arm: each catalog action has a Beta posterior
    over its reward rate (the learner's, from joined feedback); each decision draws one
    rate per candidate and shows the k largest. The model's scores do not choose (they
    are logged). prior_alpha / prior_beta: the prior of an arm with no feedback yet (and
    of inline candidates)."""

    prior_alpha: PositiveFloat = 1.0
    prior_beta: PositiveFloat = 1.0


class LinearBandit(_Settings, tag="linear", tag_field="kind"):
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


class Control(_Settings, tag="control", tag_field="kind"):
    """No intervention: the use case's control action (Hillstrom: the model's control
    treatment, "No E-Mail") in the first slot, then the best-scoring others; every slot has
    propensity 1. Meant for holdouts; only use cases with a control action accept it."""


Policy = Greedy | EpsilonGreedy | PlackettLuce | Thompson | LinearBandit | Control


# --- deployments ---------------------------------------------------------------------------


class Autoscaling(_Settings):
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


class DeploymentSettings(_Settings):
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


class Batching(_Settings):
    """``@serve.batch``: a replica scores up to ``max_batch_size`` requests at once,
    waiting at most ``batch_wait_timeout_s`` for a batch to fill."""

    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    batch_wait_timeout_s: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.002


class Learning(_Settings):
    """Online learning of a use case's bandit policies (``thompson``, ``linear``): one
    learner actor per use case reads the decision log and replicas serve from its
    snapshots (``nudgeserve.serve.ray.learner``, which states the staleness bound).

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


class _UseCase(_Settings):
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


class Interventions(_Settings):
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
            match = _PATH_RE.search(text)
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


# --- experiments ---------------------------------------------------------------------------


Share = Annotated[float, msgspec.Meta(gt=0, le=1)]
# Shares of an experiment must add up to 1 within this (YAML decimals such as 0.1 are
# not exact in binary).
SHARE_TOLERANCE = 1e-6


class Variant(_Settings):
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


class Holdout(_Settings):
    """Units set aside from the intervention: the first ``weight`` of the hash range.

    policy: what they get; by default ``control`` (no intervention: the control action),
    which only use cases with a control action have. Elsewhere give it a policy, e.g.
    ``{kind: epsilon_greedy, epsilon: 1.0}`` (a uniformly random slate: a randomized
    control that off-policy evaluation can use too).
    """

    weight: Annotated[float, msgspec.Meta(gt=0, lt=1)]
    name: Name = "holdout"
    policy: Policy = msgspec.field(default_factory=Control)


class Experiment(_Settings):
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


# --- decision log --------------------------------------------------------------------------


class DecisionLogSettings(_Settings):
    """The durable decision log every ``/v1/decide`` answer is recorded in before it is sent
    (``nudgeserve.serve.decisions``: SQLite in WAL mode, one group-commit writer per replica).

    enabled: ``false`` serves decisions without recording them (benchmarks only: nothing
        can then be joined, learned or evaluated).
    path: the SQLite file; a relative path is taken inside ``state_dir``.
    The other settings are ``DecisionLogConfig``'s (same names, defaults and meaning):
    durability ``commit`` answers a decision only once its group commit is in the
    database; ``enqueue`` once it is queued (lost if the process is killed before the
    commit). ``late_window_s``: feedback later than this after its decision is kept but
    not joined.
    """

    enabled: bool = True
    path: str = "decisions.sqlite"
    durability: Literal["commit", "enqueue"] = "commit"
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    max_batch: PositiveInt = 1024
    max_delay_ms: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 0.0
    max_queue: PositiveInt = 50_000
    late_window_s: NonNegativeFloat = 7 * 24 * 3600.0
    busy_timeout_ms: PositiveInt = 10_000
    close_timeout_s: NonNegativeFloat = 60.0
    outcome_kinds: tuple[str, ...] = ("click", "visit", "conversion", "spend")

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path must name a file")

    def log_config(self, state_dir: str) -> Any:
        """The ``DecisionLogConfig`` (raises ``InvalidDecisionLogConfig`` naming a bad
        setting); ``path`` joined to ``state_dir`` when relative."""
        from nudgeserve.serve.decisions import DecisionLogConfig

        fields = {f: getattr(self, f) for f in self.__struct_fields__ if f != "enabled"}
        fields["path"] = str(Path(state_dir) / self.path)
        return DecisionLogConfig(**fields)


# --- server --------------------------------------------------------------------------------


class ServerSettings(_Settings):
    """The HTTP side.

    ingress: how HTTP reaches the gateway (see docs/serving.md for the measurements):
        ``proxy`` (Ray Serve's HTTP proxy actor), ``direct`` (the gateway replica serves
        HTTP itself) or ``throughput_optimized`` (direct ingress plus Ray's other
        throughput switches). Used by ``nudgeserve run``; on a cluster the same switches
        are environment variables of ``ray start``.
    placement: ``separate`` runs one deployment per use case (own replicas, GPUs,
        autoscaling) behind the gateway; ``colocated`` runs the use cases' batched
        scorers inside the gateway replica (one process hop fewer).
    max_body_bytes: larger request bodies get 413 (checked again after decompression).
    request_timeout_s: a request still waiting for its batch after this gets 503.
    admin_token: the token admin routes (``POST /v1/models/{m}/load``) require as
        ``Authorization: Bearer <token>``; the environment variable
        ``NUDGESERVE_ADMIN_TOKEN`` wins over it (prefer it: config files get shared).
        Neither set: admin routes are refused.
    """

    ingress: Literal["proxy", "direct", "throughput_optimized"] = "throughput_optimized"
    placement: Literal["separate", "colocated"] = "colocated"
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 8 << 20
    request_timeout_s: PositiveFloat = 10.0
    admin_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    gateway: DeploymentSettings = msgspec.field(
        default_factory=lambda: DeploymentSettings(num_gpus=0.0, num_cpus=0.5)
    )


class ServeConfig(_Settings):
    """Everything the application needs (the ``args`` of the Serve application).

    state_dir: where the server keeps its state (the decision log); relative to the
        working directory of the process that loads the config (``nudgeserve run`` makes
        it absolute before starting Ray, so every replica writes the same file).
    """

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    use_cases: tuple[UseCase, ...] = ()
    experiments: tuple[Experiment, ...] = ()
    state_dir: str = ".state"
    decision_log: DecisionLogSettings = msgspec.field(default_factory=DecisionLogSettings)

    def __post_init__(self) -> None:
        if not self.state_dir:
            raise ValueError("state_dir must name a directory")
        self.decision_log.log_config(self.state_dir)  # its own checks, named
        if not self.use_cases:
            raise ValueError("use_cases must list at least one use case")
        for attr in ("name", "model_name"):
            names = [getattr(u, attr) for u in self.use_cases]
            if len(set(names)) != len(names):
                raise ValueError(f"use_cases: every {attr} must be unique, got {names}")
        known = {u.name for u in self.use_cases}
        exp_names = [e.name for e in self.experiments]
        if len(set(exp_names)) != len(exp_names):
            raise ValueError(f"experiments: names must be unique, got {exp_names}")
        kinds = {u.name: type(u) for u in self.use_cases}
        for i, e in enumerate(self.experiments):
            if e.use_case not in known:
                raise ValueError(
                    f"experiment {e.name!r}: use_case {e.use_case!r} is not one of {sorted(known)}"
                )
            for j, v in enumerate(e.variants):
                if v.use_case is None:
                    continue
                where = f"experiments[{i}].variants[{j}].use_case"
                if v.use_case not in known:
                    raise ValueError(f"{where} = {v.use_case!r} is not one of {sorted(known)}")
                if kinds[v.use_case] is not kinds[e.use_case]:
                    raise ValueError(
                        f"{where} = {v.use_case!r} is not of the experiment's use case's kind "
                        f"({kinds[e.use_case].__struct_config__.tag})"
                    )
        kinds_logged = self.decision_log.outcome_kinds
        for i, u in enumerate(self.use_cases):
            policies = self._policies_of(i, u)
            for where, policy in policies:
                _check_policy(u, where, policy)
            if u.learning.reward not in kinds_logged:
                raise ValueError(
                    f"use_cases[{i}].learning.reward = {u.learning.reward!r} is not one of "
                    f"decision_log.outcome_kinds {list(kinds_logged)}"
                )
            bandits = [w for w, p in policies if isinstance(p, Thompson | LinearBandit)]
            if bandits and not self.decision_log.enabled:
                raise ValueError(
                    f"{bandits[0]}: bandit policies learn from the decision log, but "
                    "decision_log.enabled is false"
                )
        self._check_interventions(exp_names)

    def _check_interventions(self, exp_names: list[str]) -> None:
        """Rules between intervention use cases and the rest (messages name the setting)."""
        ruled: dict[str, str] = {}
        for i, u in enumerate(self.use_cases):
            if not isinstance(u, HillstromUseCase) or u.interventions is None:
                continue
            where = f"use_cases[{i}].interventions"
            name = u.intervention_experiment
            assert name is not None
            if name in exp_names or name in ruled.values():
                raise ValueError(
                    f"{where}.experiment = {name!r} is already the name of another experiment; "
                    "intervention decisions need their own experiment name"
                )
            ruled[u.name] = name
            objective = u.interventions.rule_config().objective
            if objective not in self.decision_log.outcome_kinds:
                raise ValueError(
                    f"{where}.rule.objective = {objective!r} is not one of "
                    f"decision_log.outcome_kinds {list(self.decision_log.outcome_kinds)}: its "
                    "feedback could not be logged"
                )
            if u.max_k != 1:
                raise ValueError(
                    f"use_cases[{i}].max_k = {u.max_k} is invalid with interventions: the "
                    "rule chooses one action per unit; set max_k: 1"
                )
            if isinstance(u.policy, Thompson | LinearBandit):
                raise ValueError(
                    f"use_cases[{i}].policy: the intervention rule decides for this use case; "
                    "a learning policy would never be used (remove it or the interventions)"
                )
        for i, e in enumerate(self.experiments):
            if e.use_case in ruled:
                raise ValueError(
                    f"experiments[{i}].use_case = {e.use_case!r} decides with the intervention "
                    f"rule, whose own holdout is experiment {ruled[e.use_case]!r}; run "
                    "experiments on another use case"
                )
            for j, v in enumerate(e.variants):
                if v.use_case in ruled:
                    raise ValueError(
                        f"experiments[{i}].variants[{j}].use_case = {v.use_case!r} decides "
                        "with the intervention rule (its own holdout and logging); an "
                        "experiment may not route to it"
                    )

    def _policies_of(self, index: int, settings: UseCase) -> list[tuple[str, Policy]]:
        found = [(f"use_cases[{index}].policy", settings.policy)]
        for i, e in enumerate(self.experiments):
            if e.holdout is not None and e.use_case == settings.name:
                found.append((f"experiments[{i}].holdout.policy", e.holdout.policy))
            for j, v in enumerate(e.variants):
                if v.policy is not None and (v.use_case or e.use_case) == settings.name:
                    found.append((f"experiments[{i}].variants[{j}].policy", v.policy))
        return found

    def policies_for(self, name: str) -> list[Policy]:
        """Every policy the use case ``name`` may decide with (its own, its experiments'
        variants and holdouts), without repeats."""
        index = next(i for i, u in enumerate(self.use_cases) if u.name == name)
        found = [p for _, p in self._policies_of(index, self.use_cases[index])]
        return list(dict.fromkeys(found))

    def use_case(self, name: str) -> UseCase:
        for u in self.use_cases:
            if u.name == name:
                return u
        raise KeyError(name)


# Plackett-Luce slot marginals (what the log records) are exact up to this many slots.
MAX_PLACKETT_LUCE_K = 3


def _check_policy(settings: UseCase, where: str, policy: Policy) -> None:
    """Rules between a policy and the use case it decides for (messages name both)."""
    if isinstance(policy, Control) and not isinstance(settings, HillstromUseCase):
        raise ValueError(
            f"{where}: control (no intervention) needs a use case with a control action; "
            f"use case {settings.name!r} ({settings.__struct_config__.tag}) has none; give it "
            "another policy, e.g. {kind: epsilon_greedy, epsilon: 1.0} (uniformly random)"
        )
    if isinstance(policy, LinearBandit) and not isinstance(settings, ObdUseCase):
        raise ValueError(
            f"{where}: linear runs on a two-tower model's features (user and item vectors); "
            f"use case {settings.name!r} ({settings.__struct_config__.tag}) has none; use "
            "an obd use case"
        )
    if isinstance(policy, PlackettLuce) and settings.max_k > MAX_PLACKETT_LUCE_K:
        raise ValueError(
            f"{where}: plackett_luce logs exact slot probabilities for at most "
            f"{MAX_PLACKETT_LUCE_K} slots, but use case {settings.name!r} allows "
            f"max_k = {settings.max_k}; set its max_k <= {MAX_PLACKETT_LUCE_K}"
        )


class HttpOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of Ray Serve's ``http_options`` that ``nudgeserve run`` uses."""

    host: str = "127.0.0.1"
    port: Port = 8000


class LoadedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A config file: our settings plus Ray Serve's HTTP options."""

    app: ServeConfig
    http: HttpOptions
    source: str


_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _walk(raw: Any, path: str) -> tuple[bool, Any]:
    """The value at a msgspec error path (``.a[0].b``) inside ``raw``."""
    value = raw
    for name, index in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        try:
            value = value[name] if name else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, value


def _type_at(root: type, raw: Any, path: str) -> Any:
    """msgspec's type info of the setting at error ``path`` (a tagged union resolved by
    the tag found in ``raw``), ``("tag", union)`` for a union's tag field, or None."""
    info: Any = mi.type_info(root)
    value = raw
    steps = re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path)
    for i, (name, index) in enumerate(steps):
        if isinstance(info, mi.UnionType):
            structs = [t for t in info.types if isinstance(t, mi.StructType)]
            if name and structs and name == structs[0].tag_field:
                return ("tag", structs)
            tag = value.get(structs[0].tag_field) if structs and isinstance(value, dict) else None
            info = next((t for t in structs if t.tag == tag), None)
            if info is None:
                return None
        if index:
            if not isinstance(info, mi.VarTupleType | mi.ListType):
                return None
            info = info.item_type
        elif isinstance(info, mi.StructType):
            info = next((f.type for f in info.fields if f.name == name), None)
        else:
            return None
        found, value = _walk(raw, "".join(f".{n}" if n else f"[{x}]" for n, x in steps[: i + 1]))
        if not found:
            value = None
    if isinstance(info, mi.UnionType) and isinstance(value, dict):
        structs = [t for t in info.types if isinstance(t, mi.StructType)]
        info = next((t for t in structs if t.tag == value.get(t.tag_field)), info)
    return info


def _allowed(root: type, raw: Any, path: str) -> str:
    """What the setting at ``path`` may be, when it is a fixed set of choices, else ``""``."""
    info = _type_at(root, raw, path)
    if isinstance(info, tuple):
        return ", ".join(str(t.tag) for t in info[1])
    extra = ""
    if isinstance(info, mi.UnionType):
        if any(isinstance(t, mi.FloatType | mi.IntType) for t in info.types):
            extra = " or a number"
        info = next((t for t in info.types if isinstance(t, mi.LiteralType)), None)
    if isinstance(info, mi.LiteralType):
        return ", ".join(str(v) for v in info.values) + extra
    return ""


def _known_fields(root: type, raw: Any, path: str) -> str:
    info = _type_at(root, raw, path)
    if isinstance(info, mi.StructType):
        return ", ".join(f.name for f in info.fields)
    return ""


def _config_error(exc: msgspec.ValidationError, raw: Any, prefix: str, root: type) -> ConfigError:
    """Reword msgspec's error as ``setting = value: what is allowed``."""
    text = str(exc)
    match = _PATH_RE.search(text)
    reason = text[: match.start()] if match else text
    path = match.group("path") if match else ""
    setting = (prefix + path).lstrip(".")
    found, value = _walk(raw, path)
    unknown = re.match(r"Object contains unknown field `(?P<f>[^`]+)`", reason)
    if unknown:
        setting = f"{setting}.{unknown.group('f')}".lstrip(".")
        known = _known_fields(root, raw, path)
        hint = f"; known settings here: {known}" if known else ""
        return ConfigError(f"config setting {setting!r} is not a known setting{hint}", setting)
    choices = _allowed(root, raw, path)
    if choices:
        reason = f"{reason}; allowed: {choices}"
    shown = f" = {value!r}" if found and not isinstance(value, dict | list) else ""
    where = f"config {setting}" if setting else "config"
    return ConfigError(f"{where}{shown} is invalid: {reason}", setting)


def parse_config(raw: Any, *, prefix: str = "") -> ServeConfig:
    """Validate our settings (a mapping, e.g. the Serve application's ``args``).

    Raises ConfigError naming the setting, the bad value and what is allowed.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping of settings, got {type(raw).__name__}")
    try:
        return msgspec.convert(raw, ServeConfig)
    except msgspec.ValidationError as exc:
        raise _config_error(exc, raw, prefix, ServeConfig) from None


def load_config(path: str | Path) -> LoadedConfig:
    """Read and validate a config file (a Ray Serve config or our settings alone)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(raw).__name__}")
    if "applications" not in raw:
        return LoadedConfig(app=parse_config(raw), http=HttpOptions(), source=str(path))
    apps = raw["applications"]
    if not isinstance(apps, list):
        raise ConfigError("config applications must be a list", "applications")
    for i, app in enumerate(apps):
        if isinstance(app, dict) and app.get("import_path") == APP_IMPORT_PATH:
            args = app.get("args") or {}
            settings = parse_config(args, prefix=f"applications[{i}].args")
            break
    else:
        raise ConfigError(
            f"config file {path} has no application with import_path {APP_IMPORT_PATH!r}",
            "applications",
        )
    http_raw = raw.get("http_options") or {}
    try:
        http = msgspec.convert(
            {k: v for k, v in http_raw.items() if k in ("host", "port")}, HttpOptions
        )
    except (msgspec.ValidationError, AttributeError) as exc:
        if isinstance(exc, AttributeError):
            raise ConfigError("config http_options must be a mapping", "http_options") from None
        raise _config_error(exc, http_raw, "http_options", HttpOptions) from None
    return LoadedConfig(app=settings, http=http, source=str(path))


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
                        policy=LinearBandit(method="ucb", alpha=0.01, epsilon=0.05),
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
