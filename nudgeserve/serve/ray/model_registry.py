"""The model registry actor: where every replica of an application finds the reloads.

One named detached ``ModelRegistry`` actor per application config, created by the first
replica that asks; ``nudgeserve.serve.engine.model_versions`` says how replicas follow
it and how stale a replica may be.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import ray

from nudgeserve.serve.config import ServeConfig
from nudgeserve.serve.engine.model_versions import ModelChoice, ModelRegistry, ModelWatch
from nudgeserve.serve.ray._actors import get_or_create_actor

__all__ = ["registry_name", "watch_models"]


def registry_name(config: ServeConfig) -> str:
    """The registry actor's name: one per application config, so a new deployment with
    another config starts from its config's models."""
    digest = hashlib.sha256(msgspec.json.encode(config)).hexdigest()[:16]
    return f"nudgeserve-models-{digest}"


def watch_models(
    config: ServeConfig, apply: Callable[[str, ModelChoice], Awaitable[Any]]
) -> ModelWatch:
    """A replica's ``ModelWatch`` over the application's registry actor when Ray runs
    (created by the first replica that asks), else over an in-process registry."""
    if not ray.is_initialized():
        return ModelWatch.local(apply)
    actor = get_or_create_actor(ModelRegistry, registry_name(config))

    async def choose(use_case: str, checkpoint: str, version: str) -> ModelChoice:
        return await actor.choose.remote(use_case, checkpoint, version)

    async def fetch() -> dict[str, ModelChoice]:
        return await actor.choices.remote()

    return ModelWatch(choose, fetch, apply)
