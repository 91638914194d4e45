"""Request bodies: media types from the Content-Type header."""

from __future__ import annotations

import pytest

from nudgeserve.serve.errors import UnsupportedMediaType
from nudgeserve.serve.http.bodies import JSON, MSGPACK, media_type


def test_media_types():
    assert media_type(None) == JSON
    assert media_type("application/json; charset=utf-8") == JSON
    assert media_type("application/msgpack") == MSGPACK
    with pytest.raises(UnsupportedMediaType) as info:
        media_type("text/plain")
    assert info.value.field == "Content-Type"
