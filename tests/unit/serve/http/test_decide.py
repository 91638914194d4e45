"""Decision API serving logic: decoding (JSON and msgpack), validation naming the field,
variant assignment, answers."""

from __future__ import annotations

import json
from collections import Counter

import msgspec
import numpy as np
import pytest

from nudgeserve.serve.config import Experiment, Greedy, PlackettLuce, Variant
from nudgeserve.serve.errors import InvalidRequest, ModelNotFound
from nudgeserve.serve.http.bodies import JSON, MSGPACK
from nudgeserve.serve.http.decide import DecisionService, assign_variant
from nudgeserve.serve.protocol.decide import DecideResponse

USERS = ["u0", "u1", "u2", "u3"]
CUSTOMER = {
    "recency": 3,
    "history": 120.5,
    "mens": 1,
    "womens": 0,
    "newbie": 0,
    "history_segment": "2) $100 - $200",
    "zip_code": "Urban",
    "channel": "Web",
}


@pytest.fixture(scope="module")
def service(infos, config):
    return DecisionService(infos, config.experiments)


def body(fmt=JSON, **fields):
    payload = {"use_case": "obd", "context": {"user_features": USERS}, **fields}
    return msgspec.json.encode(payload) if fmt == JSON else msgspec.msgpack.encode(payload)


def prepare(service, fmt=JSON, **fields):
    return service.prepare(service.decode(body(fmt, **fields), fmt), fmt)


@pytest.mark.parametrize("fmt", [JSON, MSGPACK])
def test_a_valid_request_becomes_an_item(service, fmt):
    item, pending = prepare(
        service, fmt, k=2, exclusions=[3, "4"], candidates=[{"id": i} for i in range(10)]
    )
    assert item.k == 2
    assert item.candidates.tolist() == list(range(10))
    assert item.excluded.tolist() == [3, 4]
    assert pending.policy == "epsilon_greedy" and pending.experiment is None
    assert item.seed == int(pending.decision_id[:16], 16)
    # What the decision log will record about it.
    assert item.meta.decision_id == pending.decision_id
    assert item.meta.policy == "epsilon_greedy(epsilon=0.1)"
    assert (item.meta.unit_id, item.meta.experiment, item.meta.variant) == ("", "", "")


def test_default_k_is_the_slate_size(service, infos):
    item, _ = prepare(service)
    assert item.k == infos["obd"].default_k == 3
    item, _ = prepare(service, candidates=[{"id": 1}, {"id": 2}])
    assert item.k == 2


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"k": 0}, "k", "must be in [1, 10]"),
        ({"k": 11}, "k", "max_k 10"),
        ({"k": 3, "candidates": [{"id": 1}, {"id": 2}]}, "k", "2 candidates"),
        ({"k": "3"}, "k", "Expected `int | null`, got `str`"),
        ({"candidates": []}, "candidates", "must not be empty"),
        ({"candidates": [{"id": 80}]}, "candidates[0].id", "not in the obd catalog (ids 0..79)"),
        ({"candidates": [{"id": 1}, {"id": "1"}]}, "candidates[1].id", "listed twice"),
        (
            {
                "candidates": [
                    {
                        "id": 1,
                        "features": {
                            "item_feature_0": 1.0,
                            "item_feature_1": "a",
                            "item_feature_2": "b",
                            "item_feature_3": "c",
                        },
                    }
                ]
            },
            "candidates[0].id",
            "is a catalog id",
        ),
        (
            {"candidates": [{"id": "x", "features": {"item_feature_0": 1.0}}]},
            "candidates[0].features",
            "missing required field `item_feature_1`",
        ),
        ({"exclusions": [99]}, "exclusions[0]", "neither a catalog id"),
        ({"candidates": [{"id": 1}], "exclusions": [1]}, "exclusions", "no candidate"),
        ({"context": {"user_features": ["a"]}}, "context.user_features", "must hold 4 strings"),
        (
            {"context": {"user_features": USERS, "affinity": [1.0]}},
            "context.affinity",
            "must hold 80 numbers",
        ),
        ({"context": {"user_features": USERS, "extra": 1}}, "context", "unknown field `extra`"),
        (
            {"context": {"user_features": [1, 2, 3, 4]}},
            "context.user_features[0]",
            "Expected `str`",
        ),
        ({"experiment": "obd_exploration"}, "unit_id", "required with experiment"),
        ({"experiment": "nope", "unit_id": "u"}, "experiment", "not a configured experiment"),
        ({"surprise": 1}, "", "unknown field `surprise`"),
    ],
)
def test_bad_fields_are_named(service, fields, field, fragment):
    with pytest.raises(InvalidRequest) as info:
        prepare(service, **fields)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_text_that_is_not_unicode_is_refused(service):
    raw = json.dumps(
        {"use_case": "obd", "context": {"user_features": ["\ud800", "b", "c", "d"]}}
    ).encode()
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        service.decode(raw, JSON)


def test_nan_affinity_from_msgpack_is_refused(service):
    affinity = [0.0] * 80
    affinity[7] = float("nan")
    with pytest.raises(InvalidRequest) as info:
        prepare(service, MSGPACK, context={"user_features": USERS, "affinity": affinity})
    assert info.value.field == "context.affinity" and "index 7" in str(info.value)


def test_malformed_bodies(service):
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        service.decode(b'{"use_case": "obd",', JSON)
    with pytest.raises(InvalidRequest, match="not valid msgpack"):
        service.decode(b"\xc1", MSGPACK)
    with pytest.raises(InvalidRequest) as info:
        service.decode(b'{"context": {}}', JSON)
    assert "use_case" in str(info.value)


def test_unknown_use_case_is_not_found(service):
    with pytest.raises(ModelNotFound, match="served use cases: hillstrom, interventions, obd"):
        service.prepare(service.decode(body(use_case="nope"), JSON), JSON)


def test_hillstrom_context_and_catalog(service):
    raw = msgspec.json.encode(
        {
            "use_case": "hillstrom",
            "context": CUSTOMER,
            "candidates": [{"id": "No E-Mail"}, {"id": "Mens E-Mail"}],
        }
    )
    item, pending = service.prepare(service.decode(raw, JSON), JSON)
    assert item.candidates.tolist() == [0, 1] and item.k == 1
    bad = {**CUSTOMER, "history": -1}
    with pytest.raises(InvalidRequest, match="context.history: must be >= 0"):
        service.prepare(
            service.decode(msgspec.json.encode({"use_case": "hillstrom", "context": bad}), JSON),
            JSON,
        )
    inline = {
        "id": "x",
        "features": {
            "item_feature_0": 1.0,
            "item_feature_1": "a",
            "item_feature_2": "b",
            "item_feature_3": "c",
        },
    }
    with pytest.raises(InvalidRequest) as info:
        service.prepare(
            service.decode(
                msgspec.json.encode(
                    {"use_case": "hillstrom", "context": CUSTOMER, "candidates": [inline]}
                ),
                JSON,
            ),
            JSON,
        )
    assert info.value.field == "candidates[0].features"


def test_variant_assignment_is_deterministic_and_follows_weights():
    experiment = Experiment(
        name="e",
        use_case="obd",
        salt="s",
        variants=(
            Variant(name="a", weight=0.75, policy=Greedy()),
            Variant(name="b", weight=0.25, policy=PlackettLuce(temperature=1.0)),
        ),
    )
    first = [assign_variant(experiment, f"unit-{i}").name for i in range(4000)]
    again = [assign_variant(experiment, f"unit-{i}").name for i in range(4000)]
    assert first == again
    share = Counter(first)["a"] / len(first)
    assert 0.72 < share < 0.78  # 3:1 shares; 4000 units give a standard error of 0.007
    salted = Experiment(name="e", use_case="obd", salt="other", variants=experiment.variants)
    assert [assign_variant(salted, f"unit-{i}").name for i in range(4000)] != first


def test_experiment_policy_reaches_the_item(service, config):
    experiment = config.experiments[0]
    policies = {v.name: v.policy for v in experiment.variants}
    seen = set()
    for i in range(40):
        item, pending = prepare(service, experiment="obd_exploration", unit_id=f"customer-{i}")
        assert pending.experiment == "obd_exploration"
        assert item.policy == policies[pending.variant]
        assert pending.variant == assign_variant(experiment, f"customer-{i}").name
        assert (item.meta.unit_id, item.meta.experiment, item.meta.variant) == (
            f"customer-{i}",
            "obd_exploration",
            pending.variant,
        )
        seen.add(pending.variant)
    assert seen == set(policies)  # 40 units reach every arm (shares 1/2, 1/4, 1/4)


def test_answer_maps_indices_back_to_ids(service, engines):
    inline = {
        "id": "new-item",
        "features": {
            "item_feature_0": 0.5,
            "item_feature_1": "a",
            "item_feature_2": "b",
            "item_feature_3": "c",
        },
    }
    item, pending = prepare(service, k=3, candidates=[{"id": 5}, {"id": 9}, inline])
    (outcome,) = engines["obd"].decide_batch([item])
    for fmt in (JSON, MSGPACK):
        raw = service.encode(service.respond(pending, outcome), fmt)
        decoded = (msgspec.json if fmt == JSON else msgspec.msgpack).decode(
            raw, type=DecideResponse
        )
        ids = [a.id for a in decoded.actions]
        assert sorted(ids, key=str) == sorted([5, 9, "new-item"], key=str)
        assert [a.rank for a in decoded.actions] == [1, 2, 3]
        assert decoded.model_version == engines["obd"].info.version == "1"
        assert decoded.model_checkpoint == engines["obd"].info.checkpoint_id
        assert all(0 < a.propensity <= 1 for a in decoded.actions)
        np.testing.assert_allclose([a.score for a in decoded.actions], outcome.scores)
