"""Causal impact: known effects on synthetic randomised data, the real Hillstrom report,
exported decision logs end to end, and the plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nudgeserve.cli import main
from nudgeserve.models import hillstrom_strata, load_hillstrom, stratified_split
from nudgeserve.models.evaluation.hillstrom_impact import hillstrom_impact
from nudgeserve.models.evaluation.impact import (
    NET_VALUE,
    ImpactReport,
    aipw_scores,
    impact_report,
)
from nudgeserve.models.evaluation.impact_logs import impact_from_logs
from nudgeserve.models.evaluation.ope import evaluate
from nudgeserve.models.evaluation.plots import plot_qini, plot_segment_effects
from nudgeserve.models.evaluation.qini import qini_band
from nudgeserve.models.policies.intervention import (
    REASONS,
    BudgetLedger,
    InterventionConfig,
    decide_interventions,
)

MENS, WOMENS = "Mens E-Mail", "Womens E-Mail"
TREATMENTS = ("No E-Mail", MENS, WOMENS)
PNG = b"\x89PNG\r\n\x1a\n"
SEED = 20240611  # the synthetic data's seed; a failure names it


def synthetic_world(n: int, seed: int):
    """Visit probabilities under each arm with known effects: E[tau_mens] = 0.06,
    E[tau_womens] = 0.02 (x is uniform on [-1, 1]); the "model" is the truth plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    p0 = 0.2 + 0.12 * x
    probs = np.column_stack([p0, p0 + 0.06 + 0.05 * x, p0 + 0.02 - 0.04 * x])
    potential = (rng.random((n, 3)) < probs).astype(np.float64)
    predicted = np.clip(probs + rng.normal(0, 0.01, (n, 3)), 0, 1)
    return rng, x, probs, potential, predicted


def run_rule(config, probs, predicted, potential, rng, ledger=None):
    n = probs.shape[0]
    uplift = predicted - predicted[:, :1]
    d = decide_interventions(
        config,
        np.arange(n),
        1.0 - predicted[:, 0],
        uplift,
        np.full((n, 3), 0.01),
        ledger=ledger,
    )
    y = potential[np.arange(n), d.action]
    return d, y


@pytest.fixture(scope="module")
def logged_world():
    config = InterventionConfig(
        costs={MENS: 0.03, WOMENS: 0.03}, holdout_share=0.2, explore_share=0.3, salt="synthetic"
    )
    rng, x, probs, potential, predicted = synthetic_world(30_000, SEED)
    d, y = run_rule(config, probs, predicted, potential, rng)
    randomized = np.isin(np.array(d.reasons()), ["holdout", "explore"])
    report = impact_report(
        config,
        action=d.action,
        propensity=d.propensity,
        outcomes={"visit": y},
        policy_action=d.policy_action,
        predicted={"visit": predicted},
        randomized=randomized,
        n_bootstrap=400,
        qini_resamples=20,
        seed=1,
    )
    return config, probs, predicted, d, y, randomized, report


def _covers(low: float, high: float, truth: float) -> bool:
    return low <= truth <= high


def _near(low: float, high: float, truth: float) -> bool:
    """The truth within one interval width (about 4 standard errors) of the centre.

    Used where a test checks many intervals at once: at 95% each, one in twenty would
    miss by chance, while a biased estimator misses this band too (see the naive
    difference in means below). A simulation over 60 seeds gave coverage 0.90-0.98.
    """
    return abs((low + high) / 2 - truth) <= high - low


def test_aipw_scores_reproduce_ope_dr_and_ips():
    rng = np.random.default_rng(3)
    n, t = 500, 3
    action = rng.integers(0, t, n)
    propensity = rng.uniform(0.2, 0.6, n)
    y = rng.random(n)
    q = rng.random((n, t))
    pi = rng.dirichlet(np.ones(t), n)
    dr = evaluate(action, y, propensity, pi, reward_hat=q, estimators=("dr", "ips"), n_bootstrap=10)
    scores = aipw_scores(action, propensity, y, q, t)
    assert (pi * scores).sum(axis=1).mean() == pytest.approx(dr["dr"].estimate, rel=1e-12)
    ips = (pi * aipw_scores(action, propensity, y, None, t)).sum(axis=1).mean()
    assert ips == pytest.approx(dr["ips"].estimate, rel=1e-12)


def test_ate_and_att_intervals_cover_the_known_effects(logged_world):
    config, probs, _, d, _, _, report = logged_world
    ate = {(e.treatment, e.outcome): e for e in report.ate}
    assert _covers(ate[MENS, "visit"].low, ate[MENS, "visit"].high, 0.06), (
        SEED,
        ate[MENS, "visit"],
    )
    assert _covers(ate[WOMENS, "visit"].low, ate[WOMENS, "visit"].high, 0.02), SEED
    # Only holdout and exploration units enter: 20% + 30% of 30,000.
    assert report.n_randomized == pytest.approx(15_000, rel=0.05)
    # All units would not do: the rule e-mails the units that respond most, so the naive
    # difference in means over every unit is confounded, far outside the band.
    _, _, _, _, y, _, _ = logged_world
    naive = y[d.action == 1].mean() - y[d.action == 0].mean()
    assert not _near(
        ate[MENS, "visit"].low - ate[MENS, "visit"].estimate + naive,
        ate[MENS, "visit"].high - ate[MENS, "visit"].estimate + naive,
        0.06,
    )
    for e in report.att:
        t = TREATMENTS.index(e.treatment)
        targeted = d.policy_action == t
        truth = float(np.mean(probs[targeted, t] - probs[targeted, 0]))
        assert _near(e.low, e.high, truth), (SEED, e, truth)


def test_policy_values_and_differences_cover_the_truth(logged_world):
    config, probs, predicted, d, _, _, report = logged_world
    n = probs.shape[0]
    rule = probs[np.arange(n), d.policy_action]
    shares = np.bincount(d.policy_action, minlength=3) / n
    truths = {
        "rule": rule.mean(),
        "treat nobody": probs[:, 0].mean(),
        f"treat all: {MENS}": probs[:, 1].mean(),
        f"treat all: {WOMENS}": probs[:, 2].mean(),
        "random at rule's rates": (probs * shares).sum(axis=1).mean(),
    }
    values = {(v.policy, v.estimator): v for v in report.policy_values if v.outcome == "visit"}
    for policy, truth in truths.items():
        for estimator in ("ips", "dr"):
            v = values[policy, estimator]
            assert _near(v.low, v.high, truth), (SEED, policy, estimator, v, truth)
    diffs = {d_.baseline: d_ for d_ in report.differences if d_.outcome == "visit"}
    for baseline, truth in truths.items():
        if baseline == "rule":
            continue
        diff = diffs[baseline]
        assert _near(diff.low, diff.high, truths["rule"] - truth), (SEED, baseline, diff)
    # The rule targets by uplift: it beats random targeting at its own rates.
    assert diffs["random at rule's rates"].low > 0
    # Net value subtracts each unit's cost.
    cost = config.cost_vector()
    net_truth = (probs[np.arange(n), d.policy_action] - cost[d.policy_action]).mean()
    v = values["rule", "dr"]
    net = next(
        x
        for x in report.policy_values
        if x.outcome == NET_VALUE and x.policy == "rule" and x.estimator == "dr"
    )
    assert _near(net.low, net.high, net_truth)
    assert net.estimate < v.estimate


def test_losses_cover_the_truth(logged_world):
    config, probs, predicted, d, _, _, report = logged_world
    n = probs.shape[0]
    cost = config.cost_vector()
    gain_hat = (predicted - cost) - predicted[:, :1]
    gain_hat[:, 0] = -np.inf
    best = gain_hat.argmax(axis=1)
    missed = (d.policy_action == 0) & (gain_hat[np.arange(n), best] > 0)
    true_net = probs - cost - probs[:, :1]
    losses = {loss.kind: loss for loss in report.losses}
    truth = np.where(missed, true_net[np.arange(n), best], 0.0).mean()
    m = losses["missed"]
    assert m.n_units == int(missed.sum()) and _near(m.low, m.high, truth), (SEED, m, truth)
    taken = true_net[np.arange(n), d.action]
    gain_taken = np.where(np.arange(3)[None, :] == 0, 0.0, gain_hat)[np.arange(n), d.action]
    unnecessary = (d.action != 0) & (gain_taken <= 0)
    truth = np.where(unnecessary, -taken, 0.0).mean()
    u = losses["unnecessary"]
    assert u.n_units == int(unnecessary.sum()) and _near(u.low, u.high, truth), (SEED, u, truth)


def test_report_text_and_input_errors(logged_world):
    config, _, _, d, y, _, report = logged_world
    text = report.to_text()
    for section in (
        "Average treatment effect",
        "Effect on the targeted",
        "Policy values",
        "The rule minus each baseline",
        "Value at stake",
        "Qini",
    ):
        assert section in text
    with pytest.raises(ValueError, match="objective"):
        impact_report(
            config,
            action=d.action,
            propensity=d.propensity,
            outcomes={"spend": y},
            policy_action=d.policy_action,
        )
    with pytest.raises(ValueError, match="propensity"):
        impact_report(
            config,
            action=d.action,
            propensity=d.propensity * 0,
            outcomes={"visit": y},
            policy_action=d.policy_action,
        )
    with pytest.raises(ValueError, match="policy_action"):
        impact_report(
            config,
            action=d.action,
            propensity=d.propensity,
            outcomes={"visit": y},
            policy_action=d.policy_action[:5],
        )
    with pytest.raises(TypeError, match="action"):
        impact_report(
            config,
            action=d.action.astype(float),
            propensity=d.propensity,
            outcomes={"visit": y},
            policy_action=d.policy_action,
        )
    no_model = impact_report(
        config,
        action=d.action,
        propensity=d.propensity,
        outcomes={"visit": y},
        policy_action=d.policy_action,
        n_bootstrap=20,
    )
    assert not no_model.losses and {v.estimator for v in no_model.policy_values} == {"ips", "snips"}


# ------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def hillstrom_report():
    return hillstrom_impact(n_bootstrap=100, qini_resamples=20)


def test_hillstrom_report_reproduces_the_direct_difference_in_means(hillstrom_report):
    data = load_hillstrom()
    _, _, test_rows = stratified_split(hillstrom_strata(data), (0.6, 0.2, 0.2), seed=0)
    for population, rows in (("all customers", slice(None)), ("test split", test_rows)):
        arm = data.treatment[rows]
        for effect in (
            e
            for e in hillstrom_report.ate_all + hillstrom_report.ate_test
            if e.population == population
        ):
            y = getattr(data, effect.outcome)[rows].astype(np.float64)
            t = data.treatments.index(effect.treatment)
            assert effect.estimate == pytest.approx(
                y[arm == t].mean() - y[arm == 0].mean(), abs=1e-12
            )
            assert effect.n_treated == int(np.sum(arm == t))
    assert len(hillstrom_report.ate_all) == 6 and hillstrom_report.n_all == 64_000
    mens_visit = next(
        e for e in hillstrom_report.ate_all if e.treatment == MENS and e.outcome == "visit"
    )
    # The published experiment: the men's e-mail lifted visits by about 7.7 points.
    assert mens_visit.estimate == pytest.approx(0.0766, abs=5e-4) and mens_visit.low > 0
    impact = hillstrom_report.impact
    assert impact.n == hillstrom_report.n_test == len(test_rows)
    assert [(e.estimate, e.low) for e in impact.ate] == [
        (e.estimate, e.low) for e in hillstrom_report.ate_test
    ]
    assert {(q.treatment, q.outcome) for q in impact.qini} == {
        (t, o) for t in (MENS, WOMENS) for o in ("visit", "conversion", "spend")
    }
    assert len(hillstrom_report.calibration) == 3
    assert "the experiment's own effects" in hillstrom_report.to_text()


def test_plots_are_written(hillstrom_report, tmp_path):
    bands = [b for b in hillstrom_report.qini_bands if b.outcome == "visit"]
    path = plot_qini(bands, tmp_path / "q.png", title="Qini $ test")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    path = plot_segment_effects(hillstrom_report.segments, tmp_path / "s.png", outcome="spend")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="bands"):
        plot_qini([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="outcome"):
        plot_segment_effects(hillstrom_report.segments, tmp_path / "x.png", outcome="clicks")


def test_qini_band_brackets_the_model_curve():
    rng = np.random.default_rng(5)
    n = 4000
    uplift = rng.normal(size=n)
    treated = rng.random(n) < 0.5
    y = (rng.random(n) < 0.1 + 0.05 * treated * (uplift > 0)).astype(float)
    band = qini_band(uplift, y, treated, treatment="t", outcome="visit", n_resamples=50, grid=21)
    model, low, high = map(np.array, (band.model, band.model_low, band.model_high))
    assert len(band.fraction) == 21 and band.fraction[0] == 0.0 and band.fraction[-1] == 1.0
    assert np.all(low[1:] <= model[1:] + 1e-9) and np.all(model[1:] <= high[1:] + 1e-9)
    # Targeting the units that respond beats the random line in the middle of the curve.
    assert model[10] > band.random_high[10]


# ----------------------------------------------------------------------- decision logs


@pytest.fixture(scope="module")
def exported_logs(tmp_path_factory):
    """A real decision log (SQLite), with feedback, exported to Parquet by the real
    exporter, whose annotate hook adds the rule's choice and the model's predictions."""
    from nudgeserve.serve.decisions import (
        DecisionLog,
        DecisionRecord,
        FeedbackEvent,
        export_parquet,
    )

    config = InterventionConfig(
        costs={MENS: 0.03, WOMENS: 0.03},
        holdout_share=0.25,
        explore_share=0.35,
        salt="logs",
        daily_caps={WOMENS: 200},
    )
    rng, x, probs, potential, predicted = synthetic_world(3000, SEED + 1)
    ledger = BudgetLedger.from_config(config, clock=lambda: 1.7e9)
    d, y = run_rule(config, probs, predicted, potential, rng, ledger=ledger)
    folder = tmp_path_factory.mktemp("logs")
    log = DecisionLog(str(folder / "decisions.db"))
    records, annotations, events = [], {}, []
    for i in range(len(d)):
        # Half the decisions list their candidates in another order.
        order = TREATMENTS if i % 2 else (WOMENS, "No E-Mail", MENS)
        idx = [TREATMENTS.index(c) for c in order]
        did = f"d{i}"
        records.append(
            DecisionRecord(
                decision_id=did,
                time=1.7e9 + i,
                unit_id=str(i),
                experiment="interventions",
                variant=REASONS[d.reason[i]],
                model_version="test",
                policy="intervention",
                candidates=list(order),
                actions=[TREATMENTS[d.action[i]]],
                scores=[float(d.expected_net_value[i])],
                propensities=[float(d.propensity[i])],
                features=[float(x[i])],
            )
        )
        annotations[did] = (
            [float(d.policy_action[i] == j) for j in idx],
            [float(predicted[i, j]) for j in idx],
        )
        if y[i] > 0:
            events.append(
                FeedbackEvent(decision_id=did, event_id="visit", kind="visit", time=1.7e9 + i + 5)
            )
    log.append_many(records)
    log.record_feedback_many(events)
    log.close()

    def annotate(chunk):
        return {
            "eval_probs": [annotations[r.decision_id][0] for r in chunk],
            "reward_hat_visit": [annotations[r.decision_id][1] for r in chunk],
        }

    path = folder / "joined.parquet"
    export_parquet(str(folder / "decisions.db"), str(path), reward_kind="visit", annotate=annotate)
    direct = impact_report(
        config,
        action=d.action,
        propensity=d.propensity,
        outcomes={"visit": y},
        policy_action=d.policy_action,
        predicted={"visit": predicted},
        randomized=np.isin(np.array(d.reasons()), ["holdout", "explore"]),
        n_bootstrap=50,
        qini_resamples=10,
    )
    return config, path, direct, d


def test_impact_from_exported_logs_matches_the_arrays(exported_logs):
    config, path, direct, d = exported_logs
    report = impact_from_logs([path], config, n_bootstrap=50, qini_resamples=10)
    assert isinstance(report, ImpactReport)
    assert report.n == direct.n and report.n_randomized == direct.n_randomized
    for mine, theirs in ((report.ate, direct.ate), (report.att, direct.att)):
        assert [(e.treatment, e.outcome) for e in mine] == [
            (e.treatment, e.outcome) for e in theirs
        ]
        np.testing.assert_allclose(
            [e.estimate for e in mine], [e.estimate for e in theirs], atol=1e-12
        )
    np.testing.assert_allclose(
        [v.estimate for v in report.policy_values],
        [v.estimate for v in direct.policy_values],
        rtol=1e-9,
    )
    assert any("column 'variant'" in note for note in report.notes)
    assert "budget_exhausted" in set(d.reasons())
    # Without the reason column the randomised rows are recomputed from unit_id.
    import pyarrow.parquet as pq

    table = pq.read_table(path).drop_columns(["variant"])
    recomputed = impact_from_logs(table, config, n_bootstrap=50, qini_resamples=10)
    assert recomputed.n_randomized == direct.n_randomized
    assert [e.estimate for e in recomputed.ate] == pytest.approx([e.estimate for e in direct.ate])
    with pytest.raises(ValueError, match="eval_probs"):
        impact_from_logs(table.drop_columns(["eval_probs"]), config)


def test_cli_logs_writes_report_plots_and_json(exported_logs, tmp_path, capsys):
    config, path, direct, _ = exported_logs
    code = main(
        [
            "impact",
            "logs",
            str(path),
            "--cost",
            f"{MENS}=0.03",
            "--cost",
            f"{WOMENS}=0.03",
            "--holdout-share",
            "0.25",
            "--explore-share",
            "0.35",
            "--salt",
            "logs",
            "--n-bootstrap",
            "30",
            "--qini-resamples",
            "5",
            "--plots",
            str(tmp_path / "plots"),
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Average treatment effect" in out
    assert (tmp_path / "plots" / "qini_visit.png").read_bytes()[:8] == PNG
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["n"] == direct.n and len(saved["ate"]) == len(direct.ate)
    code = main(["impact", "logs", str(path), "--holdout-share", "1.5"])
    assert code == 2 and "holdout_share" in capsys.readouterr().err
    # The same rule as a YAML file.
    yaml_config = tmp_path / "rule.yaml"
    yaml_config.write_text(
        "costs: {Mens E-Mail: 0.03, Womens E-Mail: 0.03}\nholdout_share: 0.25\n"
        "explore_share: 0.35\nsalt: logs\n"
    )
    code = main(
        [
            "impact",
            "logs",
            str(path),
            "--config",
            str(yaml_config),
            "--n-bootstrap",
            "30",
            "--qini-resamples",
            "5",
            "--json",
            str(tmp_path / "y.json"),
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "y.json").read_text())["ate"] == saved["ate"]
    yaml_config.write_text("holdout_share: 3\n")
    code = main(["impact", "logs", str(path), "--config", str(yaml_config)])
    assert code == 2 and "holdout_share" in capsys.readouterr().err


def test_cli_hillstrom_writes_six_plots(tmp_path, capsys):
    code = main(
        [
            "impact",
            "hillstrom",
            "--n-bootstrap",
            "30",
            "--qini-resamples",
            "5",
            "--plots",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "all customers  Mens E-Mail    visit       0.0766" in out
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == sorted(
        f"{k}_{o}.png" for k in ("qini", "segments") for o in ("visit", "conversion", "spend")
    )
    assert all(p.stat().st_size > 10_000 for p in tmp_path.glob("*.png"))
