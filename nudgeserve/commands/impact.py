"""``nudgeserve impact``: placeholder replaced below."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

HELP = "causal impact of interventions (Hillstrom or exported decision logs)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    ens = sub.add_parser("train-ensemble")
    ens.add_argument("--members", type=_positive_int, default=8)
    ens.add_argument("--epochs", type=_positive_int, default=30)
    ens.add_argument("--seed", type=_non_negative_int, default=0)
    ens.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ens.add_argument("--out", type=Path, default=Path("checkpoints"))
    ens.add_argument("--max-rows", type=_positive_int, default=None)
    ens.add_argument("--no-progress", action="store_true")


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
    from nudgeserve.models.uplift_uncertainty import (
        DEFAULT_ENSEMBLE,
        EnsembleTrainConfig,
        save_uplift_ensemble,
        train_uplift_ensemble,
    )

    try:
        config = EnsembleTrainConfig(
            n_members=args.members,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            max_rows=args.max_rows,
            progress=not args.no_progress,
        )
        result = train_uplift_ensemble(config, command=_ensemble_command(args))
    except ValueError as exc:
        print(f"nudgeserve impact train-ensemble: error: {exc}", file=sys.stderr)
        return 2
    weights = save_uplift_ensemble(result.members, result.metadata, args.out / DEFAULT_ENSEMBLE)
    print(result.summary)
    print(f"\nensemble: {weights} (+ {weights.with_suffix('.json').name})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.source == "train-ensemble":
        return _run_train_ensemble(args)
    return 2
