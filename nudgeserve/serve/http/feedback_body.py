"""The body of ``POST /v1/feedback``: decode outcome events, answer per event.

Between the router and the decision log, knowing neither HTTP nor Ray: bytes in (JSON or
msgpack, one event or a list), ``FeedbackEvent``s to the log, and an answer whose status
code follows the events' fates (``nudgeserve.serve.decisions``):

==========  ====  ==========================================================
status      code  meaning
==========  ====  ==========================================================
joined      200   stored and attached to its decision
duplicate   200   this (decision_id, event_id) was already received; it counts once
orphaned    404   no such decision (yet); kept, joined if the decision is logged later
expired     422   after the late window (``decision_log.late_window_s``); kept, not joined
rejected    422   ``action`` names an action the decision did not choose; kept, not joined
==========  ====  ==========================================================

A single event is answered with its own code; a list with 200 when every event is
``joined``/``duplicate`` and 207 (multi-status) otherwise. The body always lists the
results in request order: ``{"results": [{decision_id, event_id, status, code,
detail}], "counts": {status: n}}``.
"""

from __future__ import annotations

import math

import msgspec

from nudgeserve.serve.decisions import FeedbackEvent, FeedbackResult
from nudgeserve.serve.errors import InvalidRequest
from nudgeserve.serve.http.bodies import JSON, decoders, field_path
from nudgeserve.serve.protocol.feedback import FeedbackAnswer, FeedbackResponse

STATUS_CODES: dict[str, int] = {
    "joined": 200,
    "duplicate": 200,
    "orphaned": 404,
    "expired": 422,
    "rejected": 422,
}
MULTI_STATUS = 207


class FeedbackService:
    """Decodes feedback bodies and builds answers.

    outcome_kinds: the kinds the decision log accepts (``decision_log.outcome_kinds``).
    max_events: the most events one body may carry.
    """

    def __init__(self, outcome_kinds: tuple[str, ...], max_events: int = 10_000) -> None:
        self.outcome_kinds = tuple(outcome_kinds)
        self.max_events = max_events
        self._decoders = decoders(FeedbackEvent | list[FeedbackEvent])

    def decode(self, body: bytes, fmt: str) -> tuple[list[FeedbackEvent], bool]:
        """``(events, was_a_list)``; InvalidRequest naming the field (``events[i].kind``
        for a list body, ``kind`` for a single event)."""
        try:
            decoded = self._decoders[fmt].decode(body)
        except msgspec.ValidationError as exc:
            field, reason = field_path(exc)
            if field.startswith("["):
                field = "events" + field
            raise InvalidRequest(reason, field) from None
        except msgspec.DecodeError as exc:
            kind = "JSON" if fmt == JSON else "msgpack"
            raise InvalidRequest(f"body is not valid {kind}: {exc}") from None
        many = isinstance(decoded, list)
        events = decoded if many else [decoded]
        if not events:
            raise InvalidRequest("must hold at least one event", "events")
        if len(events) > self.max_events:
            raise InvalidRequest(
                f"holds {len(events)} events; send at most {self.max_events} per request",
                "events",
            )
        for i, ev in enumerate(events):
            where = f"events[{i}]." if many else ""
            if ev.kind not in self.outcome_kinds:
                raise InvalidRequest(
                    f"{ev.kind!r} is not an outcome kind; allowed: {', '.join(self.outcome_kinds)}",
                    f"{where}kind",
                )
            if not math.isfinite(ev.value):
                raise InvalidRequest(f"must be finite, got {ev.value}", f"{where}value")
            if ev.time is not None and not math.isfinite(ev.time):
                raise InvalidRequest(f"must be finite, got {ev.time}", f"{where}time")
        return events, many

    def answer(self, results: list[FeedbackResult], many: bool) -> tuple[int, FeedbackResponse]:
        """``(HTTP status, body)`` for the log's results (see the module docstring)."""
        answers = [
            FeedbackAnswer(r.decision_id, r.event_id, r.status, STATUS_CODES[r.status], r.detail)
            for r in results
        ]
        counts: dict[str, int] = {}
        for a in answers:
            counts[a.status] = counts.get(a.status, 0) + 1
        if not many:
            code = answers[0].code
        else:
            code = 200 if all(a.code == 200 for a in answers) else MULTI_STATUS
        return code, FeedbackResponse(answers, counts)
