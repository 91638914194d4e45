"""The ``nudgeserve`` command line.

Each subcommand lives in ``nudgeserve.commands.<module>``, which defines ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when
their command runs, so ``nudgeserve --help`` never starts Ray or imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nudgeserve import __version__

# (command name, module under nudgeserve.commands, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("run", "run", "start a local Ray and serve the decision and KServe v2 APIs"),
    ("train", "train", "train a model on the shipped real data (obd | hillstrom)"),
    ("bench-kernels", "bench_kernels", "time kernel backends; --write-profile picks one per op"),
    ("evaluate", "evaluate", "off-policy evaluation on OBD logs or exported decision logs"),
    ("export", "export", "export joined decisions and outcomes to Parquet"),
    ("impact", "impact", "causal impact of interventions (Hillstrom or exported logs)"),
    ("replay", "replay", "replay held-out Hillstrom customers through a running server"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nudgeserve",
        description="Real-time decision server for e-commerce.",
    )
    parser.add_argument("--version", action="version", version=f"nudgeserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added lazily (below) only for the command being run, so that
        # `nudgeserve --help` stays instant; `nudgeserve CMD --help` loads that module.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        parser.parse_args(argv or ["--help"])
        return 0
    known = {name: module for name, module, _ in COMMANDS}
    if argv[0] not in known:
        parser.parse_args(argv)  # argparse prints the error and the choices, exits 2
        return 2
    module = importlib.import_module(f"nudgeserve.commands.{known[argv[0]]}")
    sub = argparse.ArgumentParser(prog=f"nudgeserve {argv[0]}", description=module.HELP)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
