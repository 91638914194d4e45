"""The engine of each use case: ``build_engine`` picks the engine class for the settings'
kind (``obd.ObdEngine``, ``hillstrom.HillstromEngine``; their shared interface:
``batch_engine.BatchEngine``)."""

from __future__ import annotations

from collections.abc import Sequence

from nudgeserve.serve.config import ObdUseCase, Policy, UseCase
from nudgeserve.serve.engine.hillstrom import HillstromEngine
from nudgeserve.serve.engine.obd import ObdEngine


def build_engine(
    settings: UseCase, extra_policies: Sequence[Policy] = ()
) -> ObdEngine | HillstromEngine:
    """The engine for ``settings`` (not loaded: call ``load()`` in the replica).

    extra_policies: the other policies it may decide with (experiment variants and
    holdouts, ``ServeConfig.policies_for``); they are warmed up with the use case's own.
    """
    if isinstance(settings, ObdUseCase):
        return ObdEngine(settings, extra_policies)
    return HillstromEngine(settings, extra_policies)
