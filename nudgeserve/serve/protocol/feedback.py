"""Wire types of the answer to ``POST /v1/feedback``.

The request's events are the decision log's own ``FeedbackEvent`` (the log validates and
stores them as sent); the answer says each event's fate and the HTTP status it alone
would get.
"""

from __future__ import annotations

import msgspec


class FeedbackAnswer(msgspec.Struct, frozen=True):
    """One event's fate in the answer (``code``: the HTTP status it alone would get)."""

    decision_id: str
    event_id: str
    status: str
    code: int
    detail: str = ""


class FeedbackResponse(msgspec.Struct, frozen=True):
    """The answer to ``POST /v1/feedback``: per-event results and counts by status."""

    results: list[FeedbackAnswer]
    counts: dict[str, int]
