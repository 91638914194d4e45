"""Which checkpoint each use case serves after ``POST /v1/models/{m}/load``.

A reload request reaches one gateway replica. It records the choice in the **model
registry** (``ModelRegistry``: under Ray one small named actor per application config,
``nudgeserve.serve.ray.model_registry``; else a plain object in the process), loads the
checkpoint in its own scorers and answers; every other replica that serves the use case (more
gateway replicas, the replicas of a ``separate`` use-case deployment) finds the new
choice the next time it checks the registry and swaps its engine the same way (load off
the event loop, then one assignment between two batches: no request fails or waits).

Replicas check at most every ``POLL_S`` seconds and only while they get requests
(``ModelWatch.poke`` on the request path costs one clock read): a replica answers with
the previous model for at most ``POLL_S`` plus one load after the reload was answered,
and every answer names the model version that decided it. The choice lasts until the
application is deployed again with another config: to keep it, write it into the
config.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from nudgeserve.serve.config import UseCase

logger = logging.getLogger("ray.serve")

# Longest pause between two registry checks of a replica that gets requests.
POLL_S = 1.0


class ModelChoice(msgspec.Struct, frozen=True):
    """A use case's model as chosen by a reload.

    checkpoint: ``"default"`` or a checkpoint path (as the config's ``checkpoint``);
    version: the served version; generation: increases with every reload of any use
    case (replicas apply each generation once).
    """

    use_case: str
    checkpoint: str
    version: str
    generation: int

    def settings(self, base: UseCase) -> UseCase:
        """``base`` serving this choice."""
        return msgspec.structs.replace(base, checkpoint=self.checkpoint, version=self.version)

    def applies_to(self, settings: UseCase) -> bool:
        """Whether ``settings`` already serve this choice."""
        return settings.checkpoint == self.checkpoint and settings.version == self.version


class ModelRegistry:
    """The reload choices of one application (the body of the registry actor, or held
    in process by ``ModelWatch.local``)."""

    def __init__(self) -> None:
        self._choices: dict[str, ModelChoice] = {}
        self._generation = 0

    def choose(self, use_case: str, checkpoint: str, version: str) -> ModelChoice:
        self._generation += 1
        choice = ModelChoice(use_case, checkpoint, version, self._generation)
        self._choices[use_case] = choice
        return choice

    def choices(self) -> dict[str, ModelChoice]:
        return dict(self._choices)


class ModelWatch:
    """A replica's link to the registry.

    choose: ``(use_case, checkpoint, version) -> awaitable ModelChoice`` (records a
    reload); fetch: ``() -> awaitable {use_case: ModelChoice}``; apply: ``(use_case,
    choice) -> awaitable`` makes this replica serve the choice (its scorers, its
    metadata).
    """

    def __init__(
        self,
        choose: Callable[[str, str, str], Awaitable[ModelChoice]],
        fetch: Callable[[], Awaitable[dict[str, ModelChoice]]],
        apply: Callable[[str, ModelChoice], Awaitable[Any]],
        poll_s: float = POLL_S,
    ) -> None:
        self._choose, self._fetch, self.apply = choose, fetch, apply
        self.poll_s = poll_s
        self.applied: dict[str, int] = {}
        self._last = 0.0
        self._task: asyncio.Task | None = None

    @classmethod
    def local(cls, apply: Callable[[str, ModelChoice], Awaitable[Any]]) -> ModelWatch:
        """A watch over an in-process registry (one replica, or tests without Ray)."""
        registry = ModelRegistry()

        async def choose(use_case: str, checkpoint: str, version: str) -> ModelChoice:
            return registry.choose(use_case, checkpoint, version)

        async def fetch() -> dict[str, ModelChoice]:
            return registry.choices()

        return cls(choose, fetch, apply)

    async def choose(self, use_case: str, checkpoint: str, version: str) -> ModelChoice:
        """Record a reload in the registry and apply it here; returns the choice."""
        choice = await self._choose(use_case, checkpoint, version)
        await self.apply(use_case, choice)
        self.applied[use_case] = max(self.applied.get(use_case, 0), choice.generation)
        return choice

    def poke(self) -> None:
        """Check the registry in the background if ``poll_s`` passed since the last
        check (call it on the request path: it never waits)."""
        now = time.monotonic()
        if now - self._last < self.poll_s or (self._task is not None and not self._task.done()):
            return
        self._last = now
        self._task = asyncio.get_running_loop().create_task(self.check())

    async def check(self) -> list[str]:
        """Apply every choice this replica has not applied yet; returns their use cases."""
        try:
            choices = await self._fetch()
        except Exception as exc:  # the registry restarting: try again at the next poke
            logger.warning("model registry did not answer: %s", exc)
            return []
        done = []
        for use_case, choice in sorted(choices.items(), key=lambda kv: kv[1].generation):
            if self.applied.get(use_case, 0) >= choice.generation:
                continue
            try:
                await self.apply(use_case, choice)
            except Exception:
                logger.exception("could not load %s for use case %s", choice, use_case)
                continue
            self.applied[use_case] = choice.generation
            done.append(use_case)
        return done
