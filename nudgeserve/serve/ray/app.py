"""Build the Ray Serve application from a ``ServeConfig``.

``build_app(config)`` returns the application (``serve.run`` it); ``app_builder(args)`` is
the ``import_path`` target for ``serve deploy``, taking the application's ``args`` from a
Serve config file (see ``config``).
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig

from nudgeserve.serve import _env
from nudgeserve.serve.config import DeploymentSettings, ServeConfig, parse_config
from nudgeserve.serve.engine.describe import describe
from nudgeserve.serve.errors import ConfigError
from nudgeserve.serve.ray.deployments import Gateway, UseCaseScorer

logger = logging.getLogger(__name__)

APP_NAME = "nudgeserve"
HEALTH_CHECK_PERIOD_S = 2.0
GATEWAY_NAME = "gateway"


def gpus_available() -> bool:
    """Whether the cluster we deploy to has GPUs (this process's CUDA outside Ray)."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) > 0
    import torch

    return torch.cuda.is_available()


def resolve_gpus(settings: DeploymentSettings, has_gpus: bool) -> float:
    """GPUs per replica: ``"auto"`` is one when the cluster has GPUs, else none."""
    if settings.num_gpus == "auto":
        return 1.0 if has_gpus else 0.0
    return float(settings.num_gpus)


def deployment_options(settings: DeploymentSettings, num_gpus: float, name: str) -> dict[str, Any]:
    """Ray Serve ``.options(...)`` for a deployment from our settings."""
    a = settings.autoscaling
    options: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "backpressure_config": BackpressureConfig(
            status_code=503, retry_after_s=settings.retry_after_s
        ),
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": num_gpus},
        # Ray's default of 10 s between health checks is most of the time a SIGKILLed
        # replica's port stays dark (measured: 11.5-14.6 s until answers again).
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
    }
    if a.min_replicas == a.max_replicas:
        options["num_replicas"] = a.max_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        }
    return options


def resolve_placement(config: ServeConfig, has_gpus: bool) -> str:
    """``server.placement``, with ``auto`` resolved: ``separate`` when a use case has a
    GPU or its own replicas to scale (``autoscaling.max_replicas > 1``), else
    ``colocated`` (no process hop; measured faster for small CPU models)."""
    placement = config.server.placement
    if placement != "auto":
        return placement
    for settings in config.use_cases:
        d = settings.deployment
        if resolve_gpus(d, has_gpus) > 0 or d.autoscaling.max_replicas > 1:
            return "separate"
    return "colocated"


def build_app(
    config: ServeConfig,
    *,
    has_gpus: bool | None = None,
    listen: tuple[str, int] | None = None,
) -> Any:
    """The application: a gateway ingress and, with ``placement: separate``, one batched
    deployment per use case.

    listen: (host, port) the gateway replicas serve HTTP on themselves (``ingress:
    nudgeserve``); None: requests arrive through Ray's ingress only.

    Checks every use case's checkpoint metadata first (ConfigError names the use case),
    so a bad config fails here rather than in a replica.
    """
    if has_gpus is None:
        has_gpus = gpus_available()
    for settings in config.use_cases:
        describe(settings)
        gpus = resolve_gpus(settings.deployment, has_gpus)
        if settings.device == "cuda" and gpus == 0:
            where = f"use_cases[{settings.name}].device"
            raise ConfigError(
                f"{where} = 'cuda' is invalid: the deployment reserves no GPU (num_gpus "
                f"{settings.deployment.num_gpus!r}, cluster GPUs: {has_gpus})",
                where,
            )
    handles: dict[str, Any] = {}
    gateway_gpus = resolve_gpus(config.server.gateway, has_gpus)
    if resolve_placement(config, has_gpus) == "separate":
        for settings in config.use_cases:
            options = deployment_options(
                settings.deployment,
                resolve_gpus(settings.deployment, has_gpus),
                f"scorer-{settings.name}",
            )
            handles[settings.name] = (
                serve.deployment(UseCaseScorer).options(**options).bind(settings, config)
            )
    else:
        # The scorers run inside the gateway: it reserves what they would have.
        gateway_gpus = max(
            [gateway_gpus] + [resolve_gpus(u.deployment, has_gpus) for u in config.use_cases]
        )
    options = deployment_options(config.server.gateway, gateway_gpus, GATEWAY_NAME)
    if config.server.ingress != "nudgeserve":
        listen = None
    return serve.deployment(Gateway).options(**options).bind(config, handles, listen)


def app_builder(args: dict[str, Any]) -> Any:
    """``serve deploy`` entry point: ``args`` are our settings from the Serve config file."""
    config = parse_config(dict(args), prefix="args")
    wanted = config.server.ingress
    running = _env.ingress_mode_in_environment()
    if wanted == "nudgeserve":
        return build_app(config, listen=_env.listen_address())
    if wanted != running:
        logger.warning(
            "server.ingress is %r but this cluster's Ray Serve runs %r; set the ingress "
            "environment variables on `ray start` (see docs/serving.md)",
            wanted,
            running,
        )
    return build_app(config)
