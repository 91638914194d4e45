"""``nudgeserve train obd|hillstrom``: train on the shipped real data, write a checkpoint.

The checkpoint is ``<out>/<dataset>.safetensors`` plus ``<out>/<dataset>.json``; the
exact command line is recorded in the metadata so the run can be repeated.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from nudgeserve.commands._common import non_negative_int, positive_int

HELP = "train a model on the shipped real data (obd | hillstrom)"

DATASETS = ("obd", "hillstrom")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="which model to train")
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="maximum epochs (early stopping may end sooner; default: obd 40, hillstrom 30)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto = CUDA when available, else CPU",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("checkpoints"),
        help="folder for <dataset>.safetensors and <dataset>.json (default ./checkpoints)",
    )
    parser.add_argument(
        "--bootstrap",
        type=positive_int,
        default=1000,
        help="bootstrap resamples for the evaluation intervals (default 1000)",
    )
    parser.add_argument(
        "--max-rows",
        type=positive_int,
        default=None,
        help="train on the first N rows only (quick runs)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _command_line(args: argparse.Namespace, epochs: int) -> str:
    parts = ["nudgeserve", "train", args.dataset, "--epochs", str(epochs), "--seed", str(args.seed)]
    if args.device != "auto":
        parts += ["--device", args.device]
    parts += ["--out", args.out.as_posix()]
    if args.bootstrap != 1000:
        parts += ["--bootstrap", str(args.bootstrap)]
    if args.max_rows is not None:
        parts += ["--max-rows", str(args.max_rows)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    # Imported here so `nudgeserve --help` never loads torch.
    from nudgeserve.models import save_checkpoint
    from nudgeserve.models.learn.training import (
        HillstromTrainConfig,
        ObdTrainConfig,
        train_hillstrom,
        train_obd,
    )

    config_type = ObdTrainConfig if args.dataset == "obd" else HillstromTrainConfig
    epochs = args.epochs if args.epochs is not None else config_type().epochs
    try:
        config = config_type(
            epochs=epochs,
            seed=args.seed,
            device=args.device,
            bootstrap=args.bootstrap,
            max_rows=args.max_rows,
            progress=not args.no_progress,
        )
        trainer = train_obd if args.dataset == "obd" else train_hillstrom
        result = trainer(config, command=_command_line(args, epochs))
    except ValueError as exc:
        print(f"nudgeserve train: error: {exc}", file=sys.stderr)
        return 2
    weights = save_checkpoint(result.module, result.metadata, args.out / args.dataset)
    info = result.metadata.training
    last = result.history[-1]
    best = result.history[info.best_epoch]
    print(
        f"\n{args.dataset}: {info.epochs_run} epochs on {info.device} in {info.seconds:.1f} s; "
        f"best epoch {info.best_epoch} (validation loss {best['val_loss']:.5f}; "
        f"last {last['val_loss']:.5f}); {info.train_rows} train / "
        f"{info.validation_rows} validation rows\n"
    )
    print(result.summary)
    print(f"\ncheckpoint: {weights} (+ {weights.with_suffix('.json').name})")
    return 0
