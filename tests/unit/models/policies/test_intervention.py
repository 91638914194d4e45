"""The intervention decision rule: threshold and confidence, randomisation, propensities,
budgets under concurrency, day resets, and input errors."""

from __future__ import annotations

import threading
from statistics import NormalDist

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nudgeserve.models import load_hillstrom
from nudgeserve.models.learn.uplift_ensemble import load_uplift_ensemble
from nudgeserve.models.policies.intervention import (
    HASH_BUCKETS,
    REASONS,
    BudgetLedger,
    InterventionConfig,
    assign_branches,
    decide_from_ensemble,
    decide_interventions,
    design_propensities,
)

MENS, WOMENS = "Mens E-Mail", "Womens E-Mail"


def config(**overrides) -> InterventionConfig:
    settings_ = {"holdout_share": 0.0, "explore_share": 0.0, "costs": {MENS: 0.05, WOMENS: 0.05}}
    settings_.update(overrides)
    return InterventionConfig(**settings_)


def batch(means, sds, risk=None):
    means = np.asarray(means, dtype=np.float64)
    b = means.shape[0]
    uplift = np.column_stack([np.zeros(b), means])
    sd = np.column_stack(
        [np.zeros(b), np.broadcast_to(np.asarray(sds, dtype=np.float64), means.shape)]
    )
    risk = np.full(b, 0.9) if risk is None else np.asarray(risk)
    return [f"u{i}" for i in range(b)], risk, uplift, sd


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"holdout_share": 1.2}, "holdout_share"),
        ({"explore_share": -0.1}, "explore_share"),
        ({"holdout_share": 0.6, "explore_share": 0.4}, "holdout_share + explore_share"),
        ({"confidence": 0.4}, "confidence"),
        ({"confidence": 1.0}, "confidence"),
        ({"value_per_unit": 0.0}, "value_per_unit"),
        ({"costs": {"SMS": 1.0}}, "costs"),
        ({"costs": {MENS: -1.0}}, "costs['Mens E-Mail']"),
        ({"costs": {"No E-Mail": 1.0}}, "costs['No E-Mail']"),
        ({"daily_caps": {"No E-Mail": 3}}, "daily_caps"),
        ({"daily_caps": {MENS: -3}}, "daily_caps['Mens E-Mail']"),
        ({"control": "Nothing"}, "control"),
        ({"treatments": ("a",), "control": "a"}, "treatments"),
        ({"hash_seed": 2**32}, "hash_seed"),
        ({"threshold": float("nan")}, "threshold"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("+", r"\+")):
        InterventionConfig(**overrides)


def test_config_type_errors_and_decoding():
    with pytest.raises(TypeError, match="holdout_share"):
        InterventionConfig(holdout_share="0.1")
    with pytest.raises(TypeError, match="salt"):
        InterventionConfig(salt=3)
    decoded = msgspec.json.decode(
        b'{"costs": {"Mens E-Mail": 0.1}, "holdout_share": 0.2, "daily_caps": {"Womens E-Mail": 5}}',
        type=InterventionConfig,
    )
    assert decoded.costs == {MENS: 0.1} and decoded.daily_caps == {WOMENS: 5}
    with pytest.raises(msgspec.ValidationError, match="holdout_share"):
        msgspec.json.decode(b'{"holdout_share": 2}', type=InterventionConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        msgspec.json.decode(b'{"holdout": 0.1}', type=InterventionConfig)


# ------------------------------------------------------------------- threshold / confidence


def test_threshold_and_confidence_decide():
    z = NormalDist().inv_cdf(0.8)
    # unit 0: clears with confidence; unit 1: positive expected net value but too
    # uncertain; unit 2: negative net value; unit 3: both eligible, women's pays more.
    ids, risk, uplift, sd = batch(
        [[0.10, 0.0], [0.06, 0.0], [0.03, 0.0], [0.09, 0.12]],
        [[0.01, 0.01], [0.02, 0.01], [0.001, 0.01], [0.01, 0.01]],
    )
    d = decide_interventions(config(), ids, risk, uplift, sd)
    assert d.reasons() == ["act", "below_threshold", "below_threshold", "act"]
    assert d.action.tolist() == [1, 0, 0, 2]
    assert d.propensity.tolist() == [1.0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(d.expected_net_value, [0.05, 0.0, 0.0, 0.07], atol=1e-7)
    np.testing.assert_allclose(d.net_lower[0, 1], 0.10 - z * 0.01 - 0.05, atol=1e-7)
    assert d.net_value[1, 1] == pytest.approx(0.01)
    # Confidence 0.5 acts on the expected value alone: unit 1 now qualifies.
    d = decide_interventions(config(confidence=0.5), ids, risk, uplift, sd)
    assert d.reasons()[1] == "act"
    # A threshold above unit 0's lower bound declines it.
    d = decide_interventions(config(threshold=0.045), ids, risk, uplift, sd)
    assert d.reasons()[0] == "below_threshold"


def _reference_policy(cfg, uplift, sd):
    """One unit at a time, straight from the module docstring's formulas."""
    z = NormalDist().inv_cdf(cfg.confidence)
    out = []
    for i in range(uplift.shape[0]):
        best, best_net = cfg.control_index, None
        for t, name in enumerate(cfg.treatments):
            if t == cfg.control_index:
                continue
            cost = cfg.costs.get(name, 0.0)
            net = cfg.value_per_unit * uplift[i, t] - cost
            lower = cfg.value_per_unit * (uplift[i, t] - z * sd[i, t]) - cost
            if lower > cfg.threshold and (best_net is None or net > best_net):
                best, best_net = t, net
        out.append(best)
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 40),
    confidence=st.floats(0.5, 0.99),
    threshold=st.floats(-0.05, 0.05),
    value=st.floats(0.1, 10.0),
)
def test_policy_matches_a_per_unit_reference(seed, b, confidence, threshold, value):
    rng = np.random.default_rng(seed)
    cfg = config(
        confidence=confidence,
        threshold=threshold,
        value_per_unit=value,
        costs={MENS: float(rng.uniform(0, 0.1)), WOMENS: float(rng.uniform(0, 0.1))},
    )
    uplift = rng.normal(0.03, 0.04, (b, 3))
    sd = rng.uniform(0, 0.03, (b, 3))
    d = decide_interventions(cfg, np.arange(b), rng.uniform(0, 1, b), uplift, sd)
    expected = _reference_policy(cfg, uplift, sd)
    np.testing.assert_array_equal(d.policy_action, expected, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(d.action, expected)
    assert set(d.reasons()) <= {"act", "below_threshold"}


def test_severity_is_risk_times_value_at_stake():
    ids, _, uplift, sd = batch([[0.1, 0.1]] * 3, 0.01)
    risk = np.array([0.9, 0.5, 0.0])
    d = decide_interventions(config(value_per_unit=2.0), ids, risk, uplift, sd)
    np.testing.assert_allclose(d.severity, [1.8, 1.0, 0.0])
    d = decide_interventions(
        config(), ids, risk, uplift, sd, value_at_stake=np.array([100.0, 10.0, 50.0])
    )
    np.testing.assert_allclose(d.severity, [90.0, 5.0, 0.0])


# ------------------------------------------------------------------ holdout / exploration


def test_branches_are_deterministic_per_unit_and_salted():
    cfg = config(holdout_share=0.2, explore_share=0.3)
    ids = np.arange(5000)
    a, x = assign_branches(ids, cfg)
    b, y = assign_branches(ids[::-1], cfg)
    np.testing.assert_array_equal(a, b[::-1])
    np.testing.assert_array_equal(x, y[::-1])
    # Strings and the same ids as ints hash alike (the key is "{salt}:{id}").
    c, _ = assign_branches(ids.astype(str), cfg)
    np.testing.assert_array_equal(a, c)
    d, _ = assign_branches(ids, config(holdout_share=0.2, explore_share=0.3, salt="other"))
    assert np.mean(a != d) > 0.3


def test_shares_and_propensities_match_their_empirical_frequencies():
    # One context for every unit, so every unit has the same propensities and their
    # empirical frequencies over 200,000 hashed ids estimate them (tolerance: 5 sd).
    h, e, n = 0.1, 0.15, 200_000
    cfg = config(holdout_share=h, explore_share=e, hash_seed=7)
    ids, risk, uplift, sd = batch(np.tile([[0.10, 0.0]], (n, 1)), 0.01)
    d = decide_interventions(cfg, ids, risk, uplift, sd)
    shares = {r: np.mean(np.array(d.reasons()) == r) for r in REASONS}
    tol = lambda p: 5 * np.sqrt(p * (1 - p) / n)  # noqa: E731
    assert abs(shares["holdout"] - h) < tol(h)
    assert abs(shares["explore"] - e) < tol(e)
    assert abs(shares["act"] - (1 - h - e)) < tol(1 - h - e)
    expected = {0: h + e / 3, 1: e / 3 + 1 - h - e, 2: e / 3}
    for action, p in expected.items():
        got = d.propensity[d.action == action]
        np.testing.assert_allclose(got, p, rtol=0, atol=1e-5)
        assert abs(np.mean(d.action == action) - p) < tol(p), action
    assert cfg.effective_holdout_share == round(h * HASH_BUCKETS) / HASH_BUCKETS


def test_horvitz_thompson_identity_holds_for_every_action():
    # E[1{a = t} / p(t)] = 1 for every action with p > 0: the logged propensities are
    # the design's probabilities, whatever the contexts.
    rng = np.random.default_rng(11)
    n = 120_000
    cfg = config(holdout_share=0.2, explore_share=0.2, salt="ht")
    uplift = np.column_stack([np.zeros(n), rng.normal(0.06, 0.05, (n, 2))])
    sd = np.column_stack([np.zeros(n), rng.uniform(0, 0.02, (n, 2))])
    d = decide_interventions(cfg, np.arange(n), rng.uniform(0, 1, n), uplift, sd)
    for t in range(3):
        ratio = np.mean((d.action == t) / d.propensity)
        assert abs(ratio - 1.0) < 0.03, (t, ratio)


def test_propensities_account_for_exhausted_budgets():
    h, e, n = 0.1, 0.3, 150_000
    cfg = config(holdout_share=h, explore_share=e, daily_caps={MENS: 0})
    ids, risk, uplift, sd = batch(np.tile([[0.10, 0.08]], (n, 1)), 0.01)
    ledger = BudgetLedger.from_config(cfg, clock=lambda: 0.0)
    d = decide_interventions(cfg, ids, risk, uplift, sd, ledger=ledger)
    # Men's e-mail is never available: the policy falls back to women's, exploration
    # draws of men's become no e-mail.
    reasons = np.array(d.reasons())
    assert not np.any(d.action == 1)
    assert np.all(d.policy_action == 1)  # the rule's own choice ignores caps
    assert np.all(d.action[reasons == "act"] == 2)
    assert np.all(d.action[reasons == "budget_exhausted"] == 0)
    expected = {0: h + e * 2 / 3, 2: e / 3 + 1 - h - e}
    for action, p in expected.items():
        np.testing.assert_allclose(d.propensity[d.action == action], p, atol=1e-5)
        assert abs(np.mean(d.action == action) - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert abs(np.mean(reasons == "budget_exhausted") - e / 3) < 0.005
    np.testing.assert_allclose(design_propensities(cfg, d.policy_action, d.available).sum(1), 1)


# --------------------------------------------------------------------------------- budgets


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_caps_under_eight_concurrent_threads_are_never_exceeded():
    cap = 1500
    cfg = config(daily_caps={MENS: cap, WOMENS: cap // 2})
    ledger = BudgetLedger.from_config(cfg, clock=FakeClock(1e9))
    barrier = threading.Barrier(8)
    results: list = [None] * 8
    errors = []

    def worker(k: int) -> None:
        try:
            rng = np.random.default_rng(k)
            taken = np.zeros(3, dtype=np.int64)
            barrier.wait()
            for _ in range(60):
                b = int(rng.integers(1, 40))
                ids = [f"t{k}-{rng.integers(1 << 40)}" for _ in range(b)]
                uplift = np.column_stack([np.zeros(b), rng.uniform(0.06, 0.2, (b, 2))])
                d = decide_interventions(
                    cfg, ids, np.full(b, 0.8), uplift, np.full((b, 3), 0.005), ledger=ledger
                )
                taken += np.bincount(d.action, minlength=3)
            results[k] = taken
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    total = np.sum(results, axis=0)
    # Demand (about 8 x 60 x 20 units) far exceeds both caps: each is used up exactly.
    assert total[1] == cap and total[2] == cap // 2
    assert ledger.state().used == {MENS: cap, WOMENS: cap // 2}


def test_try_spend_is_atomic_across_threads():
    ledger = BudgetLedger({"x": 1000}, clock=FakeClock(0.0))
    granted = []

    def worker() -> None:
        granted.append(sum(ledger.try_spend("x") for _ in range(400)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 1000 and ledger.remaining("x") == 0
    assert ledger.try_spend("uncapped")  # names without a cap are never refused


def test_caps_reset_when_the_day_changes():
    clock = FakeClock(86_400.0 * 100 + 3600)  # 01:00 UTC
    cfg = config(daily_caps={MENS: 2}, costs={})
    ledger = BudgetLedger.from_config(cfg, clock=clock, utc_offset_s=-7200.0)  # UTC-2
    ids, risk, uplift, sd = batch([[0.2, 0.0]] * 3, 0.001)
    d = decide_interventions(cfg, ids, risk, uplift, sd, ledger=ledger)
    assert d.reasons() == ["act", "act", "budget_exhausted"]
    assert d.available[:, 1].tolist() == [True, True, False]
    day = ledger.state().day
    clock.t += 2 * 3600  # 03:00 UTC = 01:00 at UTC-2: a new day there
    assert ledger.remaining(MENS) == 2 and ledger.state().day == day + 1
    d = decide_interventions(cfg, ids, risk, uplift, sd, ledger=ledger)
    assert d.reasons() == ["act", "act", "budget_exhausted"]
    ledger.refund(MENS)
    assert ledger.remaining(MENS) == 1


def test_exhausted_top_choice_falls_back_to_the_next_eligible_treatment():
    cfg = config(daily_caps={WOMENS: 1})
    ledger = BudgetLedger.from_config(cfg, clock=FakeClock(0.0))
    ids, risk, uplift, sd = batch([[0.10, 0.12], [0.10, 0.12], [0.02, 0.12]], 0.001)
    d = decide_interventions(cfg, ids, risk, uplift, sd, ledger=ledger)
    assert d.action.tolist() == [2, 1, 0]
    assert d.reasons() == ["act", "act", "budget_exhausted"]
    assert d.policy_action.tolist() == [2, 2, 2]


def test_ledger_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"caps\['x'\]"):
        BudgetLedger({"x": -1})
    with pytest.raises(ValueError, match="utc_offset_s"):
        BudgetLedger({}, utc_offset_s=10**6)
    ledger = BudgetLedger({"x": 1})
    with pytest.raises(ValueError, match="preferences"):
        ledger.allocate(np.array([[5]]), ["x"])
    with pytest.raises(ValueError, match="amount"):
        ledger.try_spend("x", 0)


# ------------------------------------------------------------------------------ inputs


def test_bad_inputs_name_the_argument():
    ids, risk, uplift, sd = batch([[0.1, 0.1]] * 2, 0.01)
    cfg = config()
    with pytest.raises(ValueError, match="uplift must have shape"):
        decide_interventions(cfg, ids, risk, uplift[:, :2], sd)
    with pytest.raises(ValueError, match="baseline_risk"):
        decide_interventions(cfg, ids, np.array([0.5, 1.5]), uplift, sd)
    with pytest.raises(ValueError, match="uplift_sd must be >= 0"):
        decide_interventions(cfg, ids, risk, uplift, -sd - 1)
    with pytest.raises(ValueError, match="uplift must be finite"):
        decide_interventions(cfg, ids, risk, uplift * np.nan, sd)
    with pytest.raises(ValueError, match="unit_ids has 1 ids"):
        decide_interventions(cfg, ids[:1], risk, uplift, sd)
    with pytest.raises(TypeError, match="unit_ids"):
        decide_interventions(cfg, "u1", risk, uplift, sd)
    with pytest.raises(TypeError, match="unit_ids"):
        decide_interventions(cfg, np.array([0.5, 1.5]), risk, uplift, sd)
    with pytest.raises(TypeError, match="config"):
        decide_interventions({"holdout_share": 0.1}, ids, risk, uplift, sd)
    empty = decide_interventions(cfg, [], np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3)))
    assert len(empty) == 0


def test_decide_from_the_shipped_ensemble():
    data = load_hillstrom().take(slice(0, 300))
    ensemble = load_uplift_ensemble(device="cpu")
    prediction = ensemble.score(data.raw_columns())
    cfg = InterventionConfig(costs={MENS: 0.05, WOMENS: 0.05}, holdout_share=0.1)
    d = decide_from_ensemble(cfg, np.arange(300), prediction)
    visit = prediction.uplift("visit")
    np.testing.assert_allclose(d.baseline_risk, 1.0 - visit.baseline, rtol=1e-6)
    np.testing.assert_allclose(d.net_value[:, 1], visit.mean[:, 1] - 0.05, atol=1e-6)
    assert set(d.reasons()) <= set(REASONS) and 0 < np.mean(d.action != 0) < 1
    with pytest.raises(ValueError, match="treatments"):
        decide_from_ensemble(
            InterventionConfig(treatments=("a", "b", "c"), control="a"), np.arange(300), prediction
        )


def _allocate_reference(prefs, names, caps, used):
    """Unit by unit, exactly as ``allocate`` documents it."""
    left = {j: caps[n] - used[n] for j, n in enumerate(names) if n in caps}
    granted = np.full(prefs.shape[0], -1)
    available = np.ones((prefs.shape[0], len(names)), dtype=bool)
    for i in range(prefs.shape[0]):
        available[i] = [j not in left or left[j] > 0 for j in range(len(names))]
        for j in prefs[i]:
            if j >= 0 and (j not in left or left[j] > 0):
                granted[i] = j
                if j in left:
                    left[j] -= 1
                break
    return granted, available, {names[j]: caps[names[j]] - v for j, v in left.items()}


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(0, 30))
def test_allocate_matches_the_unit_by_unit_reference(seed, b):
    rng = np.random.default_rng(seed)
    names = ("none", "a", "b", "c")
    caps = {n: int(rng.integers(0, 12)) for n in names[1:] if rng.random() < 0.8}
    used = {n: int(rng.integers(0, caps[n] + 1)) for n in caps}
    prefs = np.full((b, 2), -1)
    for i in range(b):
        picks = rng.permutation([1, 2, 3])[: rng.integers(0, 3)]
        prefs[i, : len(picks)] = picks
    ledger = BudgetLedger(caps, clock=lambda: 0.0)
    for name, count in used.items():
        if count:
            assert ledger.try_spend(name, count)
    granted, available = ledger.allocate(prefs, names)
    ref_granted, ref_available, ref_used = _allocate_reference(prefs, names, caps, used)
    np.testing.assert_array_equal(granted, ref_granted, err_msg=f"seed={seed}")
    np.testing.assert_array_equal(available, ref_available, err_msg=f"seed={seed}")
    assert ledger.state().used == ref_used


def test_a_forwarding_ledger_works_like_the_ledger_it_forwards_to():
    # How a server shares one ledger across replicas: each replica holds a proxy whose
    # allocate reaches the single BudgetLedger (here through a worker thread).
    from concurrent.futures import ThreadPoolExecutor

    cfg = config(daily_caps={MENS: 2})

    class Forwarding:
        def __init__(self, ledger, pool):
            self.ledger, self.pool = ledger, pool

        def allocate(self, preferences, names):
            return self.pool.submit(self.ledger.allocate, preferences, tuple(names)).result()

    ids, risk, uplift, sd = batch([[0.2, 0.0]] * 4, 0.001)
    direct = decide_interventions(
        cfg, ids, risk, uplift, sd, ledger=BudgetLedger.from_config(cfg, clock=lambda: 0.0)
    )
    with ThreadPoolExecutor(1) as pool:
        shared = BudgetLedger.from_config(cfg, clock=lambda: 0.0)
        proxied = decide_interventions(cfg, ids, risk, uplift, sd, ledger=Forwarding(shared, pool))
    assert (
        proxied.reasons()
        == direct.reasons()
        == ["act", "act", "budget_exhausted", "budget_exhausted"]
    )
    np.testing.assert_array_equal(proxied.propensity, direct.propensity)
    with pytest.raises(TypeError, match="allocate"):
        decide_interventions(cfg, ids, risk, uplift, sd, ledger={MENS: 2})
