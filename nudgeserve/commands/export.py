"""``nudgeserve export``: joined decisions + outcomes from the decision log to Parquet."""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HELP = "export logged decisions joined with their outcomes to Parquet (one row per slot)"


def parse_time(text: str) -> float:
    """Epoch seconds from ``1700000000``, ``2026-01-31``, ``2026-01-31T12:00:00+02:00``,
    or ``-7d`` / ``-36h`` / ``-90m`` (relative to now). Times without a zone are UTC."""
    s = text.strip()
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    if s.startswith("-") and s[-1:] in units:
        try:
            return time.time() - float(s[1:-1]) * units[s[-1]]
        except ValueError:
            pass
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
        raise ValueError(f"{text!r} is not a finite time")
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{text!r} is not epoch seconds, an ISO-8601 time or -N[dhms]") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def load_function(spec: str):
    """The callable named ``package.module:function``."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} must look like package.module:function")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return fn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        required=True,
        type=Path,
        help="the decision log's SQLite file (the server may be running)",
    )
    parser.add_argument("--out", required=True, type=Path, help="Parquet file to write")
    parser.add_argument(
        "--since",
        default=None,
        help="first decision time: epoch seconds, ISO-8601 (UTC when no zone) or relative like -7d",
    )
    parser.add_argument(
        "--until",
        default=None,
        help="decisions before this time only (same formats); use the "
        "late window, e.g. -7d, to export only settled decisions",
    )
    parser.add_argument(
        "--reward",
        default=None,
        metavar="KIND",
        help="outcome kind copied into the `reward` column the evaluator reads (default: click)",
    )
    parser.add_argument(
        "--annotate",
        default=None,
        metavar="MODULE:FUNCTION",
        help="function adding per-row columns such as eval_probs and "
        "reward_hat from the logged candidates and features",
    )
    parser.add_argument(
        "--outcome",
        action="append",
        default=None,
        metavar="KIND",
        help="reward column to include even when no event has it "
        "(repeatable; default: click, visit, conversion, spend)",
    )


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from nudgeserve.serve.decisions import OUTCOME_KINDS, export_parquet

    try:
        since = None if args.since is None else parse_time(args.since)
        until = None if args.until is None else parse_time(args.until)
    except ValueError as exc:
        print(f"error: --since/--until: {exc}", file=sys.stderr)
        return 2
    if not args.db.is_file():
        print(f"error: --db: no decision log at {args.db}", file=sys.stderr)
        return 2
    annotate = None
    if args.annotate:
        try:
            annotate = load_function(args.annotate)
        except (ValueError, ImportError, AttributeError) as exc:
            print(f"error: --annotate: {exc}", file=sys.stderr)
            return 2
    kinds = tuple(args.outcome) if args.outcome else OUTCOME_KINDS
    try:
        summary = export_parquet(
            args.db,
            args.out,
            since=since,
            until=until,
            outcome_kinds=kinds,
            reward_kind=args.reward,
            annotate=annotate,
        )
    except (ValueError, TypeError, OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    span = " ".join(
        f"{name} {datetime.fromtimestamp(t, UTC).isoformat()}"
        for name, t in (("since", summary.since), ("until", summary.until))
        if t is not None
    )
    print(
        f"wrote {summary.rows} rows ({summary.decisions} decisions, "
        f"{summary.joined_events} joined events, reward={summary.reward_kind}) "
        f"to {summary.path}" + (f" [{span}]" if span else "")
    )
    return 0
