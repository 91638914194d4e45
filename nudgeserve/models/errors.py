"""Errors raised by ``nudgeserve.models``.

Each also subclasses the matching builtin, so callers that only know ``ValueError`` or
``TypeError`` still catch them, and the server maps them to HTTP statuses in one place
(bad features -> 400/422, missing checkpoint -> 500 at start-up, never per request).
"""

from __future__ import annotations


class ModelError(Exception):
    """Root of every error raised by ``nudgeserve.models``."""


class InvalidFeatures(ModelError, ValueError):
    """A featurizer input has the wrong shape, length or value; the message names it."""


class InvalidFeatureType(ModelError, TypeError):
    """A featurizer input has the wrong type or dtype; the message names it."""


class InvalidPolicyInput(ModelError, ValueError):
    """A policy's input (scores, counts, slate size, temperature) has a bad shape or value;
    the message names it."""


class InvalidPolicyInputType(ModelError, TypeError):
    """A policy's input has the wrong type or dtype; the message names the argument."""


class InvalidLogs(ModelError, ValueError):
    """Logged data or an evaluation policy has a bad shape or value; the message names it."""


class InvalidLogsType(ModelError, TypeError):
    """Logged data has the wrong type or dtype; the message names the argument."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint is missing, unreadable, corrupt or inconsistent with its metadata."""


class FeatureSpecMismatch(CheckpointError):
    """A checkpoint's feature spec differs from the one the caller expects.

    ``differences`` maps each differing field to ``(expected, found)``.
    """

    def __init__(self, message: str, differences: dict[str, tuple[object, object]]) -> None:
        super().__init__(message)
        self.differences = differences
