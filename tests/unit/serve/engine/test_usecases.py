"""The batched scorers as plain functions: one outcome per request, a request's outcome does
not depend on its batch-mates, constraints hold, outputs equal the model run directly."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nudgeserve.models import load_obd, load_obd_items
from nudgeserve.serve.config import (
    MAX_PLACKETT_LUCE_K,
    EpsilonGreedy,
    Greedy,
    LinearBanditPolicy,
    PlackettLuce,
    Thompson,
)
from nudgeserve.serve.engine.batch_engine import check_outcomes
from nudgeserve.serve.engine.types import DecisionItem
from nudgeserve.serve.errors import BatchError
from nudgeserve.serve.protocol.decide import HillstromContext, ObdContext, ObdItemFeatures

POLICIES = [
    Greedy(),
    EpsilonGreedy(epsilon=0.3),
    PlackettLuce(temperature=0.002),
    Thompson(prior_alpha=2.0, prior_beta=50.0),
    LinearBanditPolicy(method="ucb", alpha=0.5, epsilon=0.1),
    LinearBanditPolicy(method="thompson", alpha=0.5, propensity_draws=50),
]


@pytest.fixture(scope="module")
def obd_log():
    return load_obd("random", "all")


def obd_item(
    log, row, *, k=3, policy=None, seed=0, candidates=None, excluded=(), inline=(), affinity=True
):
    return DecisionItem(
        context=ObdContext(
            user_features=[str(u) for u in log.user_features[row]],
            affinity=[float(a) for a in log.affinity[row]] if affinity else None,
        ),
        candidates=None if candidates is None else np.asarray(candidates, dtype=np.int64),
        inline=tuple(inline),
        excluded=np.asarray(excluded, dtype=np.int64),
        k=k,
        policy=policy if policy is not None else Greedy(),
        seed=seed,
    )


def same(a, b):
    # Batched matmuls round differently from single-row ones in the last float32 bits.
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    np.testing.assert_allclose(a.propensities, b.propensities, rtol=1e-5)


def test_check_outcomes_enforces_one_per_request():
    assert check_outcomes([1, 2], 2) == [1, 2]
    with pytest.raises(BatchError, match="batch of 3 requests produced 2 outcomes"):
        check_outcomes([1, 2], 3)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_outcome_does_not_depend_on_the_batch(engines, obd_log, data):
    """Scoring requests together gives each the outcome it gets alone (any policy mix,
    k, candidates, exclusions, with and without affinity, with inline items): the same
    actions, and scores and propensities equal up to float32 rounding."""
    n = data.draw(st.integers(1, 12), label="batch size")
    items = []
    for i in range(n):
        candidates = data.draw(
            st.none() | st.lists(st.integers(0, 79), min_size=4, max_size=20, unique=True),
            label=f"candidates {i}",
        )
        pool = list(range(80)) if candidates is None else candidates
        excluded = data.draw(st.lists(st.sampled_from(pool), max_size=2, unique=True))
        inline = [
            ObdItemFeatures(float(j), f"a{j}", "b", "c")
            for j in range(data.draw(st.integers(0, 2)))
        ]
        n_allowed = len(pool) - len(excluded) + len(inline)
        policy = data.draw(st.sampled_from(POLICIES))
        # Plackett-Luce slot marginals are exact up to 3 slots (the config caps max_k).
        k_max = MAX_PLACKETT_LUCE_K if isinstance(policy, PlackettLuce) else 10
        items.append(
            obd_item(
                obd_log,
                data.draw(st.integers(0, 9999)),
                k=data.draw(st.integers(1, min(k_max, n_allowed))),
                policy=policy,
                seed=data.draw(st.integers(0, 2**64 - 1)),
                candidates=candidates,
                excluded=excluded,
                inline=inline,
                affinity=data.draw(st.booleans()),
            )
        )
    together = engines["obd"].decide_batch(items)
    assert len(together) == n
    for item, outcome in zip(items, together, strict=True):
        (alone,) = engines["obd"].decide_batch([item])
        same(outcome, alone)
        chosen = outcome.indices.tolist()
        assert len(chosen) == item.k and len(set(chosen)) == item.k
        allowed = set(range(80)) if item.candidates is None else set(item.candidates.tolist())
        allowed |= {80 + j for j in range(len(item.inline))}
        assert set(chosen) <= allowed - set(item.excluded.tolist())
        assert np.all((outcome.propensities > 0) & (outcome.propensities <= 1))
        if isinstance(item.policy, Greedy):
            assert np.all(np.diff(outcome.scores) <= 0)
            assert np.all(outcome.propensities == 1)


def test_greedy_scores_are_the_models_probabilities(engines, obd_log):
    engine = engines["obd"]
    item = obd_item(obd_log, 17, k=10)
    (outcome,) = engine.decide_batch([item])
    features = engine.featurizer.transform(
        np.asarray([item.context.user_features], dtype=object),
        np.asarray([item.context.affinity], dtype=np.float32),
    )
    probs = engine.scorer.predict(features, position=engine.settings.slot)[0]
    expected = np.argsort(-probs, kind="stable")[:10]
    np.testing.assert_array_equal(np.sort(outcome.indices), np.sort(expected))
    np.testing.assert_array_equal(outcome.scores, probs[outcome.indices])


def test_inline_items_score_like_catalog_items_without_their_id_terms(engines, obd_log):
    """An item sent inline with a catalog item's features scores as that catalog item would
    if its id embedding and bias were zero (a new item has neither)."""
    engine = engines["obd"]
    model = engine.loaded.module
    items = load_obd_items("random", "all")
    chosen = [0, 5, 42]
    inline = tuple(
        ObdItemFeatures(float(items.numeric[i, 0]), *[str(v) for v in items.categorical[i]])
        for i in chosen
    )
    row = 3
    buckets = engine.featurizer.hash_users(np.asarray([obd_log.user_features[row]], object))
    got = engine._inline.scores(buckets[0], engine._inline.table(inline))
    with torch.no_grad():
        saved = (model.item_embedding.weight.clone(), model.item_bias.clone())
        model.item_embedding.weight.zero_()
        model.item_bias.zero_()
        try:
            zero_affinity = torch.zeros(1, model.n_items)
            want = model(torch.from_numpy(buckets), zero_affinity)[0, engine.settings.slot]
        finally:
            model.item_embedding.weight.copy_(saved[0])
            model.item_bias.copy_(saved[1])
    np.testing.assert_allclose(got, want.numpy()[chosen], rtol=1e-5, atol=1e-7)


def test_infer_batch_splits_rows_back_to_requests(engines, obd_log):
    engine = engines["obd"]
    requests = [
        {
            "user_features": obd_log.user_features[0:2].astype(object),
            "affinity": obd_log.affinity[0:2],
        },
        {"user_features": obd_log.user_features[2:5].astype(object)},
        {
            "user_features": obd_log.user_features[5:6].astype(object),
            "affinity": obd_log.affinity[5:6],
        },
    ]
    outcomes = engine.infer_batch(requests)
    assert [o.outputs["click_prob"].shape for o in outcomes] == [(2, 3, 80), (3, 3, 80), (1, 3, 80)]
    for request, outcome in zip(requests, outcomes, strict=True):
        want = engine.scorer.predict(
            engine.featurizer.transform(request["user_features"], request.get("affinity"))
        )
        np.testing.assert_allclose(outcome.outputs["click_prob"], want, rtol=1e-5)
    assert outcomes[0].times.batch_size == 3


CUSTOMERS = [
    HillstromContext(3, 120.5, 1, 0, 0, "2) $100 - $200", "Urban", "Web"),
    HillstromContext(10, 29.99, 0, 1, 1, "1) $0 - $100", "Rural", "Phone"),
    HillstromContext(1, 980.0, 1, 1, 0, "7) $1,000 +", "Surburban", "Multichannel"),
]


def test_hillstrom_net_gain_and_selection(engines):
    engine = engines["hillstrom"]
    items = [
        DecisionItem(
            context=c,
            candidates=None,
            inline=(),
            excluded=np.zeros(0, np.int64),
            k=1,
            policy=Greedy(),
            seed=i,
        )
        for i, c in enumerate(CUSTOMERS)
    ]
    outcomes = engine.decide_batch(items)
    columns = {
        name: [getattr(c, name) for c in CUSTOMERS]
        for name in (*engine.numeric_names, *engine.categorical_names)
    }
    prediction = engine.scorer.predict(engine.featurizer.transform(columns))
    s = engine.settings
    gain = prediction.uplift(s.objective) * s.value_per_unit - engine.costs
    gain[:, engine.control] = s.min_gain
    for row, outcome in enumerate(outcomes):
        assert outcome.indices.tolist() == [int(np.argmax(gain[row]))]
        np.testing.assert_allclose(outcome.scores, gain[row, outcome.indices], rtol=1e-5)
    excluded = msgspec.structs.replace(items[0], excluded=np.asarray(outcomes[0].indices))
    (again,) = engine.decide_batch([excluded])
    assert again.indices[0] != outcomes[0].indices[0]


def test_hillstrom_infer_outputs(engines):
    engine = engines["hillstrom"]
    numeric = np.asarray(
        [[getattr(c, n) for n in engine.numeric_names] for c in CUSTOMERS], dtype=np.float32
    )
    categorical = np.asarray(
        [[getattr(c, n) for n in engine.categorical_names] for c in CUSTOMERS], dtype=object
    )
    (outcome,) = engine.infer_batch([{"numeric": numeric, "categorical": categorical}])
    columns = {
        name: [getattr(c, name) for c in CUSTOMERS]
        for name in (*engine.numeric_names, *engine.categorical_names)
    }
    want = engine.scorer.predict(engine.featurizer.transform(columns))
    for name in ("visit", "conversion", "spend"):
        np.testing.assert_allclose(outcome.outputs[name], getattr(want, name), rtol=1e-5)
