"""Request bodies: the media types the v1 routes speak, and decoding with errors that name
the field.

Every v1 body is JSON or msgpack (``Content-Type: application/msgpack``), decoded straight
into msgspec types; a body that does not fit becomes ``InvalidRequest`` naming the field as
a path (``units[3].context.history``), so the client sees a 400 that says what to fix.
"""

from __future__ import annotations

from typing import Any

import msgspec

from nudgeserve.serve.errors import InvalidRequest, UnsupportedMediaType

JSON = "application/json"
MSGPACK = "application/msgpack"
_MSGPACK_TYPES = {MSGPACK, "application/x-msgpack", "application/vnd.msgpack"}


def media_type(content_type: str | None) -> str:
    """``JSON`` or ``MSGPACK`` for a Content-Type header (parameters ignored; no header
    means JSON); anything else is UnsupportedMediaType."""
    if not content_type:
        return JSON
    base = content_type.split(";", 1)[0].strip().lower()
    if base in ("application/json", "text/json", "*/*"):
        return JSON
    if base in _MSGPACK_TYPES:
        return MSGPACK
    raise UnsupportedMediaType(
        f"unsupported media type {base!r}; send application/json or application/msgpack",
        "Content-Type",
    )


def decoders(body_type: Any) -> dict[str, Any]:
    """One reusable decoder of ``body_type`` per media type (build once: decoders are
    cheap to call, not to build)."""
    return {JSON: msgspec.json.Decoder(body_type), MSGPACK: msgspec.msgpack.Decoder(body_type)}


def field_path(exc: msgspec.ValidationError, prefix: str = "") -> tuple[str, str]:
    """``(field, reason)`` from msgspec's ``"reason - at `$.a[0].b`"``."""
    text = str(exc)
    marker = " - at `$"
    at = text.rfind(marker)
    if at < 0:
        return prefix, text
    path = text[at + len(marker) : -1]
    return (prefix + path).lstrip("."), text[:at]


def decode_body(decoder: Any, body: bytes, fmt: str) -> Any:
    """``decoder.decode(body)``, or InvalidRequest naming the bad field (or saying the body
    is not valid JSON / msgpack)."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        field, reason = field_path(exc)
        raise InvalidRequest(reason, field) from None
    except msgspec.DecodeError as exc:
        kind = "JSON" if fmt == JSON else "msgpack"
        raise InvalidRequest(f"body is not valid {kind}: {exc}") from None
