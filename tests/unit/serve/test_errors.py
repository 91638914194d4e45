"""The one exception-to-HTTP mapping."""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError

from nudgeserve.models import InvalidFeatures, InvalidFeatureType
from nudgeserve.serve.errors import (
    BatchError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotReady,
    NudgeError,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
    http_error,
)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (InvalidRequest("must be >= 1", "k"), 400),
        (PayloadTooLarge("too big"), 413),
        (UnsupportedMediaType("nope", "Content-Type"), 415),
        (ModelNotFound("no model 'x'"), 404),
        (MethodNotAllowed("GET not allowed", ("POST",)), 405),
        (Overloaded("queue full", 2.5), 503),
        (NotReady("starting"), 503),
        (InvalidFeatures("affinity contains NaN"), 400),
        (InvalidFeatureType("user_features must hold strings"), 400),
    ],
)
def test_status_codes(exc, status):
    err = http_error(exc)
    assert err.status == status
    assert err.message == str(exc)


def test_errors_subclass_the_matching_builtins():
    assert issubclass(InvalidRequest, ValueError) and issubclass(InvalidRequest, NudgeError)
    assert issubclass(ModelNotFound, LookupError)
    assert issubclass(Overloaded, RuntimeError)


def test_invalid_request_message_starts_with_the_field():
    exc = InvalidRequest("must be in [1, 10], got 30", "k")
    assert str(exc) == "k: must be in [1, 10], got 30" and exc.field == "k"


def test_retry_after_rounds_up():
    assert dict(http_error(Overloaded("full", 2.5)).headers)["retry-after"] == "3"
    assert dict(http_error(NotReady("starting")).headers)["retry-after"] == "1"


def test_method_not_allowed_lists_methods():
    assert dict(http_error(MethodNotAllowed("no", ("POST",))).headers)["allow"] == "POST"


def test_ray_backpressure_is_503_with_retry_after():
    err = http_error(
        BackPressureError(num_queued_requests=9, max_queued_requests=8, retry_after_s=4)
    )
    assert err.status == 503
    assert dict(err.headers)["retry-after"] == "4"
    assert "max_queued_requests=8" in err.message


def test_remote_errors_map_to_what_the_replica_raised_without_its_traceback():
    try:
        raise InvalidRequest("must hold 4 strings", "context.user_features")
    except InvalidRequest as cause:
        wrapped = RayTaskError("decide", "Traceback (most recent call last): ...", cause)
    err = http_error(wrapped.as_instanceof_cause())
    assert err.status == 400
    assert err.message == "context.user_features: must hold 4 strings"
    assert "Traceback" not in err.message


def test_unexpected_errors_are_500_without_details():
    err = http_error(ZeroDivisionError("secret internals"))
    assert err.status == 500
    assert "secret" not in err.message and "ZeroDivisionError" in err.message
    assert http_error(BatchError("3 results for 4 requests")).status == 500
