"""``nudgeserve evaluate``: off-policy evaluation on the Open Bandit Dataset or joined logs.

``evaluate obd`` estimates a policy's click rate from one OBD log (``random`` or
``bts``): the other logged policy, whose on-policy click rate is then known and printed
beside the estimates, or our click model ranking greedily or by softmax. ``evaluate
parquet`` estimates the policy whose probabilities an export carries (``eval_probs``)
from joined decision logs, in one process or with Ray Data (``--ray``). ``evaluate logs``
reads the server's own decision log (SQLite), replays a candidate policy of a served
model over the logged decisions and estimates it; ``--export`` also writes those rows
as Parquet for ``evaluate parquet --ray``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from nudgeserve.commands._common import non_negative_int, positive_float, positive_int

HELP = "off-policy evaluation: estimate a policy's reward from logged decisions"

SOURCES = ("obd", "parquet", "logs")
LOG_POLICIES = ("greedy", "epsilon_greedy", "softmax")
OBD_POLICIES = ("bts", "random", "model-greedy", "model-softmax")


def _estimator_list(text: str) -> tuple[str, ...]:
    from nudgeserve.models.evaluation.ope import ESTIMATORS

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"estimators must be a comma-separated subset of {','.join(ESTIMATORS)}; got {text!r}"
        )
    return names


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--estimators",
        type=_estimator_list,
        default=None,
        help="comma-separated subset of ips,clipped_ips,snips,dm,dr,sndr (default: all "
        "that the inputs allow; dm/dr/sndr need a reward model)",
    )
    parser.add_argument(
        "--max-weight",
        type=positive_float,
        default=20.0,
        help="clipped IPS clips importance weights here (default 20)",
    )
    parser.add_argument(
        "--n-bootstrap",
        type=positive_int,
        default=1000,
        help="bootstrap replicates for the intervals (default 1000)",
    )
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="interval coverage (default 0.95)"
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the bootstrap (and of simulations; default 0)",
    )
    parser.add_argument(
        "--min-ess",
        type=float,
        default=100.0,
        help="warn when the effective sample size is below this (default 100)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the report as JSON here"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    obd = sub.add_parser(
        "obd",
        help="the Open Bandit Dataset logs shipped with nudgeserve",
        description="Estimate a policy's click rate from an Open Bandit Dataset log.",
    )
    obd.add_argument(
        "--logs",
        choices=("random", "bts"),
        default="random",
        help="the logged policy whose data is used (default random)",
    )
    obd.add_argument(
        "--campaign",
        choices=("all", "men", "women"),
        default="all",
        help="OBD campaign (default all)",
    )
    obd.add_argument(
        "--policy",
        choices=OBD_POLICIES,
        default="bts",
        help="the policy to evaluate (default bts: its true click rate is known from its own logs)",
    )
    obd.add_argument(
        "--temperature",
        type=positive_float,
        default=0.5,
        help="model-softmax: softmax temperature on the click model's logits (default 0.5)",
    )
    obd.add_argument(
        "--bts-dist",
        choices=("empirical", "simulated"),
        default="empirical",
        help="how the bts policy's action distribution is obtained: empirical "
        "= each item's share of each slot in the bts log (default); "
        "simulated = Monte-Carlo Bernoulli Thompson sampling as obp does, "
        "from Beta(1 + clicks, 1 + non-clicks) of the bts log per item, "
        "or from --bts-prior",
    )
    obd.add_argument(
        "--bts-prior",
        type=Path,
        default=None,
        metavar="PATH",
        help="with --bts-dist simulated: a YAML/JSON file of per-campaign Beta "
        "parameters {campaign: {alpha: [...], beta: [...]}} (the layout of "
        "obp's policy/conf/prior_bts.yaml) used instead of the bts log",
    )
    obd.add_argument(
        "--n-sim",
        type=positive_int,
        default=100_000,
        help="Thompson-sampling slates simulated for --bts-dist simulated",
    )
    obd.add_argument(
        "--model",
        type=Path,
        default=None,
        help="click-model checkpoint (default: the shipped one for campaign "
        "all; other campaigns train one in-process, a few seconds)",
    )
    obd.add_argument(
        "--no-model",
        action="store_true",
        help="skip the click model (only ips, clipped_ips, snips)",
    )
    obd.add_argument(
        "--rows",
        choices=("auto", "all", "heldout"),
        default="auto",
        help="rows to evaluate on; heldout = those the click model did not "
        "train on. auto: heldout for model-* policies on the logs the "
        "model trained on, else all",
    )
    obd.add_argument("--device", default="auto", help="torch device for the click model")
    _common(obd)

    parquet = sub.add_parser(
        "parquet",
        help="joined decision logs exported by `nudgeserve export`",
        description="Estimate the policy whose probabilities (eval_probs) joined decision "
        "logs carry.",
    )
    parquet.add_argument("paths", nargs="+", type=Path, help="Parquet files or directories of them")
    parquet.add_argument(
        "--reward-column", default="reward", help="column read as the reward (default reward)"
    )
    parquet.add_argument(
        "--ray", action="store_true", help="evaluate with Ray Data (reads and maps in parallel)"
    )
    parquet.add_argument(
        "--ray-address", default=None, help="Ray cluster to connect to (default: start a local Ray)"
    )
    parquet.add_argument(
        "--ray-temp-dir",
        type=Path,
        default=None,
        help="temp dir of a local Ray (default Ray's own)",
    )
    parquet.add_argument(
        "--batch-rows",
        type=positive_int,
        default=65_536,
        help="rows per Ray Data batch (default 65536)",
    )
    _common(parquet)

    logs = sub.add_parser(
        "logs",
        help="the server's own decision log (SQLite), replaying a policy of a served model",
        description="Estimate what a candidate policy of a served model would have earned "
        "on the decisions the server logged (off-policy, from the logged slot propensities).",
    )
    logs.add_argument("--db", required=True, type=Path, help="the decision log's SQLite file")
    logs.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the server's config file (default: $NUDGESERVE_CONFIG, else the built-in "
        "defaults): which use cases and checkpoints exist",
    )
    logs.add_argument("--use-case", default="obd", help="the use case whose decisions to use")
    logs.add_argument(
        "--checkpoint",
        default=None,
        help="the model that replays the policy (default: the use case's); only decisions "
        "this checkpoint made are used",
    )
    logs.add_argument(
        "--policy",
        choices=LOG_POLICIES,
        default="greedy",
        help="the candidate policy: greedy (the k best scores), epsilon_greedy "
        "(--epsilon), softmax (a Plackett-Luce slate at --temperature, k <= 3)",
    )
    logs.add_argument("--epsilon", type=float, default=0.1, help="epsilon_greedy's epsilon")
    logs.add_argument(
        "--temperature", type=positive_float, default=1.0, help="softmax's temperature"
    )
    logs.add_argument(
        "--reward",
        default=None,
        metavar="KIND",
        help="the outcome kind that is the reward (default: the use case's learning.reward)",
    )
    logs.add_argument("--experiment", default=None, help="only this experiment's decisions")
    logs.add_argument(
        "--variant", default=None, help="only this arm's decisions (with --experiment)"
    )
    logs.add_argument(
        "--since", default=None, help="first decision time (as `nudgeserve export --since`)"
    )
    logs.add_argument("--until", default=None, help="decisions before this time only")
    logs.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the evaluation rows (decision_id, action, position, reward, "
        "propensity, eval_probs, reward_hat) as Parquet for `evaluate parquet [--ray]`",
    )
    _common(logs)


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.confidence < 1.0:
        print(
            f"nudgeserve evaluate: error: --confidence must be in (0, 1), got {args.confidence}",
            file=sys.stderr,
        )
        return 2
    try:
        runner = {"obd": run_obd, "parquet": run_parquet, "logs": run_logs}[args.source]
        report = runner(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"nudgeserve evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json is not None:
        import msgspec

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2))
        print(f"\nreport written to {args.json}")
    return 0


# ------------------------------------------------------------------------------- OBD


def _obd_model(args: argparse.Namespace, campaign: str) -> Any:
    """(LoadedModel, where it came from) for ``campaign``."""
    from nudgeserve.models import LoadedModel, default_checkpoint, load_checkpoint

    if args.model is not None:
        loaded = load_checkpoint(args.model, expected_kind="obd_click")
        if loaded.spec.campaign != campaign:
            raise ValueError(
                f"--model {args.model} was trained for campaign "
                f"{loaded.spec.campaign!r}, not {campaign!r}"
            )
        return loaded, str(args.model)
    shipped = default_checkpoint("obd")
    if shipped.is_file():
        loaded = load_checkpoint(shipped, expected_kind="obd_click")
        if loaded.spec.campaign == campaign:
            return loaded, f"shipped checkpoint {shipped.name}"
    from nudgeserve.models.learn.training import ObdTrainConfig, train_obd

    print(
        f"training a click model for campaign {campaign} (no checkpoint for it) ...",
        file=sys.stderr,
        flush=True,
    )
    result = train_obd(
        ObdTrainConfig(
            campaign=campaign, progress=False, bootstrap=50, seed=args.seed, device=args.device
        )
    )
    return (
        LoadedModel(
            module=result.module,
            metadata=result.metadata,
            path=Path(f"<trained in process for {campaign}>"),
        ),
        "trained in process (train_obd, default settings)",
    )


def _read_bts_prior(path: Path, campaign: str, n_items: int) -> tuple[Any, Any]:
    """(alpha, beta) float64[n_items] of ``campaign`` from an obp-style prior file."""
    import numpy as np
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"--bts-prior {path}: cannot read it: {exc}") from None
    try:
        alpha = np.asarray(data[campaign]["alpha"], dtype=np.float64)
        beta = np.asarray(data[campaign]["beta"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"--bts-prior {path}: needs {campaign}: {{alpha: [...], beta: [...]}}}} with numbers"
        ) from None
    if alpha.shape != (n_items,) or beta.shape != (n_items,):
        raise ValueError(
            f"--bts-prior {path}: campaign {campaign} needs {n_items} alphas "
            f"and betas, got {alpha.shape[0]} and {beta.shape[0]}"
        )
    return alpha, beta


def _model_rows_trained(loaded: Any, logs: str, campaign: str) -> int:
    """How many of the time-sorted ``logs`` rows the model trained on (0 if other data)."""
    training = loaded.metadata.training
    if not training.data:
        return 0
    source = Path(training.data[0].path).as_posix()
    if source.endswith(f"obd/{logs}/{campaign}/{campaign}.csv.gz"):
        return int(training.train_rows)
    return 0


def run_obd(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from nudgeserve.models import ObdScorer, load_obd
    from nudgeserve.models.evaluation import ope
    from nudgeserve.models.policies import slates

    log = load_obd(args.logs, args.campaign)
    n_items, n_pos = log.n_items, 3
    notes: list[str] = []
    model_policy = args.policy.startswith("model-")
    if model_policy and args.no_model:
        raise ValueError(f"--policy {args.policy} needs the click model; drop --no-model")
    wanted = args.estimators
    needs_model = model_policy or (
        not args.no_model and (wanted is None or bool(set(wanted) & ope.REQUIRES_REWARD_MODEL))
    )
    if args.no_model and wanted and set(wanted) & ope.REQUIRES_REWARD_MODEL:
        raise ValueError("dm, dr and sndr need the click model; drop --no-model")

    loaded = scorer = None
    trained_rows = 0
    if needs_model:
        loaded, model_source = _obd_model(args, args.campaign)
        scorer = ObdScorer(loaded, device=args.device)
        trained_rows = _model_rows_trained(loaded, args.logs, args.campaign)
        notes.append(f"click model: {model_source}")

    rows = args.rows
    if rows == "auto":
        rows = "heldout" if (model_policy and trained_rows) else "all"
    if rows == "heldout":
        if not trained_rows:
            raise ValueError(
                f"--rows heldout: the click model did not train on the "
                f"{args.logs}/{args.campaign} log, so every row is held out; "
                "use --rows all"
            )
        log = log.take(slice(trained_rows, None))
        notes.append(
            f"rows: the {len(log)} latest rows of {args.logs}/{args.campaign}, "
            f"after the {trained_rows} the click model trained on"
        )
    else:
        notes.append(f"rows: all {len(log)} rows of {args.logs}/{args.campaign}")
        if trained_rows:
            notes.append(
                f"the click model trained on {trained_rows} of these rows: its "
                "dm/dr/sndr terms are in-sample"
            )

    n = len(log)
    predictions = None
    if scorer is not None:
        # float32[n, P, A] click probabilities -> float64[n, A, P] like action_dist.
        probs = scorer.predict(scorer.featurizer.transform(log.user_features, log.affinity))
        predictions = np.ascontiguousarray(np.transpose(probs, (0, 2, 1)), dtype=np.float64)

    truth = None
    if args.policy == "random":
        dist = np.broadcast_to(np.full((n_items, n_pos), 1.0 / n_items), (n, n_items, n_pos))
        policy_text = f"uniform random: every item with probability 1/{n_items} per slot"
    elif args.policy == "bts":
        bts = load_obd("bts", args.campaign)
        if args.bts_dist == "simulated" and args.bts_prior is not None:
            alpha, beta = _read_bts_prior(args.bts_prior, args.campaign, n_items)
            zeros = np.zeros(n_items)
            per_item = slates.bernoulli_ts_dist(
                zeros,
                zeros,
                n_pos,
                n_sim=args.n_sim,
                seed=args.seed,
                prior_alpha=alpha,
                prior_beta=beta,
            )
            policy_text = (
                f"Bernoulli Thompson sampling, action distribution from {args.n_sim} "
                f"simulated slates with the Beta(alpha, beta) per item of {args.bts_prior} "
                "(obp's compute_batch_action_dist)"
            )
        elif args.bts_dist == "simulated":
            clicks = np.bincount(bts.item_id, weights=bts.click, minlength=n_items)
            shown = np.bincount(bts.item_id, minlength=n_items).astype(np.float64)
            per_item = slates.bernoulli_ts_dist(
                clicks, shown - clicks, n_pos, n_sim=args.n_sim, seed=args.seed
            )
            policy_text = (
                f"Bernoulli Thompson sampling, action distribution from {args.n_sim} "
                f"simulated slates with Beta(1 + clicks, 1 + non-clicks) per item, counted "
                f"over the {len(bts)} bts/{args.campaign} impressions (obp's "
                "compute_batch_action_dist; the production policy's own posterior is not "
                "in the log, so this only approximates it)"
            )
        else:
            per_item = slates.empirical_slot_dist(bts.item_id, bts.position, n_items, n_pos)
            policy_text = (
                f"bts; action distribution = each item's share of each slot in "
                f"the {len(bts)} bts/{args.campaign} impressions (the policy's "
                "time-averaged slot marginals)"
            )
        dist = np.broadcast_to(per_item, (n, n_items, n_pos))
    else:
        assert predictions is not None
        p0 = np.clip(predictions[:, :, 0], 1e-7, 1 - 1e-7)
        logits = np.log(p0) - np.log1p(-p0)
        if args.policy == "model-greedy":
            dist = slates.greedy_slate_dist(logits, n_pos)
            policy_text = "click model, greedy: the 3 items of highest predicted CTR in order"
        else:
            dist = slates.plackett_luce_dist(logits, n_pos, args.temperature)
            policy_text = (
                f"click model, softmax slate (Plackett-Luce) on the predicted "
                f"click logits at temperature {args.temperature:g}; exact slot "
                "marginals"
            )
    if args.policy in ("bts", "random"):
        other = load_obd(args.policy, args.campaign)
        truth = ope.on_policy_value(
            other.click.astype(np.float64),
            n_bootstrap=args.n_bootstrap,
            confidence=args.confidence,
            seed=args.seed,
        )
    results = ope.evaluate(
        log.item_id,
        log.click.astype(np.float64),
        log.propensity,
        dist,
        positions=log.position,
        reward_hat=predictions if (predictions is not None and not args.no_model) else None,
        estimators=wanted,
        max_weight=args.max_weight,
        n_bootstrap=args.n_bootstrap,
        confidence=args.confidence,
        seed=args.seed,
        min_ess=args.min_ess,
    )
    logged = ope.on_policy_value(
        log.click.astype(np.float64),
        n_bootstrap=args.n_bootstrap,
        confidence=args.confidence,
        seed=args.seed,
    )
    if "dm" in results:
        notes.append("dm's interval covers the sampling of rows only, not the click model's error")
    return {
        "source": "obd",
        "logs": f"{args.logs}/{args.campaign}",
        "rows": n,
        "policy": args.policy,
        "policy_description": policy_text,
        "truth": truth,
        "truth_description": (
            f"on-policy click rate of the {args.policy}/{args.campaign} log"
            if truth is not None
            else None
        ),
        "logging_policy_value": logged,
        "results": results,
        "notes": notes,
        "settings": {
            "max_weight": args.max_weight,
            "n_bootstrap": args.n_bootstrap,
            "confidence": args.confidence,
            "seed": args.seed,
        },
    }


# ---------------------------------------------------------------------------- Parquet


def run_parquet(args: argparse.Namespace) -> dict[str, Any]:
    from nudgeserve.models.evaluation import ope

    notes = []
    if args.ray:
        from nudgeserve.serve.ray.ope_data import evaluate_parquet_ray, ray_for_evaluation

        with ray_for_evaluation(address=args.ray_address, temp_dir=args.ray_temp_dir):
            results = evaluate_parquet_ray(
                args.paths,
                args.estimators,
                max_weight=args.max_weight,
                n_bootstrap=args.n_bootstrap,
                confidence=args.confidence,
                seed=args.seed,
                min_ess=args.min_ess,
                reward_column=args.reward_column,
                batch_rows=args.batch_rows,
            )
        logged = results.pop("on_policy")
        notes.append("computed with Ray Data (map_batches over the Parquet files)")
    else:
        logs = ope.read_logs_parquet(args.paths, reward_column=args.reward_column)
        with_model = logs.reward_hat is not None and (
            args.estimators is None or bool(set(args.estimators) & ope.REQUIRES_REWARD_MODEL)
        )
        stats = ope.logs_statistics(
            logs,
            with_reward_model=with_model,
            max_weight=args.max_weight,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
        )
        results = ope.summarize(
            stats, args.estimators, confidence=args.confidence, min_ess=args.min_ess
        )
        logged = ope.logging_policy_value(stats, confidence=args.confidence)
        notes.append("computed in one process")
    notes.append("bootstrap resamples whole decisions (rows keyed by decision_id)")
    return {
        "source": "parquet",
        "logs": ", ".join(str(p) for p in args.paths),
        "rows": logged.n,
        "policy": "eval_probs",
        "policy_description": "the policy whose probabilities the export's eval_probs hold",
        "truth": None,
        "truth_description": None,
        "logging_policy_value": logged,
        "results": results,
        "notes": notes,
        "settings": {
            "max_weight": args.max_weight,
            "n_bootstrap": args.n_bootstrap,
            "confidence": args.confidence,
            "seed": args.seed,
            "reward_column": args.reward_column,
        },
    }


# ---------------------------------------------------------------------- own decision log


def run_logs(args: argparse.Namespace) -> dict[str, Any]:
    import msgspec

    from nudgeserve.commands.export import parse_time
    from nudgeserve.models.evaluation import ope
    from nudgeserve.serve import _env
    from nudgeserve.serve.config import default_config, load_config
    from nudgeserve.serve.decisions import read_decisions
    from nudgeserve.serve.engine.reports import ope_logs
    from nudgeserve.serve.engine.usecases import build_engine

    path = args.config or _env.config_path()
    config = load_config(path).app if path is not None else default_config()
    try:
        settings = config.use_case(args.use_case)
    except KeyError:
        known = ", ".join(u.name for u in config.use_cases)
        raise ValueError(f"--use-case {args.use_case!r} is not configured ({known})") from None
    if args.checkpoint is not None:
        settings = msgspec.structs.replace(settings, checkpoint=args.checkpoint)
    if args.variant is not None and args.experiment is None:
        raise ValueError("--variant needs --experiment")
    if not 0.0 <= args.epsilon <= 1.0:
        raise ValueError(f"--epsilon must be in [0, 1], got {args.epsilon}")
    reward = args.reward or settings.learning.reward
    since = None if args.since is None else parse_time(args.since)
    until = None if args.until is None else parse_time(args.until)
    logged = read_decisions(
        args.db, use_case=settings.name, experiment=args.experiment, since=since, until=until
    )
    if args.variant is not None:
        logged.records = [r for r in logged.records if r.variant == args.variant]
    engine = build_engine(settings)
    engine.load(device="cpu", warm=False)
    params = {"epsilon": args.epsilon} if args.policy == "epsilon_greedy" else {}
    if args.policy == "softmax":
        params = {"temperature": args.temperature}
    # The OBD click model predicts the reward (a click) of every candidate; Hillstrom's
    # scores are net gains in another unit, so no reward model there.
    with_model = engine.info.kind == "obd" and reward == "click"
    replayed = ope_logs(logged, engine, args.policy, reward, with_reward_model=with_model, **params)
    if len(replayed.logs) == 0:
        raise ValueError(
            f"no decisions of use case {settings.name!r} made by checkpoint "
            f"{engine.info.checkpoint_id} in {args.db} (with the filters given; "
            f"{replayed.skipped} decisions of other checkpoints)"
        )
    notes = [
        f"replayed with checkpoint {engine.info.checkpoint_id}; {replayed.decisions} decisions "
        f"used, {replayed.skipped} of other checkpoints skipped",
        "rows are decision slots; propensities are the logged slot marginals",
        "bootstrap resamples whole decisions (rows keyed by decision_id)",
    ]
    if args.export is not None:
        import pyarrow.parquet as pq

        args.export.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(ope.logs_to_table(replayed.logs), args.export)
        notes.append(f"evaluation rows written to {args.export}")
    estimators = args.estimators
    stats = ope.logs_statistics(
        replayed.logs,
        with_reward_model=with_model
        and (estimators is None or bool(set(estimators) & ope.REQUIRES_REWARD_MODEL)),
        max_weight=args.max_weight,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
    )
    results = ope.summarize(stats, estimators, confidence=args.confidence, min_ess=args.min_ess)
    described = {
        "greedy": "the model's k best-scoring candidates",
        "epsilon_greedy": f"greedy, or a uniformly random slate with probability {args.epsilon}",
        "softmax": f"a Plackett-Luce slate from softmax(score / {args.temperature})",
    }[args.policy]
    return {
        "source": "logs",
        "logs": str(args.db),
        "rows": stats.n,
        "policy": f"{settings.name}: {args.policy}",
        "policy_description": described,
        "truth": None,
        "truth_description": None,
        "logging_policy_value": ope.logging_policy_value(stats, confidence=args.confidence),
        "results": results,
        "notes": notes,
        "settings": {
            "reward": reward,
            "max_weight": args.max_weight,
            "n_bootstrap": args.n_bootstrap,
            "confidence": args.confidence,
            "seed": args.seed,
        },
    }


# ----------------------------------------------------------------------------- output


def _fmt(x: float, digits: int = 5) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table with numbered warnings."""
    results = report["results"]
    truth = report["truth"]
    confidence = next(iter(results.values())).confidence if results else 0.95
    level = f"{100 * confidence:g}% CI"
    lines = [
        f"logs: {report['logs']} ({report['rows']} rows)",
        f"policy: {report['policy']}: {report['policy_description']}",
    ]
    lines += [f"note: {n}" for n in report["notes"]]
    logged = report["logging_policy_value"]
    lines.append(
        f"logging policy's own reward on these rows: {_fmt(logged.estimate)} "
        f"[{_fmt(logged.ci_low)}, {_fmt(logged.ci_high)}]"
    )
    if truth is not None:
        lines.append(
            f"truth ({report['truth_description']}): {_fmt(truth.estimate)} "
            f"[{_fmt(truth.ci_low)}, {_fmt(truth.ci_high)}] over {truth.n} rows"
        )
    warnings: list[str] = []
    header = ["estimator", "estimate", level, "ESS", "max w", "warnings"]
    if truth is not None:
        header.insert(3, "rel. error")
    table = [header]
    for name, r in results.items():
        refs = []
        for w in r.warnings:
            if w not in warnings:
                warnings.append(w)
            refs.append(str(warnings.index(w) + 1))
        row = [
            name,
            _fmt(r.estimate),
            f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]",
            f"{r.ess:.1f}",
            f"{r.max_weight:.3g}",
            ",".join(refs) or "-",
        ]
        if truth is not None:
            rel = (r.estimate - truth.estimate) / truth.estimate if truth.estimate else math.nan
            row.insert(3, "nan" if not math.isfinite(rel) else f"{rel:+.1%}")
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines.append("")
    for k, row in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    if warnings:
        lines.append("")
        lines += [f"[{i}] {w}" for i, w in enumerate(warnings, 1)]
    return "\n".join(lines)
