"""The server's typed configuration: msgspec Structs loaded from YAML, validated at load.

One file serves both ways of running:

- ``nudgeserve run --config FILE`` reads it, starts a local Ray and the app;
- ``serve deploy FILE`` on a Ray cluster reads the same file, because it *is* a Ray Serve
  config: our settings are the ``args`` of the application whose ``import_path`` is
  ``nudgeserve.serve.ray.app:app_builder``, and Ray's ``http_options`` say host and port.

A file holding only our settings (no ``applications`` key) is accepted too. Every value is
checked when the file is loaded; an error names the setting as a path, the bad value and
what is allowed, e.g. ``use_cases[0].batching.max_batch_size = 0: Expected `int` >= 1``.

Sections live in modules by job: ``_policies`` (selection policies), ``_usecases`` (use
cases and their batching, deployment, learning, interventions), ``_experiments``,
``_serving`` (server, decision log, the whole ``ServeConfig`` and its cross-checks),
``_load`` (files and error messages) and ``_defaults``.
"""

from nudgeserve.serve.config._defaults import default_config
from nudgeserve.serve.config._experiments import (
    SHARE_TOLERANCE,
    Experiment,
    Holdout,
    Variant,
)
from nudgeserve.serve.config._load import (
    APP_IMPORT_PATH,
    HttpOptions,
    LoadedConfig,
    load_config,
    parse_config,
)
from nudgeserve.serve.config._policies import (
    MAX_PLACKETT_LUCE_K,
    Control,
    EpsilonGreedy,
    Greedy,
    LinearBanditPolicy,
    PlackettLuce,
    Policy,
    Thompson,
)
from nudgeserve.serve.config._serving import DecisionLogSettings, ServeConfig, ServerSettings
from nudgeserve.serve.config._usecases import (
    INTERVENTION_OBJECTIVES,
    Autoscaling,
    Batching,
    DeploymentSettings,
    HillstromUseCase,
    Interventions,
    Learning,
    ObdUseCase,
    UseCase,
)

__all__ = [
    "APP_IMPORT_PATH",
    "INTERVENTION_OBJECTIVES",
    "MAX_PLACKETT_LUCE_K",
    "SHARE_TOLERANCE",
    "Autoscaling",
    "Batching",
    "Control",
    "DecisionLogSettings",
    "DeploymentSettings",
    "EpsilonGreedy",
    "Experiment",
    "Greedy",
    "HillstromUseCase",
    "Holdout",
    "HttpOptions",
    "Interventions",
    "Learning",
    "LinearBanditPolicy",
    "LoadedConfig",
    "ObdUseCase",
    "PlackettLuce",
    "Policy",
    "ServeConfig",
    "ServerSettings",
    "Thompson",
    "UseCase",
    "Variant",
    "default_config",
    "load_config",
    "parse_config",
]
