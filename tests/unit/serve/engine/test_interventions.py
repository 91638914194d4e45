"""The intervention engine (``serve.engine.interventions``) and the budget keeper
(``serve.engine.budget_keeper.BudgetKeeper``) on the shipped uplift ensemble and real Hillstrom customers.
No Ray: the keeper is the actor's body, called directly."""

from __future__ import annotations

import asyncio
import json
import math
import threading

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from nudgeserve.models import InvalidFeatures, load_hillstrom, stratified_split
from nudgeserve.models.learn.datasets import hillstrom_strata
from nudgeserve.models.learn.uplift_ensemble import load_uplift_ensemble
from nudgeserve.models.policies.intervention import (
    REASONS,
    BudgetLedger,
    InterventionConfig,
    decide_from_ensemble,
)
from nudgeserve.serve.config import default_config, parse_config
from nudgeserve.serve.decisions import DecisionRecord, LoggedDecisions, read_decisions
from nudgeserve.serve.engine.budget_keeper import BudgetKeeper
from nudgeserve.serve.engine.describe import describe
from nudgeserve.serve.engine.interventions import (
    InterventionEngine,
    experiment_impact,
    impact_table,
)
from nudgeserve.serve.engine.policy_labels import intervention_policy_label
from nudgeserve.serve.errors import ConfigError
from nudgeserve.serve.http.router import Router
from nudgeserve.serve.ray.budget import budget_actor_name
from nudgeserve.serve.ray.deployments import UseCaseScorer, open_decision_log

EMAILS = ("Mens E-Mail", "Womens E-Mail")


@pytest.fixture(scope="module")
def ensemble():
    return load_uplift_ensemble(device="cpu")


@pytest.fixture(scope="module")
def test_customers():
    data = load_hillstrom()
    _, _, test_rows = stratified_split(hillstrom_strata(data), (0.6, 0.2, 0.2), seed=0)
    return data.take(test_rows[:3000]), test_rows[:3000]


def rule(**overrides) -> InterventionConfig:
    settings_ = {
        "costs": dict.fromkeys(EMAILS, 0.05),
        "holdout_share": 0.1,
        "explore_share": 0.1,
        "salt": "test",
    }
    settings_.update(overrides)
    return InterventionConfig(**settings_)


def columns(data, rows=slice(None)):
    return {k: v[rows] for k, v in data.raw_columns().items()}


# ------------------------------------------------------------------------------ engine


def test_decisions_equal_the_rule_run_on_the_ensemble_directly(ensemble, test_customers):
    data, rows = test_customers
    config = rule()
    engine = InterventionEngine(config, ensemble, level=0.9)
    batch = engine.decide(columns(data), rows)
    prediction = ensemble.score(data.raw_columns())
    direct = decide_from_ensemble(config, rows, prediction)
    for field in ("action", "reason", "propensity", "policy_action", "severity", "baseline_risk"):
        np.testing.assert_array_equal(getattr(batch.decisions, field), getattr(direct, field))
    interval = prediction.uplift("visit", 0.9)
    # The engine scores 3,000 rows, the direct call all of them: float32 matmuls over
    # other batch shapes may sum in another order (BLAS blocking differs by CPU), so the
    # uplifts (differences of probabilities of order 0.1) agree to float32 accumulation
    # error over the layer widths (~1e-6 absolute), not bit for bit.
    np.testing.assert_allclose(batch.uplift, interval.mean, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(batch.low, interval.low, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(batch.high, interval.high, rtol=1e-5, atol=2e-6)
    # Every reason occurs on 3,000 customers with these shares.
    assert set(batch.decisions.reasons()) >= {"act", "holdout", "explore"}


@settings(max_examples=15, deadline=None)
@given(chunk=st.integers(1, 400), start=st.integers(0, 2500), size=st.integers(1, 300))
def test_chunking_and_batch_mates_do_not_change_a_units_decision(
    ensemble, test_customers, chunk, start, size
):
    data, rows = test_customers
    config = rule()
    whole = InterventionEngine(config, ensemble).decide(columns(data), rows)
    part = slice(start, start + size)
    chunked = InterventionEngine(config, ensemble, chunk_rows=chunk).decide(
        columns(data, part), rows[part]
    )
    n = len(chunked)
    d, w = chunked.decisions, whole.decisions
    np.testing.assert_array_equal(d.action, w.action[part][:n])
    np.testing.assert_array_equal(d.reason, w.reason[part][:n])
    np.testing.assert_array_equal(d.propensity, w.propensity[part][:n])
    np.testing.assert_allclose(chunked.sd, whole.sd[part][:n], rtol=1e-5, atol=1e-7)


def test_results_are_consistent_with_the_arrays(ensemble, test_customers):
    data, rows = test_customers
    config = rule(threshold=0.01, confidence=0.9)
    batch = InterventionEngine(config, ensemble).decide(columns(data, slice(0, 500)), rows[:500])
    results = batch.results()
    assert len(results) == 500
    for i, r in enumerate(results):
        assert r.intervene == (r.action != config.control)
        assert r.reason in REASONS
        assert 0.0 < r.propensity <= 1.0
        assert [u.treatment for u in r.uplifts] == list(EMAILS)
        for u in r.uplifts:
            assert u.eligible == (u.net_lower > config.threshold)
            assert u.low <= u.uplift <= u.high
            assert math.isclose(u.net_value, u.uplift - 0.05, rel_tol=1e-5, abs_tol=1e-6)
        if r.reason == "act":
            assert r.intervene and r.action == r.policy_action
            chosen = next(u for u in r.uplifts if u.treatment == r.action)
            assert chosen.eligible
            assert math.isclose(r.expected_net_value, chosen.net_value, rel_tol=1e-6)
        if r.reason == "below_threshold":
            assert not r.intervene and not any(u.eligible for u in r.uplifts)
        if r.reason == "holdout":
            assert not r.intervene
        assert math.isclose(r.severity, r.baseline_risk, rel_tol=1e-6)  # value_per_unit 1
        assert math.isclose(r.baseline_risk, 1 - r.baseline, abs_tol=1e-6)  # objective visit
        assert r.objective == "visit" and r.level == 0.95
        assert r.baseline_risk == pytest.approx(float(batch.decisions.baseline_risk[i]))


def test_daily_caps_hold_and_a_planning_preview_spends_nothing(ensemble, test_customers):
    data, rows = test_customers
    config = rule(daily_caps={"Mens E-Mail": 40}, explore_share=0.0)
    ledger = BudgetLedger(config.daily_caps, clock=lambda: 1_000_000.0)
    engine = InterventionEngine(config, ensemble, ledger=ledger)
    preview = engine.decide(columns(data, slice(0, 1000)), rows[:1000], spend_budget=False)
    assert ledger.remaining("Mens E-Mail") == 40
    assert (preview.decisions.action == 1).sum() > 40  # uncapped, the rule wants more
    batch = engine.decide(columns(data, slice(0, 1000)), rows[:1000])
    d = batch.decisions
    assert (d.action == 1).sum() == 40
    assert ledger.remaining("Mens E-Mail") == 0
    assert "budget_exhausted" in d.reasons()
    # Once the cap is gone, the design's probability of the Mens e-mail is 0 and the
    # control's propensity absorbs the policy's share for units that wanted it.
    after = np.flatnonzero(~d.available[:, 1])
    assert after.size and (d.action[after] != 1).all()
    again = engine.decide(columns(data, slice(1000, 1200)), rows[1000:1200])
    assert (again.decisions.action == 1).sum() == 0


def test_bad_input_names_the_argument(ensemble, test_customers):
    data, rows = test_customers
    config = rule()
    with pytest.raises(TypeError, match="config"):
        InterventionEngine({"objective": "visit"}, ensemble)
    with pytest.raises(TypeError, match="ensemble"):
        InterventionEngine(config, object())
    with pytest.raises(ValueError, match="level"):
        InterventionEngine(config, ensemble, level=1.0)
    with pytest.raises(ValueError, match="chunk_rows"):
        InterventionEngine(config, ensemble, chunk_rows=0)
    with pytest.raises(TypeError, match="ledger"):
        InterventionEngine(config, ensemble, ledger=object())
    with pytest.raises(ValueError, match="treatments"):
        InterventionEngine(rule(treatments=("No E-Mail", "Womens E-Mail", "Mens E-Mail")), ensemble)
    engine = InterventionEngine(config, ensemble)
    with pytest.raises(ValueError, match="unit_ids"):
        engine.decide(columns(data, slice(0, 5)), rows[:4])
    with pytest.raises(TypeError, match="unit_ids"):
        engine.decide(columns(data, slice(0, 1)), "u1")
    bad = columns(data, slice(0, 3))
    del bad["channel"]
    with pytest.raises(InvalidFeatures, match="channel"):
        engine.decide(bad, rows[:3])
    bad = columns(data, slice(0, 3))
    bad["history"] = np.array([1.0, -5.0, 2.0])
    with pytest.raises(InvalidFeatures, match="history"):
        engine.decide(bad, rows[:3])


# ----------------------------------------------------------------------- log and impact


def served_log(engine, data, rows, *, feedback_for_match: bool):
    """What the server's log holds after serving ``data``: one record per customer and,
    as a replay does, feedback only where the action equals the customer's arm."""
    batch = engine.decide(columns(data), rows)
    d = batch.decisions
    names = engine.treatments
    records, feedback = [], {}
    for i in range(len(batch)):
        action = names[int(d.action[i])]
        decision_id = f"{i:032x}"
        records.append(
            DecisionRecord(
                decision_id=decision_id,
                time=1.0 + i,
                unit_id=str(rows[i]),
                experiment="interventions",
                variant=REASONS[int(d.reason[i])],
                model_version="1",
                policy=engine.policy_label,
                candidates=list(names),
                actions=[action],
                scores=[float(d.expected_net_value[i])],
                propensities=[float(d.propensity[i])],
                features=batch.replay[i].tolist(),
                use_case="interventions",
            )
        )
        if not feedback_for_match or int(data.treatment[i]) == int(d.action[i]):
            feedback[decision_id] = [
                (action, kind, float(data.outcome(kind)[i]), 1)
                for kind in ("visit", "conversion", "spend")
            ]
    return batch, LoggedDecisions(records, feedback)


def test_annotate_replays_the_rule_and_the_model_from_the_logged_vector(ensemble, test_customers):
    data, rows = test_customers
    engine = InterventionEngine(rule(), ensemble)
    batch, logged = served_log(
        engine, data.take(slice(0, 200)), rows[:200], feedback_for_match=True
    )
    records = list(logged.records)
    # A record that lists the candidates in another order, and one of another use case.
    rec = records[0]
    order = [2, 0, 1]
    records[0] = DecisionRecord(
        **{f: getattr(rec, f) for f in rec.__struct_fields__ if f != "candidates"},
        candidates=[rec.candidates[j] for j in order],
    )
    records.append(
        DecisionRecord(
            "f" * 32,
            0.0,
            "u",
            "",
            "",
            "1",
            "greedy",
            [str(i) for i in range(80)],
            ["3", "7"],
            [0.1, 0.2],
            [1.0, 1.0],
            [0.0] * 84,
            "obd",
        )
    )
    ann = engine.annotate(records)
    assert set(ann) == {
        "eval_probs",
        "reward_hat_visit",
        "reward_hat_conversion",
        "reward_hat_spend",
    }
    assert all(len(rows_) == 201 + 1 for rows_ in ann.values())  # the OBD record has 2 slots
    policy = batch.decisions.policy_action
    for i in range(1, 200):
        assert ann["eval_probs"][i] == [1.0 if j == policy[i] else 0.0 for j in range(3)]
        np.testing.assert_allclose(
            ann["reward_hat_visit"][i], batch.predicted["visit"][i], rtol=1e-5
        )
    assert ann["eval_probs"][0] == [1.0 if j == policy[0] else 0.0 for j in order]
    np.testing.assert_allclose(
        ann["reward_hat_spend"][0], batch.predicted["spend"][0][order], rtol=1e-5
    )
    assert len(ann["eval_probs"][-1]) == 80 and all(math.isnan(x) for x in ann["eval_probs"][-1])


def test_impact_from_the_log_keeps_matched_decisions_and_reports_effects(ensemble, test_customers):
    data, rows = test_customers
    config = rule(holdout_share=0.3, explore_share=0.3)
    engine = InterventionEngine(config, ensemble)
    batch, logged = served_log(engine, data, rows, feedback_for_match=True)
    matched = int((batch.decisions.action == data.treatment).sum())
    table = impact_table(logged, engine, feedback_only=True)
    assert table.num_rows == matched
    assert impact_table(logged, engine, feedback_only=False).num_rows == len(rows)
    out = experiment_impact(
        logged,
        engine,
        experiment="interventions",
        feedback_only=True,
        n_bootstrap=50,
        qini_resamples=20,
    )
    report = out["report"]
    assert out["analysed"] == report.n == matched
    reasons = table["reason"].to_pylist()
    assert (
        out["randomized"]
        == report.n_randomized
        == sum(r in ("holdout", "explore") for r in reasons)
    )
    # Each e-mail's effect against the holdout on visits, estimated on randomised rows.
    ate = {(e.treatment, e.outcome): e for e in report.ate}
    for email in EMAILS:
        effect = ate[(email, "visit")]
        rand = np.isin(reasons, ["holdout", "explore"])
        action = np.asarray(table["action"].to_pylist())
        visit = np.asarray(table["visit"].to_pylist())
        t = EMAILS.index(email) + 1
        expected = visit[rand & (action == t)].mean() - visit[rand & (action == 0)].mean()
        assert effect.estimate == pytest.approx(expected)
        assert effect.low < effect.estimate < effect.high
    policies = {v.policy for v in report.policy_values}
    assert {"rule", "treat nobody", "random at rule's rates"} <= policies
    assert {d.baseline for d in report.differences} >= {"treat nobody"}
    assert {loss.kind for loss in report.losses}  # missed and unnecessary interventions
    assert "Average treatment effect" in out["text"]
    with pytest.raises(ValueError, match="no intervention decisions"):
        impact_table(LoggedDecisions(logged.records[:5], {}), engine, feedback_only=True)


def test_policy_label_names_the_rule_settings():
    label = intervention_policy_label(rule(threshold=0.02, confidence=0.9))
    assert label.startswith("intervention(") and "confidence=0.9" in label
    assert "threshold=0.02" in label and "holdout=0.1" in label


# ------------------------------------------------------------------------- budget keeper


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def prefs(*rows):
    return np.asarray(rows, dtype=np.int64).reshape(-1, 1)


def test_keeper_persists_counts_and_a_restart_continues_the_day(tmp_path):
    clock = FakeClock(86_400.0 * 100 + 10)
    path = tmp_path / "budget" / "interventions.json"
    names = ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
    keeper = BudgetKeeper({"Mens E-Mail": 5}, state_path=path, clock=clock)
    granted, available = keeper.allocate(prefs(1, 1, 2, 1), names)
    assert granted.tolist() == [1, 1, 2, 1]
    saved = json.loads(path.read_text())
    assert saved["used"] == {"Mens E-Mail": 3} and saved["day"] == 100
    restarted = BudgetKeeper({"Mens E-Mail": 5}, state_path=path, clock=clock)
    assert restarted.restored == {"Mens E-Mail": 3}
    granted, available = restarted.allocate(prefs(1, 1, 1, -1), names)
    assert granted.tolist() == [1, 1, -1, -1]
    assert available[:, 1].tolist() == [True, True, False, False]
    # A new day starts at 0, also after a restart.
    clock.t += 86_400.0
    assert BudgetKeeper({"Mens E-Mail": 5}, state_path=path, clock=clock).state().used == {
        "Mens E-Mail": 0
    }


def test_keeper_set_caps_keeps_todays_counts_clamped(tmp_path):
    clock = FakeClock(86_400.0 * 7)
    keeper = BudgetKeeper({"Mens E-Mail": 10}, state_path=tmp_path / "b.json", clock=clock)
    keeper.allocate(prefs(*[1] * 6), ("No E-Mail", "Mens E-Mail", "Womens E-Mail"))
    state = keeper.set_caps({"Mens E-Mail": 4, "Womens E-Mail": 2})
    assert state.used == {"Mens E-Mail": 4, "Womens E-Mail": 0}
    assert state.caps == {"Mens E-Mail": 4, "Womens E-Mail": 2}
    with pytest.raises(ValueError, match="caps"):
        keeper.set_caps({"Mens E-Mail": -1})
    with pytest.raises(TypeError, match="caps"):
        BudgetKeeper(["Mens E-Mail"])


def test_keeper_ignores_an_unreadable_state_file(tmp_path):
    path = tmp_path / "b.json"
    path.write_text("{not json")
    keeper = BudgetKeeper({"Mens E-Mail": 3}, state_path=path, clock=FakeClock(0.0))
    assert keeper.state().used == {"Mens E-Mail": 0}


@settings(max_examples=20, deadline=None)
@given(
    cap=st.integers(0, 60),
    batches=st.lists(st.integers(1, 25), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_caps_hold_under_concurrent_batches(cap, batches, seed):
    names = ("No E-Mail", "Mens E-Mail", "Womens E-Mail")
    keeper = BudgetKeeper({"Mens E-Mail": cap}, clock=FakeClock(5.0))
    rng = np.random.default_rng(seed)
    # Each unit prefers Mens then Womens, Womens then Mens, or Mens only.
    choices = np.asarray([[1, 2], [2, 1], [1, -1]], dtype=np.int64)
    work = [choices[rng.integers(0, 3, size)] for size in batches]
    granted_mens = []
    lock = threading.Lock()

    def serve(p: np.ndarray) -> None:
        granted, available = keeper.allocate(p, names)
        # A unit gets its first preference whenever that had budget left.
        first = p[:, 0]
        ok = available[np.arange(p.shape[0]), first]
        assert (granted[ok] == first[ok]).all()
        with lock:
            granted_mens.append(int((granted == 1).sum()))

    threads = [threading.Thread(target=serve, args=(p,)) for p in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    asking_first = sum(int((p[:, 0] == 1).sum()) for p in work)
    # Womens has no cap, so only units that ask Mens first can get it: exactly the cap's
    # worth of them (or all of them), never more, whatever the interleaving.
    assert sum(granted_mens) == min(cap, asking_first)
    assert keeper.state().used["Mens E-Mail"] == sum(granted_mens)


def test_actor_name():
    assert budget_actor_name("interventions") == "nudgeserve-budget-interventions"
    with pytest.raises(ValueError, match="use_case"):
        budget_actor_name("")


# ---------------------------------------------------------------------- config and wiring


def intervention_config(tmp_path, **interventions):
    """The default config's intervention use case alone, its log under ``tmp_path``."""
    base = default_config()
    use_case = base.use_case("interventions")
    if interventions:
        use_case = msgspec.structs.replace(
            use_case,
            interventions=msgspec.structs.replace(use_case.interventions, **interventions),
        )
    return msgspec.structs.replace(
        base, use_cases=(use_case,), experiments=(), state_dir=str(tmp_path)
    )


def raw_config(**interventions):
    return {
        "use_cases": [
            {
                "kind": "hillstrom",
                "name": "iv",
                "model_name": "iv_model",
                "interventions": {"rule": {}, **interventions},
            }
        ]
    }


@pytest.mark.parametrize(
    ("change", "setting", "words"),
    [
        (
            lambda r: r["use_cases"][0]["interventions"]["rule"].update(confidence=1.2),
            "use_cases[0].interventions",
            ["rule.confidence must be in [0.5, 1)"],
        ),
        (
            lambda r: r["use_cases"][0]["interventions"]["rule"].update(objective="click"),
            "use_cases[0].interventions",
            ["rule.objective = 'click'", "visit, conversion, spend"],
        ),
        (
            lambda r: r["use_cases"][0]["interventions"]["rule"].update(costs={"SMS": 1.0}),
            "use_cases[0].interventions",
            ["rule.costs names 'SMS'"],
        ),
        (
            lambda r: r["use_cases"][0]["interventions"]["rule"].update(holdout="x"),
            "use_cases[0].interventions",
            ["rule: Object contains unknown field `holdout`"],
        ),
        (
            lambda r: r["use_cases"][0]["interventions"].update(level=1.5),
            "use_cases[0].interventions.level",
            ["1.5"],
        ),
        (lambda r: r["use_cases"][0].update(max_k=2), "", ["use_cases[0].max_k = 2"]),
        (
            lambda r: r.update(
                experiments=[
                    {"name": "e", "use_case": "iv", "variants": [{"name": "a", "weight": 1.0}]}
                ]
            ),
            "",
            ["experiments[0].use_case = 'iv'", "own holdout"],
        ),
        (
            lambda r: r.update(
                experiments=[
                    {"name": "iv", "use_case": "iv2", "variants": [{"name": "a", "weight": 1.0}]}
                ],
                use_cases=r["use_cases"]
                + [{"kind": "hillstrom", "name": "iv2", "model_name": "m2"}],
            ),
            "",
            ["use_cases[0].interventions.experiment = 'iv'", "already the name"],
        ),
        (
            lambda r: r.update(decision_log={"outcome_kinds": ["click", "conversion"]}),
            "",
            ["rule.objective = 'visit' is not one of decision_log.outcome_kinds"],
        ),
    ],
)
def test_config_errors_name_the_setting(change, setting, words):
    raw = raw_config()
    change(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.setting == setting
    for w in words:
        assert w in str(info.value)


def test_describe_checks_the_ensemble_and_the_treatments(tmp_path):
    config = intervention_config(tmp_path, ensemble=str(tmp_path / "missing"))
    with pytest.raises(ConfigError) as info:
        describe(config.use_cases[0])
    assert info.value.setting == "use_cases[interventions].interventions.ensemble"
    swapped = intervention_config(
        tmp_path,
        rule={"treatments": ["No E-Mail", "Womens E-Mail", "Mens E-Mail"]},
    )
    with pytest.raises(ConfigError, match="rule.treatments"):
        describe(swapped.use_cases[0])
    info = describe(default_config().use_case("interventions"))
    assert info.intervention_experiment == "interventions" and info.max_k == 1
    assert info.intervention_policy.startswith("intervention(")


def run_calls(router, calls):
    """Drive the router with several requests on one event loop (the scorer's request
    batcher belongs to the loop it first ran on)."""

    async def go():
        out = []
        for method, path, body in calls:
            raw = b"" if body is None else msgspec.json.encode(body)
            path, _, query = path.partition("?")
            scope = {
                "type": "http",
                "method": method,
                "path": path,
                "raw_path": path.encode(),
                "query_string": query.encode(),
                "root_path": "",
                "scheme": "http",
                "server": ("test", 80),
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                ],
            }
            chunks = [raw]

            async def receive(chunks=chunks):
                return {
                    "type": "http.request",
                    "body": chunks.pop() if chunks else b"",
                    "more_body": False,
                }

            response = await router.handle(Request(scope, receive))
            out.append((response.status_code, msgspec.json.decode(response.body)))
        return out

    return asyncio.run(go())


class BatchOfOne:
    """The real scorer, each ``/v1/decide`` a batch of one through its batch logic
    (``decide_and_log``: score, decide, log); Ray's request batcher needs a replica."""

    def __init__(self, scorer):
        self.scorer = scorer

    async def decide(self, item):
        return (await self.scorer.decide_and_log([item]))[0]

    def __getattr__(self, name):
        return getattr(self.scorer, name)


@pytest.fixture
def served(tmp_path):
    """A router with the real intervention scorer (no Ray: its own ledger) and a real
    decision log."""
    config = intervention_config(tmp_path)
    log = open_decision_log(config)
    scorer = UseCaseScorer(config.use_cases[0], config, log)
    router = Router(config, {"interventions": BatchOfOne(scorer)}, log)
    yield router, log, scorer
    scorer.close()
    log.close()


def context_of(data, i):
    cols = data.raw_columns()
    return {
        k: (
            float(cols[k][i])
            if k not in ("history_segment", "zip_code", "channel")
            else str(cols[k][i])
        )
        for k in cols
    }


def test_decide_answers_and_logs_the_intervention(served, test_customers):
    router, log, scorer = served
    data, rows = test_customers
    calls = [
        (
            "POST",
            "/v1/decide",
            {"use_case": "interventions", "context": context_of(data, i), "unit_id": f"u{i}"},
        )
        for i in range(40)
    ]
    calls.append(
        (
            "POST",
            "/v1/decide",
            {
                "use_case": "interventions",
                "context": context_of(data, 0),
                "candidates": [{"id": "Mens E-Mail"}],
            },
        )
    )
    calls.append(
        (
            "POST",
            "/v1/decide",
            {
                "use_case": "interventions",
                "context": context_of(data, 0),
                "exclusions": ["Mens E-Mail"],
            },
        )
    )
    answers = run_calls(router, calls)
    engine = scorer.engine.interventions
    local = engine.decide(
        {k: v[:40] for k, v in data.raw_columns().items()},
        np.asarray([f"u{i}" for i in range(40)]),
        spend_budget=False,
    ).results()
    logged = {r.decision_id: r for r in read_decisions(log.config.path).records}
    for (status, answer), want in zip(answers[:40], local, strict=True):
        assert status == 200, answer
        inter = answer["intervention"]
        assert answer["policy"] == "intervention"
        assert answer["experiment"] == "interventions" and answer["variant"] == inter["reason"]
        assert inter["action"] == want.action and inter["reason"] == want.reason
        assert inter["propensity"] == pytest.approx(want.propensity)
        assert answer["actions"] == [
            {
                "id": want.action,
                "rank": 1,
                "score": pytest.approx(want.expected_net_value, rel=1e-4, abs=1e-6),
                "propensity": pytest.approx(want.propensity),
            }
        ]
        record = logged[answer["decision_id"]]
        assert record.experiment == "interventions" and record.variant == want.reason
        assert record.actions == [want.action]
        assert record.propensities == [pytest.approx(want.propensity)]
        assert record.policy == scorer.engine.info.intervention_policy
        assert record.candidates == list(engine.treatments)
    for (status, answer), field in zip(answers[40:], ("candidates", "exclusions"), strict=True):
        assert status == 400 and answer["error"].startswith(f"{field}: ")


def test_batch_endpoint_decides_logs_and_validates(served, test_customers):
    router, log, scorer = served
    data, rows = test_customers
    n = 300
    units = [{"unit_id": f"b{i}", "context": context_of(data, i)} for i in range(n)]
    bad_history = [dict(u) for u in units[:3]]
    bad_history[2] = {"unit_id": "x", "context": {**units[2]["context"], "history": -1.0}}
    answers = run_calls(
        router,
        [
            (
                "POST",
                "/v1/decide/batch",
                {"use_case": "interventions", "units": units, "dry_run": True},
            ),
            ("POST", "/v1/decide/batch", {"use_case": "interventions", "units": units}),
            ("POST", "/v1/decide/batch", {"use_case": "interventions", "units": []}),
            ("POST", "/v1/decide/batch", {"use_case": "interventions", "units": bad_history}),
            (
                "POST",
                "/v1/decide/batch",
                {"use_case": "interventions", "units": [{"context": {"recency": 1.0}}]},
            ),
            ("POST", "/v1/decide/batch", {"use_case": "nope", "units": units[:1]}),
        ],
    )
    (s_dry, dry), (s_real, real) = answers[:2]
    assert s_dry == 200 and s_real == 200
    assert dry["dry_run"] and all(r["decision_id"] is None for r in dry["results"])
    local = scorer.engine.interventions.decide(
        {k: v[:n] for k, v in data.raw_columns().items()},
        np.asarray([u["unit_id"] for u in units]),
        spend_budget=False,
    ).results()
    assert [r["intervention"]["action"] for r in dry["results"]] == [r.action for r in local]
    assert [r["intervention"]["action"] for r in real["results"]] == [r.action for r in local]
    assert [r["unit_id"] for r in real["results"]] == [u["unit_id"] for u in units]
    records = read_decisions(log.config.path).records
    assert len(records) == n  # the dry run logged nothing
    by_id = {r.decision_id: r for r in records}
    for r in real["results"]:
        record = by_id[r["decision_id"]]
        assert record.unit_id == r["unit_id"] and record.variant == r["intervention"]["reason"]
        assert record.propensities == [pytest.approx(r["intervention"]["propensity"])]
    errors = answers[2:]
    assert [s for s, _ in errors] == [400, 400, 400, 404]
    assert errors[0][1]["error"].startswith("units: ")
    assert errors[1][1]["error"].startswith("units[2].context.history: ")
    assert errors[2][1]["error"].startswith("units[0].context")
    assert "nope" in errors[3][1]["error"]


def test_batch_limit_and_budget_are_the_configured_ones(tmp_path, test_customers):
    data, _ = test_customers
    config = intervention_config(
        tmp_path,
        max_batch_units=50,
        rule={
            "costs": {"Mens E-Mail": 0.05, "Womens E-Mail": 0.05},
            "daily_caps": {"Mens E-Mail": 5, "Womens E-Mail": 5},
            "holdout_share": 0.1,
        },
    )
    log = open_decision_log(config)
    scorer = UseCaseScorer(config.use_cases[0], config, log)
    router = Router(config, {"interventions": BatchOfOne(scorer)}, log)
    try:
        units = [{"unit_id": f"c{i}", "context": context_of(data, i)} for i in range(51)]
        (s1, too_many), (s2, first), (s3, second) = run_calls(
            router,
            [
                ("POST", "/v1/decide/batch", {"use_case": "interventions", "units": units}),
                ("POST", "/v1/decide/batch", {"use_case": "interventions", "units": units[:50]}),
                ("POST", "/v1/decide/batch", {"use_case": "interventions", "units": units[:50]}),
            ],
        )
        assert s1 == 400 and "at most 50" in too_many["error"]
        actions = [r["intervention"]["action"] for r in first["results"] + second["results"]]
        assert actions.count("Mens E-Mail") <= 5 and actions.count("Womens E-Mail") <= 5
        reasons = [r["intervention"]["reason"] for r in second["results"]]
        assert "budget_exhausted" in reasons
    finally:
        scorer.close()
        log.close()


def test_impact_route_reports_on_the_logged_decisions(served, test_customers):
    router, log, scorer = served
    data, rows = test_customers
    n = 1500
    units = [{"unit_id": f"r{i}", "context": context_of(data, i)} for i in range(n)]
    ((status, sent),) = run_calls(
        router, [("POST", "/v1/decide/batch", {"use_case": "interventions", "units": units})]
    )
    assert status == 200
    arms = [("No E-Mail", "Mens E-Mail", "Womens E-Mail")[t] for t in data.treatment[:n]]
    events = [
        {
            "decision_id": r["decision_id"],
            "event_id": kind,
            "kind": kind,
            "value": float(data.outcome(kind)[i]),
        }
        for i, r in enumerate(sent["results"])
        if r["intervention"]["action"] == arms[i]
        for kind in ("visit", "conversion", "spend")
    ]
    matched = len(events) // 3
    answers = run_calls(
        router,
        [
            ("POST", "/v1/feedback", events),
            (
                "GET",
                "/v1/experiments/interventions/impact?feedback_only=true&n_bootstrap=20"
                "&qini_resamples=10",
                None,
            ),
            ("GET", "/v1/experiments/interventions/impact?n_bootstrap=20&qini_resamples=10", None),
            ("GET", "/v1/experiments/nope/impact", None),
            ("GET", "/v1/experiments/interventions/impact?n_bootstrap=1", None),
            ("GET", "/v1/experiments/interventions/impact?since=soon", None),
            ("GET", "/v1/experiments/interventions/impact?since=5&until=4", None),
            ("GET", "/v1/experiments/interventions/impact?feedback_only=maybe", None),
            ("GET", "/v1/experiments/interventions/impact?verbose=1", None),
            ("GET", "/v1/experiments/interventions/impact?since=4102444800", None),
        ],
    )
    assert answers[0][0] == 200
    (s1, only_fb), (s2, everything) = answers[1:3]
    assert s1 == 200 and s2 == 200
    assert only_fb["analysed"] == only_fb["report"]["n"] == matched
    assert everything["analysed"] == n and everything["decisions"] == n
    assert only_fb["randomized"] == only_fb["report"]["n_randomized"]
    assert "Average treatment effect" in only_fb["text"]
    statuses = [s for s, _ in answers[3:]]
    assert statuses == [404, 400, 400, 400, 400, 400, 404]
    fields = [a["error"].split(":")[0] for _, a in answers[4:9]]
    assert fields == ["n_bootstrap", "since", "until", "feedback_only", "verbose"]


def test_replay_takes_held_out_customers_and_checks_its_arguments(test_customers, capsys):
    from nudgeserve.cli import main
    from nudgeserve.commands.replay import HttpClient, _contexts, _customers

    _, test_rows = test_customers
    data, rows = _customers(200, seed=3)
    again, rows_again = _customers(200, seed=3)
    np.testing.assert_array_equal(rows, rows_again)
    data_all = load_hillstrom()
    _, _, all_test = stratified_split(hillstrom_strata(data_all), (0.6, 0.2, 0.2), seed=0)
    assert set(rows.tolist()) <= set(all_test.tolist())  # never a training customer
    contexts = _contexts(data)
    assert len(contexts) == 200 and set(contexts[0]) == set(data.raw_columns())
    with pytest.raises(ValueError, match="--url"):
        HttpClient("localhost:8000", 5)
    with pytest.raises(SystemExit):
        main(["replay", "--url", "http://127.0.0.1:1", "--limit", "0"])
    assert "--limit" in capsys.readouterr().err
