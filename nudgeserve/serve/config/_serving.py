"""The whole application's settings (``ServeConfig``): server, decision log, use cases and
experiments, and the rules that hold between them (checked when the config is built)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from nudgeserve.serve.config._base import NonNegativeFloat, PositiveFloat, PositiveInt, Settings
from nudgeserve.serve.config._experiments import Experiment
from nudgeserve.serve.config._policies import (
    MAX_PLACKETT_LUCE_K,
    Control,
    LinearBanditPolicy,
    PlackettLuce,
    Policy,
    Thompson,
)
from nudgeserve.serve.config._usecases import (
    DeploymentSettings,
    HillstromUseCase,
    ObdUseCase,
    UseCase,
)

# --- decision log --------------------------------------------------------------------------


class DecisionLogSettings(Settings):
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


class AdmissionSettings(Settings):
    """Admission control of ``/v1/decide`` and v2 inference (``serve.http.admission``).

    latency_budget_ms: a request is refused at once (503, ``Retry-After``) when the wait
        it would see in the gateway (the use cases' queued batches plus the event loop's
        lag) is predicted to exceed this; 0 turns admission control off. Applies to the
        gateway's own HTTP server (``ingress: nudgeserve``).
    """

    latency_budget_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 10.0


class ServerSettings(Settings):
    """The HTTP side.

    ingress: how HTTP reaches the gateway (see docs/serving.md for the measurements):
        ``nudgeserve`` (default: each gateway replica runs its own HTTP server on the
        port, shared by the node's gateway replicas), ``proxy`` (Ray Serve's HTTP proxy
        actor), ``direct`` (Ray's direct ingress: uvicorn in the replica) or
        ``throughput_optimized`` (direct ingress plus Ray's other throughput switches).
        Used by ``nudgeserve run``; on a cluster Ray's switches are environment
        variables of ``ray start``.
    admission: admission control by latency budget (``AdmissionSettings``).
    placement: ``separate`` runs one deployment per use case (own replicas, GPUs,
        autoscaling) behind the gateway, which batches requests before the hop;
        ``colocated`` runs the use cases' batched scorers inside the gateway replica (one
        process hop fewer); ``auto`` (default): ``separate`` when any use case has a GPU
        or may run more than one replica, else ``colocated``.
    max_body_bytes: larger request bodies get 413 (checked again after decompression).
    request_timeout_s: a request still waiting for its batch after this gets 503.
    admin_token: the token admin routes (``POST /v1/models/{m}/load``) require as
        ``Authorization: Bearer <token>``; the environment variable
        ``NUDGESERVE_ADMIN_TOKEN`` wins over it (prefer it: config files get shared).
        Neither set: admin routes are refused.
    """

    ingress: Literal["nudgeserve", "proxy", "direct", "throughput_optimized"] = "nudgeserve"
    placement: Literal["auto", "separate", "colocated"] = "auto"
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 8 << 20
    request_timeout_s: PositiveFloat = 10.0
    admin_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    admission: AdmissionSettings = msgspec.field(default_factory=AdmissionSettings)
    gateway: DeploymentSettings = msgspec.field(
        default_factory=lambda: DeploymentSettings(num_gpus=0.0, num_cpus=0.5)
    )


class ServeConfig(Settings):
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
            bandits = [w for w, p in policies if isinstance(p, Thompson | LinearBanditPolicy)]
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
            if isinstance(u.policy, Thompson | LinearBanditPolicy):
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


def _check_policy(settings: UseCase, where: str, policy: Policy) -> None:
    """Rules between a policy and the use case it decides for (messages name both)."""
    if isinstance(policy, Control) and not isinstance(settings, HillstromUseCase):
        raise ValueError(
            f"{where}: control (no intervention) needs a use case with a control action; "
            f"use case {settings.name!r} ({settings.__struct_config__.tag}) has none; give it "
            "another policy, e.g. {kind: epsilon_greedy, epsilon: 1.0} (uniformly random)"
        )
    if isinstance(policy, LinearBanditPolicy) and not isinstance(settings, ObdUseCase):
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
