"""``nudgeserve bench-kernels``: time each kernel backend here; optionally write the profile."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = "time every kernel backend on this machine; --write-profile makes import use the fastest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write-profile",
        action="store_true",
        help="write the fastest backend per op to the profile file",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="profile path (default: $NUDGESERVE_KERNEL_PROFILE or the user cache)",
    )
    parser.add_argument("--samples", type=int, default=9, help="timing samples per backend")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads the kernels may use (default: all cores)"
    )


def run(args: argparse.Namespace) -> int:
    if args.samples < 3:
        print("error: --samples must be at least 3", file=sys.stderr)
        return 2
    if os.environ.get("NUDGESERVE_KERNELS"):
        print(
            "note: NUDGESERVE_KERNELS is set and overrides any profile at import", file=sys.stderr
        )
    from nudgeserve import kernels
    from nudgeserve.kernels import _profile

    if args.threads is not None:
        kernels.set_num_threads(args.threads)

    def progress(msg: str) -> None:
        print(f"  timing {msg}", file=sys.stderr, flush=True)

    if args.write_profile:
        path, choices, timings = _profile.write_profile(args.profile, args.samples, progress)
    else:
        timings = _profile.measure(samples=args.samples, progress=progress)
        choices, path = _profile.choose(timings), None
    print(f"{'op':<28}{'backend':<10}{'median':>12}   chosen")
    for op, per in timings.items():
        for backend, seconds in sorted(per.items(), key=lambda kv: kv[1]):
            mark = "*" if choices.get(op) == backend else ""
            print(f"{op:<28}{backend:<10}{seconds * 1e6:>10.1f}us   {mark}")
    if path is not None:
        print(f"profile written to {path}")
    from nudgeserve.kernels._autotune import ENV_AUTOTUNE, cache_dir

    print(
        "note: without a profile the server chooses by itself: its warm-up times the "
        f"hot-path ops once per machine (about a second) and caches the fastest in "
        f"{cache_dir()} ({ENV_AUTOTUNE}=0 turns that off); a written profile takes "
        "precedence for every op it names, NUDGESERVE_KERNELS over both.",
        file=sys.stderr,
    )
    return 0
