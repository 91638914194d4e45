"""Record and config validation: bad input raises TypeError/ValueError naming the field."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nudgeserve.serve.decisions import (
    DecisionLogConfig,
    DecisionRecord,
    FeedbackEvent,
    InvalidDecisionLogConfig,
    InvalidDecisionRecord,
    InvalidDecisionRecordType,
    InvalidFeedback,
    InvalidFeedbackType,
)
from nudgeserve.serve.decisions._records import validate_decision, validate_feedback
from nudgeserve.serve.decisions._sample import sample_decisions
from nudgeserve.serve.decisions._store import _record_decoder, decision_row

KINDS = ("click", "visit", "conversion", "spend")


def _rec(**changes):
    rec = sample_decisions(1, n_candidates=5, n_slots=2, n_features=3)[0]
    return msgspec.structs.replace(rec, **changes)


@pytest.mark.parametrize(
    ("changes", "exc", "field"),
    [
        ({"decision_id": ""}, InvalidDecisionRecord, "decision_id"),
        ({"decision_id": "x" * 300}, InvalidDecisionRecord, "decision_id"),
        ({"decision_id": 7}, InvalidDecisionRecordType, "decision_id"),
        ({"unit_id": None}, InvalidDecisionRecordType, "unit_id"),
        ({"policy": b"greedy"}, InvalidDecisionRecordType, "policy"),
        ({"use_case": None}, InvalidDecisionRecordType, "use_case"),
        ({"actions": ["0", "zz"]}, InvalidDecisionRecord, r"actions\[1\]"),
        ({"time": "now"}, InvalidDecisionRecordType, "time"),
        ({"time": math.inf}, InvalidDecisionRecord, "time"),
        ({"actions": []}, InvalidDecisionRecord, "actions"),
        ({"actions": ["0", 1]}, InvalidDecisionRecordType, "actions"),
        ({"candidates": "01234"}, InvalidDecisionRecordType, "candidates"),
        ({"candidates": ["0"]}, InvalidDecisionRecord, "candidates"),
        ({"scores": [0.5]}, InvalidDecisionRecord, "scores"),
        ({"scores": [0.5, math.nan]}, InvalidDecisionRecord, "scores"),
        ({"propensities": [0.5, 0.0]}, InvalidDecisionRecord, "propensities"),
        ({"propensities": [0.5, 1.5]}, InvalidDecisionRecord, "propensities"),
        ({"propensities": [0.5, math.nan]}, InvalidDecisionRecord, "propensities"),
        ({"propensities": [0.5]}, InvalidDecisionRecord, "propensities"),
        ({"features": 3.0}, InvalidDecisionRecordType, "features"),
        ({"features": [1.0, "a"]}, InvalidDecisionRecordType, "features"),
    ],
)
def test_bad_record_is_rejected_naming_the_field(changes, exc, field):
    with pytest.raises(exc, match=field):
        validate_decision(_rec(**changes))


def test_bad_record_errors_are_builtin_types():
    with pytest.raises(ValueError):
        validate_decision(_rec(actions=[]))
    with pytest.raises(TypeError):
        validate_decision(_rec(decision_id=1))
    with pytest.raises(TypeError, match="DecisionRecord"):
        validate_decision({"decision_id": "x"})


def test_numpy_lists_are_stored_as_plain_lists():
    rec = _rec(
        scores=np.array([0.25, 0.5], dtype=np.float32),
        propensities=np.array([0.2, 0.2]),
        features=np.arange(3, dtype=np.float32),
    )
    back = _record_decoder.decode(decision_row(rec)[-1])
    assert back.scores == [0.25, 0.5]
    assert back.propensities == [0.2, 0.2]
    assert back.features == [0.0, 1.0, 2.0]


_text = st.text(min_size=1, max_size=20)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def records(draw):
    candidates = draw(st.lists(_text, min_size=1, max_size=12))
    k = draw(st.integers(1, len(candidates)))
    return DecisionRecord(
        decision_id=draw(_text),
        time=draw(_finite),
        unit_id=draw(st.text(max_size=10)),
        experiment=draw(st.text(max_size=10)),
        variant=draw(st.text(max_size=10)),
        model_version=draw(st.text(max_size=5)),
        policy=draw(st.text(max_size=10)),
        candidates=candidates,
        actions=candidates[:k],
        scores=draw(st.lists(_finite, min_size=k, max_size=k)),
        propensities=draw(
            st.lists(st.floats(min_value=1e-12, max_value=1.0), min_size=k, max_size=k)
        ),
        features=draw(st.lists(st.floats(width=32), max_size=10)),
    )


@settings(max_examples=60, deadline=None)
@given(records())
def test_every_valid_record_round_trips_through_the_stored_format(rec):
    row = decision_row(rec)
    back = _record_decoder.decode(row[-1])
    assert back.decision_id == rec.decision_id and back.actions == rec.actions
    assert back.scores == rec.scores and back.propensities == rec.propensities
    assert msgspec.msgpack.decode(row[-2]) == rec.actions
    assert np.array_equal(np.array(back.features), np.array(rec.features), equal_nan=True)


def _ev(**changes):
    base = FeedbackEvent(decision_id="d1", event_id="e1", kind="click")
    return msgspec.structs.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "exc", "field"),
    [
        ({"decision_id": ""}, InvalidFeedback, "decision_id"),
        ({"event_id": 3}, InvalidFeedbackType, "event_id"),
        ({"kind": "purchase"}, InvalidFeedback, "kind"),
        ({"value": math.nan}, InvalidFeedback, "value"),
        ({"value": "1"}, InvalidFeedbackType, "value"),
        ({"time": math.inf}, InvalidFeedback, "time"),
        ({"action": ""}, InvalidFeedback, "action"),
        ({"action": 2}, InvalidFeedbackType, "action"),
    ],
)
def test_bad_feedback_is_rejected_naming_the_field(changes, exc, field):
    with pytest.raises(exc, match=field):
        validate_feedback(_ev(**changes), KINDS)


def test_feedback_wire_decoding_names_the_field():
    body = b'{"decision_id": "d1", "event_id": "", "kind": "click"}'
    with pytest.raises(msgspec.ValidationError, match="event_id"):
        msgspec.json.decode(body, type=FeedbackEvent)
    with pytest.raises(msgspec.ValidationError, match="colour"):
        msgspec.json.decode(
            b'{"decision_id": "d", "event_id": "e", "kind": "click", "colour": 1}',
            type=FeedbackEvent,
        )
    ev = msgspec.json.decode(
        b'{"decision_id": "d", "event_id": "e", "kind": "spend", "value": 12.5, "action": "a"}',
        type=FeedbackEvent,
    )
    validate_feedback(ev, KINDS)
    assert ev.value == 12.5 and ev.time is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"durability": "fsync"}, "durability"),
        ({"synchronous": "OFF"}, "synchronous"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_queue": 1.5}, "max_queue"),
        ({"max_delay_ms": -1.0}, "max_delay_ms"),
        ({"max_delay_ms": math.nan}, "max_delay_ms"),
        ({"late_window_s": -5}, "late_window_s"),
        ({"outcome_kinds": ()}, "outcome_kinds"),
        ({"outcome_kinds": ("click", "click")}, "outcome_kinds"),
        ({"outcome_kinds": ("click", "add to cart")}, "outcome_kinds"),
        ({"outcome_kinds": ("click", "score")}, "outcome_kinds"),
        ({"path": ""}, "path"),
    ],
)
def test_bad_config_names_the_setting(changes, field):
    settings_ = {"path": "x.db", **changes}
    with pytest.raises(InvalidDecisionLogConfig, match=f"decision_log.{field}"):
        DecisionLogConfig(**settings_)


def test_config_from_yaml_like_mapping_is_checked():
    cfg = msgspec.convert(
        {
            "path": "x.db",
            "durability": "enqueue",
            "max_delay_ms": 5,
            "outcome_kinds": ["click", "add_to_cart"],
        },
        DecisionLogConfig,
    )
    assert cfg.durability == "enqueue" and cfg.outcome_kinds == ("click", "add_to_cart")
    with pytest.raises(msgspec.ValidationError, match="durability"):
        msgspec.convert({"path": "x.db", "durability": "sometimes"}, DecisionLogConfig)
    with pytest.raises(msgspec.ValidationError, match="max_batch"):
        msgspec.convert({"path": "x.db", "max_batch": 0}, DecisionLogConfig)


def test_errors_map_to_http_statuses_through_the_servers_one_function():
    from nudgeserve.serve.decisions import (
        DecisionLogClosed,
        DecisionLogOverloaded,
        DecisionLogWriteError,
    )
    from nudgeserve.serve.errors import http_error

    assert http_error(InvalidFeedback("event.kind is 'x'")).status == 400
    assert http_error(InvalidFeedbackType("event.value must be a number")).status == 400
    overloaded = http_error(DecisionLogOverloaded("queue full"))
    assert overloaded.status == 503 and dict(overloaded.headers)["retry-after"]
    assert http_error(DecisionLogClosed("closed")).status == 503
    # A bad record or a failing disk is the server's problem, not the client's: none of
    # the client-facing classes (asked directly: http_error's 500 path imports Ray).
    from nudgeserve.serve.errors import InvalidRequest, NotFound, NotReady, Overloaded

    for exc in (DecisionLogWriteError("disk I/O error"), InvalidDecisionRecord("record.x")):
        assert not isinstance(exc, InvalidRequest | NotFound | Overloaded | NotReady)
