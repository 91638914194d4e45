"""The server's typed configuration: msgspec Structs loaded from YAML, validated at load.

One file serves both ways of running:

- ``nudgeserve run --config FILE`` reads it, starts a local Ray and the app;
- ``serve deploy FILE`` on a Ray cluster reads the same file, because it *is* a Ray Serve
  config: our settings are the ``args`` of the application whose ``import_path`` is
  ``nudgeserve.serve.app:app_builder``, and Ray's ``http_options`` say host and port.

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

from .errors import ConfigError

APP_IMPORT_PATH = "nudgeserve.serve.app:app_builder"

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


Policy = Greedy | EpsilonGreedy | PlackettLuce


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


class ObdUseCase(_UseCase, tag="obd", tag_field="kind"):
    """Item selection on the Open Bandit Dataset click model.

    slot: the page position (0-based) whose click probabilities rank the candidates.
    """

    slot: NonNegativeInt = 0


class HillstromUseCase(_UseCase, tag="hillstrom", tag_field="kind"):
    """E-mail intervention choice on the Hillstrom uplift model.

    A treatment's score is its predicted uplift over the control in ``objective`` times
    ``value_per_unit`` minus its cost (``treatment_costs``, by treatment name); the
    control scores ``min_gain``, so a treatment is preferred only when its expected net
    gain clears that margin.
    """

    objective: Literal["visit", "conversion", "spend"] = "spend"
    value_per_unit: PositiveFloat = 1.0
    treatment_costs: dict[str, NonNegativeFloat] = msgspec.field(default_factory=dict)
    min_gain: float = 0.0
    max_k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


UseCase = ObdUseCase | HillstromUseCase


# --- experiments ---------------------------------------------------------------------------


class Variant(_Settings):
    """One arm of an experiment: its share of units and the policy it decides with."""

    name: Name
    weight: PositiveFloat
    policy: Policy | None = None


class Experiment(_Settings):
    """Deterministic assignment of units (``unit_id``) to variants of one use case.

    A unit's bucket is MurmurHash3 of ``"{salt}:{unit_id}"``; the same unit always gets the
    same variant while the variants and the salt stay the same.
    """

    name: Name
    use_case: Name
    variants: tuple[Variant, ...]
    salt: str = ""

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants must list at least one variant")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")


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
    """

    ingress: Literal["proxy", "direct", "throughput_optimized"] = "throughput_optimized"
    placement: Literal["separate", "colocated"] = "colocated"
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 8 << 20
    request_timeout_s: PositiveFloat = 10.0
    gateway: DeploymentSettings = msgspec.field(
        default_factory=lambda: DeploymentSettings(num_gpus=0.0, num_cpus=0.5)
    )


class ServeConfig(_Settings):
    """Everything the application needs (the ``args`` of the Serve application)."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    use_cases: tuple[UseCase, ...] = ()
    experiments: tuple[Experiment, ...] = ()

    def __post_init__(self) -> None:
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
        for e in self.experiments:
            if e.use_case not in known:
                raise ValueError(
                    f"experiment {e.name!r}: use_case {e.use_case!r} is not one of {sorted(known)}"
                )

    def use_case(self, name: str) -> UseCase:
        for u in self.use_cases:
            if u.name == name:
                return u
        raise KeyError(name)


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
    """The shipped defaults (the same as ``configs/default.yaml`` in the repository): both
    use cases on their shipped checkpoints, one example experiment."""
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
        ),
        experiments=(
            Experiment(
                name="obd_exploration",
                use_case="obd",
                salt="obd_exploration",
                variants=(
                    Variant(name="greedy", weight=0.5, policy=Greedy()),
                    Variant(
                        name="plackett_luce", weight=0.5, policy=PlackettLuce(temperature=0.01)
                    ),
                ),
            ),
        ),
    )
