"""The Ray Serve application: HTTP gateway (decision API, KServe v2), batched use-case
replicas, typed config, decision log, metrics.

Layers, outermost first, each importing only the ones below it: ``ray`` (deployments,
actors, the application; the only package that imports Ray) -> ``http`` (routes, bodies,
status codes) -> ``engine`` (batched featurize, score, select; reports; no HTTP) ->
``protocol`` (wire types). ``config``, ``errors`` and ``decisions`` (the decision log)
serve every layer. Importing this package does not import Ray or torch; ``build_app`` and
``app_builder`` do.
"""

from nudgeserve.serve.config import (
    LoadedConfig,
    ServeConfig,
    default_config,
    load_config,
    parse_config,
)
from nudgeserve.serve.errors import (
    BatchError,
    ConfigError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    NotReady,
    NudgeError,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
    http_error,
)
from nudgeserve.serve.protocol.decide import (
    Candidate,
    DecideRequest,
    DecideResponse,
    HillstromContext,
    ObdContext,
    ObdItemFeatures,
    RankedAction,
)


def build_app(config: ServeConfig, **kwargs):
    """The Ray Serve application for ``config`` (see ``app.build_app``)."""
    from nudgeserve.serve.ray.app import build_app as _build

    return _build(config, **kwargs)


def app_builder(args: dict):
    """``serve deploy`` entry point (see ``app.app_builder``)."""
    from nudgeserve.serve.ray.app import app_builder as _builder

    return _builder(args)


__all__ = [
    "BatchError",
    "Candidate",
    "ConfigError",
    "DecideRequest",
    "DecideResponse",
    "HillstromContext",
    "InvalidRequest",
    "LoadedConfig",
    "MethodNotAllowed",
    "ModelNotFound",
    "NotFound",
    "NotReady",
    "NudgeError",
    "ObdContext",
    "ObdItemFeatures",
    "Overloaded",
    "PayloadTooLarge",
    "RankedAction",
    "ServeConfig",
    "UnsupportedMediaType",
    "app_builder",
    "build_app",
    "default_config",
    "http_error",
    "load_config",
    "parse_config",
]
