"""``nudgeserve impact``: causal impact of interventions.

``impact hillstrom`` reports on the Hillstrom e-mail experiment: the experiment's own
difference in means per e-mail (all customers and the held-out test split), and the
decision rule applied to the held-out customers with the shipped uplift ensemble: its
value against treating nobody, everybody or a random share (IPS / DR), the value lost to
missed and unnecessary e-mails, Qini against random rankings and the uplift intervals'
calibration. ``impact logs`` computes the same report from exported decision logs.
``impact train-ensemble`` trains the uplift ensemble the rule's intervals come from.
``--plots DIR`` writes PNG Qini curves and effects by segment.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from nudgeserve.commands._common import finite_float, non_negative_int, positive_int

HELP = "causal impact of interventions (Hillstrom or exported decision logs)"

HILLSTROM_EMAILS = ("Mens E-Mail", "Womens E-Mail")


def _name_value(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, finite_float(value)


def _name_count(text: str) -> tuple[str, int]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=COUNT, got {text!r}")
    return name, non_negative_int(value)


def _rule_arguments(parser: argparse.ArgumentParser, *, with_design: bool) -> None:
    rule = parser.add_argument_group("decision rule")
    rule.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="an InterventionConfig as YAML or JSON (replaces every rule flag below)",
    )
    rule.add_argument(
        "--objective",
        choices=("visit", "conversion", "spend"),
        default="visit",
        help="the outcome the rule values (default visit)",
    )
    rule.add_argument(
        "--value",
        type=finite_float,
        default=1.0,
        help="money per unit of the objective, e.g. per visit (default 1.0)",
    )
    rule.add_argument(
        "--cost",
        type=_name_value,
        action="append",
        default=None,
        metavar="TREATMENT=COST",
        help="cost per intervention, repeatable (default: 0.05 per e-mail)",
    )
    rule.add_argument(
        "--threshold", type=finite_float, default=0.0, help="net value to exceed (default 0)"
    )
    rule.add_argument(
        "--confidence",
        type=finite_float,
        default=0.8,
        help="act when P(net value > threshold) >= this, in [0.5, 1) (default 0.8)",
    )
    if with_design:
        rule.add_argument(
            "--treatments",
            default=",".join(("No E-Mail", *HILLSTROM_EMAILS)),
            help="comma-separated action names in model order (default the Hillstrom arms)",
        )
        rule.add_argument("--control", default="No E-Mail", help="the no-intervention action")
        rule.add_argument(
            "--holdout-share",
            type=finite_float,
            default=0.1,
            help="share of units the rule held out (default 0.1)",
        )
        rule.add_argument(
            "--explore-share",
            type=finite_float,
            default=0.0,
            help="share of units given a uniformly random action (default 0)",
        )
        rule.add_argument("--salt", default="intervention", help="the per-unit hash's salt")
        rule.add_argument(
            "--hash-seed", type=non_negative_int, default=0, help="the per-unit hash's seed"
        )
        rule.add_argument(
            "--daily-cap",
            type=_name_count,
            action="append",
            default=None,
            metavar="T=COUNT",
            help="interventions of treatment T allowed per day, repeatable",
        )


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("estimation and output")
    out.add_argument(
        "--n-bootstrap",
        type=positive_int,
        default=1000,
        help="bootstrap replicates for policy values, differences and losses (default 1000)",
    )
    out.add_argument(
        "--qini-resamples",
        type=positive_int,
        default=200,
        help="bootstrap resamples and random rankings for the Qini (default 200)",
    )
    out.add_argument("--seed", type=non_negative_int, default=0, help="bootstrap seed")
    out.add_argument(
        "--plots", type=Path, default=None, metavar="DIR", help="write PNG plots into DIR"
    )
    out.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the report as JSON"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    hill = sub.add_parser(
        "hillstrom",
        help="the Hillstrom e-mail experiment shipped with nudgeserve",
        description="The experiment's effects and the decision rule on held-out customers.",
    )
    _rule_arguments(hill, with_design=False)
    hill.add_argument(
        "--ensemble",
        type=Path,
        default=None,
        metavar="PATH",
        help="uplift ensemble checkpoint (default: the shipped one)",
    )
    hill.add_argument(
        "--calibration-groups",
        type=positive_int,
        default=10,
        help="groups per e-mail for the interval calibration (default 10: deciles)",
    )
    _output_arguments(hill)

    logs = sub.add_parser(
        "logs",
        help="exported decision logs (Parquet) of the intervention deployment",
        description="The impact report from `nudgeserve export` output.",
    )
    logs.add_argument("paths", nargs="+", type=Path, help="Parquet files or folders of them")
    _rule_arguments(logs, with_design=True)
    _output_arguments(logs)

    ens = sub.add_parser(
        "train-ensemble",
        help="train the bootstrap ensemble of uplift models behind the intervals",
        description="Train K uplift models on bootstrap resamples of the Hillstrom "
        "training split; fit and check the interval calibration.",
    )
    ens.add_argument("--members", type=positive_int, default=8, help="models (default 8)")
    ens.add_argument("--epochs", type=positive_int, default=30, help="maximum epochs (30)")
    ens.add_argument("--seed", type=non_negative_int, default=0, help="member k: seed + k")
    ens.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ens.add_argument(
        "--out",
        type=Path,
        default=Path("checkpoints"),
        help="folder for hillstrom_ensemble.safetensors / .json (default ./checkpoints)",
    )
    ens.add_argument("--max-rows", type=positive_int, default=None, help="first N rows only")
    ens.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _config(args: argparse.Namespace, *, with_design: bool) -> Any:
    import msgspec

    from nudgeserve.models.policies.intervention import InterventionConfig

    if args.config is not None:
        raw = args.config.read_bytes()
        if args.config.suffix in (".yaml", ".yml"):
            return msgspec.yaml.decode(raw, type=InterventionConfig)
        return msgspec.json.decode(raw, type=InterventionConfig)
    costs = dict(args.cost) if args.cost else dict.fromkeys(HILLSTROM_EMAILS, 0.05)
    settings: dict[str, Any] = {
        "objective": args.objective,
        "value_per_unit": args.value,
        "costs": costs,
        "threshold": args.threshold,
        "confidence": args.confidence,
    }
    if with_design:
        settings.update(
            treatments=tuple(t.strip() for t in args.treatments.split(",") if t.strip()),
            control=args.control,
            holdout_share=args.holdout_share,
            explore_share=args.explore_share,
            salt=args.salt,
            hash_seed=args.hash_seed,
            daily_caps=dict(args.daily_cap or ()),
        )
    return InterventionConfig(**settings)


def _write_json(path: Path, report: Any) -> None:
    import msgspec

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")


def _run_hillstrom(args: argparse.Namespace) -> int:
    from nudgeserve.models.evaluation.hillstrom_impact import hillstrom_impact
    from nudgeserve.models.learn.uplift_ensemble import load_uplift_ensemble

    config = _config(args, with_design=False)
    ensemble = load_uplift_ensemble(args.ensemble)
    report = hillstrom_impact(
        config,
        ensemble=ensemble,
        n_bootstrap=args.n_bootstrap,
        qini_resamples=args.qini_resamples,
        calibration_groups=args.calibration_groups,
        seed=args.seed,
    )
    print(report.to_text())
    if args.plots is not None:
        from nudgeserve.models.evaluation.plots import plot_qini, plot_segment_effects

        written = []
        for outcome in ("visit", "conversion", "spend"):
            bands = [b for b in report.qini_bands if b.outcome == outcome]
            written.append(
                plot_qini(
                    bands,
                    args.plots / f"qini_{outcome}.png",
                    title=f"Hillstrom, {report.n_test} held-out customers: targeting by "
                    f"predicted {outcome} uplift vs random",
                )
            )
            written.append(
                plot_segment_effects(
                    report.segments,
                    args.plots / f"segments_{outcome}.png",
                    outcome=outcome,
                    title=f"Hillstrom, {report.n_test} held-out customers: effect on {outcome} "
                    "by segment",
                )
            )
        print("\nplots: " + ", ".join(str(p) for p in written))
    if args.json is not None:
        _write_json(args.json, report)
        print(f"report: {args.json}")
    return 0


def _run_logs(args: argparse.Namespace) -> int:
    import numpy as np

    from nudgeserve.models.evaluation.impact_logs import impact_from_logs
    from nudgeserve.models.evaluation.qini import qini_band

    config = _config(args, with_design=True)
    report = impact_from_logs(
        [str(p) for p in args.paths],
        config,
        n_bootstrap=args.n_bootstrap,
        qini_resamples=args.qini_resamples,
        seed=args.seed,
        title=f"Causal impact from decision logs ({len(args.paths)} path(s))",
    )
    print(report.to_text())
    if args.plots is not None:
        from nudgeserve.models.evaluation.impact_logs import logs_arrays, read_decision_logs
        from nudgeserve.models.evaluation.plots import plot_qini

        arrays = logs_arrays(read_decision_logs([str(p) for p in args.paths]), config)
        written = []
        c = config.control_index
        for outcome, q in arrays.predicted.items():
            bands = []
            for t, name in enumerate(config.treatments):
                pair = arrays.randomized & ((arrays.action == t) | (arrays.action == c))
                treated = arrays.action[pair] == t
                if t == c or treated.sum() < 2 or (~treated).sum() < 2:
                    continue
                bands.append(
                    qini_band(
                        q[pair, t] - q[pair, c],
                        arrays.outcomes[outcome][pair],
                        treated,
                        treatment=name,
                        outcome=outcome,
                        n_resamples=args.qini_resamples,
                        seed=args.seed,
                    )
                )
            if bands:
                written.append(
                    plot_qini(
                        bands,
                        args.plots / f"qini_{outcome}.png",
                        title=f"randomised decisions ({int(np.sum(arrays.randomized))}): "
                        f"targeting by predicted {outcome} uplift vs random",
                    )
                )
        print("\nplots: " + (", ".join(str(p) for p in written) or "none (no randomised pairs)"))
    if args.json is not None:
        _write_json(args.json, report)
        print(f"report: {args.json}")
    return 0


def _ensemble_command(args: argparse.Namespace) -> str:
    parts = ["nudgeserve", "impact", "train-ensemble", "--members", str(args.members)]
    parts += ["--epochs", str(args.epochs), "--seed", str(args.seed)]
    if args.device != "auto":
        parts += ["--device", args.device]
    parts += ["--out", args.out.as_posix()]
    if args.max_rows is not None:
        parts += ["--max-rows", str(args.max_rows)]
    return shlex.join(parts)


def _run_train_ensemble(args: argparse.Namespace) -> int:
    from nudgeserve.models.learn.uplift_ensemble import DEFAULT_ENSEMBLE, save_uplift_ensemble
    from nudgeserve.models.learn.uplift_ensemble_training import (
        EnsembleTrainConfig,
        train_uplift_ensemble,
    )

    config = EnsembleTrainConfig(
        n_members=args.members,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        max_rows=args.max_rows,
        progress=not args.no_progress,
    )
    result = train_uplift_ensemble(config, command=_ensemble_command(args))
    weights = save_uplift_ensemble(result.members, result.metadata, args.out / DEFAULT_ENSEMBLE)
    print(result.summary)
    print(f"\nensemble: {weights} (+ {weights.with_suffix('.json').name})")
    return 0


def run(args: argparse.Namespace) -> int:
    import msgspec

    handlers = {
        "hillstrom": _run_hillstrom,
        "logs": _run_logs,
        "train-ensemble": _run_train_ensemble,
    }
    try:
        return handlers[args.source](args)
    except (ValueError, TypeError, OSError, msgspec.ValidationError) as exc:
        print(f"nudgeserve impact {args.source}: error: {exc}", file=sys.stderr)
        return 2
