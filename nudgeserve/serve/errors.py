"""The server's one exception tree, and the one function that turns exceptions into HTTP.

Every error the serving code raises on purpose is a ``NudgeError`` that also subclasses the
matching builtin (``InvalidRequest`` is a ``ValueError``), so code that knows only the
builtins still catches it. ``http_error`` is the only place that decides a status code:
the router calls it for every failure and nothing else picks statuses.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass


class NudgeError(Exception):
    """Root of every error raised on purpose by ``nudgeserve.serve``."""


class InvalidRequest(NudgeError, ValueError):
    """The request is malformed or a field has a bad value.

    field: the offending field as a path (``"candidates[2].id"``, ``"inputs[0].shape"``),
        or ``""`` when the body as a whole is bad; the message starts with it.
    """

    def __init__(self, message: str, field: str = "") -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class PayloadTooLarge(InvalidRequest):
    """The body is larger than ``server.max_body_bytes`` (before or after decompression)."""


class UnsupportedMediaType(InvalidRequest):
    """The Content-Type or Content-Encoding is not one the route accepts."""


class NotFound(NudgeError, LookupError):
    """No route, model or use case has this name."""


class ModelNotFound(NotFound):
    """``/v2/models/{name}`` (or a decision's ``use_case``) names no served model."""


class MethodNotAllowed(NudgeError, ValueError):
    """The route exists but not for this HTTP method; ``allowed`` lists the methods."""

    def __init__(self, message: str, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed
        super().__init__(message)


class Overloaded(NudgeError, RuntimeError):
    """A bounded queue is full; the client should retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float | None = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class NotReady(NudgeError, RuntimeError):
    """The server or a model is still starting (or stopping)."""


class DecisionNotLogged(NotReady):
    """The decision log could not record a decision, so it was not served (503): a
    decision is never answered without its record."""


class Forbidden(NudgeError, PermissionError):
    """An admin route without valid credentials.

    status: 401 when no credentials were sent, 403 when they are wrong.
    """

    def __init__(self, message: str, status: int = 403) -> None:
        self.status = status
        super().__init__(message)


class ConfigError(NudgeError, ValueError):
    """A configuration value is invalid; raised at start-up, never per request.

    setting: the dotted path of the bad setting (``"use_cases[0].batching.max_batch_size"``).
    """

    def __init__(self, message: str, setting: str = "") -> None:
        self.setting = setting
        super().__init__(message)


class BatchError(NudgeError, RuntimeError):
    """A batched call broke its contract (e.g. returned the wrong number of results)."""


@dataclass(frozen=True)
class HttpError:
    """What the router sends for an exception: status, ``{"error": message}``, headers."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def _backpressure(exc: BaseException) -> HttpError | None:
    """Ray Serve's own queue-full error (raised by a handle call), if ``exc`` is one.

    Looked up in ``sys.modules`` so this module never imports Ray (only ``serve.ray``
    does): if Ray Serve's exceptions were never imported, none of them can exist.
    """
    ray_exceptions = sys.modules.get("ray.serve.exceptions")
    if ray_exceptions is None:
        return None
    if isinstance(exc, ray_exceptions.BackPressureError):
        retry = exc.retry_after_s if exc.retry_after_s is not None else 1.0
        return HttpError(503, f"overloaded: {exc.message}", _retry_after(retry))
    return None


def _is_bad_features(exc: BaseException) -> bool:
    """A featurizer's complaint about its input (``nudgeserve.models`` names the field).

    Looked up in ``sys.modules`` so this module does not import torch: if the models
    package was never imported, none of its errors can exist.
    """
    models_errors = sys.modules.get("nudgeserve.models.errors")
    if models_errors is None:
        return False
    return isinstance(exc, models_errors.InvalidFeatures | models_errors.InvalidFeatureType)


def _retry_after(seconds: float | None) -> tuple[tuple[str, str], ...]:
    if seconds is None:
        return ()
    return (("retry-after", str(max(0, math.ceil(seconds)))),)


def http_error(exc: BaseException) -> HttpError:
    """The HTTP answer for ``exc``: the only mapping from exceptions to status codes.

    4xx for anything the client can fix (the message names the field), 503 with
    ``Retry-After`` for overload, 500 for everything else (the message says it is internal
    and gives the exception type, never a traceback).
    """
    # Ray wraps an exception raised in another replica (its text carries the remote
    # traceback); map and word what the replica raised.
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return http_error(cause)
    if isinstance(exc, PayloadTooLarge):
        return HttpError(413, str(exc))
    if isinstance(exc, UnsupportedMediaType):
        return HttpError(415, str(exc))
    if isinstance(exc, InvalidRequest) or _is_bad_features(exc):
        return HttpError(400, str(exc))
    if isinstance(exc, NotFound):
        return HttpError(404, str(exc))
    if isinstance(exc, Forbidden):
        headers = (("www-authenticate", "Bearer"),) if exc.status == 401 else ()
        return HttpError(exc.status, str(exc), headers)
    if isinstance(exc, MethodNotAllowed):
        return HttpError(405, str(exc), (("allow", ", ".join(exc.allowed)),))
    if isinstance(exc, Overloaded):
        return HttpError(503, str(exc), _retry_after(exc.retry_after_s))
    if isinstance(exc, NotReady):
        return HttpError(503, str(exc), _retry_after(1.0))
    mapped = _backpressure(exc)
    if mapped is not None:
        return mapped
    return HttpError(500, f"internal error ({type(exc).__name__})")
