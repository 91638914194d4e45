"""Records the decision log keeps: decisions, outcome events, per-event results.

``DecisionRecord`` is internal and hot (one per served decision), so it is an
``array_like`` Struct without GC tracking: it encodes as a compact msgpack array and never
holds references that could form cycles. Its field order is its storage format: add new
fields only at the end and with a default, never reorder.

``FeedbackEvent`` is also the body of ``POST /v1/feedback``, so it keeps named fields: the
server decodes request bytes straight into it with msgspec (the ``Meta`` constraints then
produce 4xx messages naming the field), and ``validate_feedback`` repeats the checks for
Python callers.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec

from nudgeserve.serve.decisions._errors import (
    InvalidDecisionRecord,
    InvalidDecisionRecordType,
    InvalidFeedback,
    InvalidFeedbackType,
)

# Outcome kinds known by default; each becomes a reward column in the Parquet export.
OUTCOME_KINDS: tuple[str, ...] = ("click", "visit", "conversion", "spend")

# Export columns other than the per-kind rewards, in export order: the reward columns
# (one per outcome kind) go between the leading and the trailing ones. An outcome kind may
# not take any of these names.
LEADING_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "time",
    "unit_id",
    "experiment",
    "variant",
    "policy",
    "model_version",
    "use_case",
    "model_checkpoint",
    "action",
    "action_id",
    "position",
    "score",
    "propensity",
    "reward",
)
TRAILING_COLUMNS: tuple[str, ...] = ("n_feedback", "candidates", "features")
BASE_COLUMNS = frozenset(LEADING_COLUMNS + TRAILING_COLUMNS)

# Longest id accepted for decision_id / event_id / action; keeps one bad client from
# filling the index with megabyte keys.
MAX_ID_LENGTH = 256

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]


class DecisionRecord(msgspec.Struct, array_like=True, gc=False):
    """One served decision, with everything needed to evaluate or replay it.

    decision_id: unique id the client later sends feedback for (the server makes it).
    time: when the decision was made, float seconds since the Unix epoch (UTC).
    unit_id: the randomization unit (customer or session id).
    experiment, variant: experiment name and assigned arm ("" when none).
    model_version: version of the scoring model.
    policy: the selection policy as configured, e.g. ``"epsilon_greedy(0.1)"``.
    candidates: str[N], the candidate action ids offered, in request order (integer
        item ids are logged as their decimal strings).
    actions: str[K], the chosen action ids by slot, position 0 first (K <= N); each
        one of ``candidates``.
    scores: float[K], the model score of each chosen action.
    propensities: float[K], the logging policy's probability for ``actions[k]`` at slot
        ``k``, in (0, 1]. Per-position off-policy estimators read it as the marginal
        P(action at position k | context), the Open Bandit Dataset's
        ``propensity_score``; a probability conditional on the slots above is a
        different quantity for k > 0, and the exported ``propensity`` is only what was
        logged here.
    features: float[F], the context feature vector the model saw, kept for replay.
    use_case: the served use case (e.g. ``"obd"``, ``"hillstrom"``).
    model_checkpoint: which weights decided (e.g. a hash prefix of the checkpoint).

    Lists may be passed as NumPy arrays; they are stored as plain lists.
    """

    decision_id: str
    time: float
    unit_id: str
    experiment: str
    variant: str
    model_version: str
    policy: str
    candidates: list[str]
    actions: list[str]
    scores: list[float]
    propensities: list[float]
    features: list[float] = []
    use_case: str = ""
    model_checkpoint: str = ""


class FeedbackEvent(msgspec.Struct, forbid_unknown_fields=True):
    """One outcome event, keyed by ``(decision_id, event_id)``.

    decision_id: the decision this outcome follows.
    event_id: the client's id for this event; resending the same event is harmless.
    kind: the outcome type, one of the log's ``outcome_kinds`` (default click, visit,
        conversion, spend).
    value: 1.0 for a count-like outcome; the amount for ``spend``.
    time: when it happened, float seconds since the Unix epoch; None = when received.
    action: the chosen action the outcome belongs to (a slot of the decision), or None
        for an outcome of the decision as a whole (counted on every slot at export).
    """

    decision_id: _Id
    event_id: _Id
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    value: float = 1.0
    time: float | None = None
    action: _Id | None = None


FeedbackStatus = Literal["joined", "duplicate", "orphaned", "expired", "rejected"]


class FeedbackResult(msgspec.Struct, frozen=True):
    """What happened to one feedback event.

    status:
      ``joined``    stored and attached to its decision;
      ``duplicate`` this (decision_id, event_id) was already stored; the first one counts;
      ``orphaned``  no such decision (yet): kept in ``orphan_feedback`` and joined when the
                    decision arrives within the late window (the server answers 404);
      ``expired``   the decision exists but the event happened after the late window:
                    kept in ``orphan_feedback``, not joined;
      ``rejected``  ``action`` was not one the decision chose: kept, not joined.
    detail: a human-readable reason for every status but ``joined``.
    """

    decision_id: str
    event_id: str
    status: FeedbackStatus
    detail: str = ""


class DecisionLogStats(msgspec.Struct, frozen=True):
    """Counters of one ``DecisionLog`` (this process only), for metrics.

    written: decision records committed (duplicates of existing ids included).
    duplicate_decisions: records whose decision_id was already stored (ignored).
    batches: transactions committed by the writer.
    feedback_events: feedback events processed.
    spilled: acknowledged records that could not be written and went to a side file.
    queue_depth: append calls waiting for the writer.
    last_batch_records: records in the latest committed batch.
    last_commit_s: seconds the latest batch took, BEGIN to COMMIT.
    """

    written: int
    duplicate_decisions: int
    batches: int
    feedback_events: int
    spilled: int
    queue_depth: int
    last_batch_records: int
    last_commit_s: float


def _num_list(value: Any, name: str, errors: type[Exception]) -> None:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise errors(f"{name} must be a list of numbers, got {type(value).__name__}")


_STR = {str}


def validate_decision(rec: DecisionRecord) -> None:
    """Raise ``InvalidDecisionRecordType`` / ``InvalidDecisionRecord`` naming the field.

    Checks every field that the stored format depends on, so that a record that passes
    always decodes again at export. Costs a few microseconds for 80 candidates.
    """
    if type(rec) is not DecisionRecord:
        raise InvalidDecisionRecordType(
            f"record must be a DecisionRecord, got {type(rec).__name__}"
        )
    for name in (
        "decision_id",
        "unit_id",
        "experiment",
        "variant",
        "model_version",
        "policy",
        "use_case",
        "model_checkpoint",
    ):
        v = getattr(rec, name)
        if type(v) is not str:
            raise InvalidDecisionRecordType(f"record.{name} must be str, got {type(v).__name__}")
    if not rec.decision_id or len(rec.decision_id) > MAX_ID_LENGTH:
        raise InvalidDecisionRecord(
            f"record.decision_id must have 1..{MAX_ID_LENGTH} characters, "
            f"got {len(rec.decision_id)}"
        )
    t = rec.time
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise InvalidDecisionRecordType(f"record.time must be float, got {type(t).__name__}")
    if not math.isfinite(t):
        raise InvalidDecisionRecord(f"record.time must be finite, got {t!r}")
    for name in ("candidates", "actions"):
        v = getattr(rec, name)
        if type(v) not in (list, tuple):
            raise InvalidDecisionRecordType(
                f"record.{name} must be a list of str, got {type(v).__name__}"
            )
        types = set(map(type, v))  # one C-level pass (this runs for every decision)
        if types - _STR:
            raise InvalidDecisionRecordType(
                f"record.{name} must contain only str, found {(types - _STR).pop().__name__}"
            )
    k = len(rec.actions)
    if k == 0:
        raise InvalidDecisionRecord("record.actions must not be empty")
    if k > len(rec.candidates):
        raise InvalidDecisionRecord(
            f"record.actions has {k} entries but record.candidates only {len(rec.candidates)}"
        )
    for i, a in enumerate(rec.actions):
        # The export stores each action as its index in candidates (what OPE reads).
        if a not in rec.candidates:
            raise InvalidDecisionRecord(f"record.actions[{i}] = {a!r} is not in record.candidates")
    for name in ("scores", "propensities", "features"):
        _num_list(getattr(rec, name), f"record.{name}", InvalidDecisionRecordType)
    for name in ("scores", "propensities"):
        n = len(getattr(rec, name))
        if n != k:
            raise InvalidDecisionRecord(
                f"record.{name} has {n} entries; must equal len(record.actions) = {k}"
            )
    try:
        for s in rec.scores:
            if not math.isfinite(s):
                raise InvalidDecisionRecord(f"record.scores must be finite, got {s!r}")
        for p in rec.propensities:
            if not 0.0 < p <= 1.0:
                raise InvalidDecisionRecord(f"record.propensities must be in (0, 1], got {p!r}")
        # NaN features are allowed (a missing signal), strings are not: summing raises
        # TypeError on anything but numbers, in one C-level pass.
        sum(rec.features, 0.0)
    except TypeError as exc:
        raise InvalidDecisionRecordType(
            f"record.scores/propensities/features must hold numbers: {exc}"
        ) from None


def validate_feedback(ev: FeedbackEvent, outcome_kinds: tuple[str, ...]) -> None:
    """Raise ``InvalidFeedbackType`` / ``InvalidFeedback`` naming the field."""
    if type(ev) is not FeedbackEvent:
        raise InvalidFeedbackType(f"event must be a FeedbackEvent, got {type(ev).__name__}")
    for name in ("decision_id", "event_id", "kind"):
        v = getattr(ev, name)
        if type(v) is not str:
            raise InvalidFeedbackType(f"event.{name} must be str, got {type(v).__name__}")
        if not v or len(v) > MAX_ID_LENGTH:
            raise InvalidFeedback(f"event.{name} must have 1..{MAX_ID_LENGTH} characters")
    if ev.kind not in outcome_kinds:
        raise InvalidFeedback(f"event.kind is {ev.kind!r}; must be one of {outcome_kinds}")
    for name in ("value", "time"):
        v = getattr(ev, name)
        if v is None and name == "time":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidFeedbackType(f"event.{name} must be a number, got {type(v).__name__}")
        if not math.isfinite(v):
            raise InvalidFeedback(f"event.{name} must be finite, got {v!r}")
    if ev.action is not None:
        if type(ev.action) is not str:
            raise InvalidFeedbackType(
                f"event.action must be str or None, got {type(ev.action).__name__}"
            )
        if not ev.action or len(ev.action) > MAX_ID_LENGTH:
            raise InvalidFeedback(f"event.action must have 1..{MAX_ID_LENGTH} characters")
