"""Forward-pass throughput of the shipped models: the ceiling for the server's throughput.

    python -m benchmarks.models [--batch-sizes 1,8,32,128,512,2048] [--threads N]
                                [--device cpu|cuda|all] [--quick]

For each device (CPU, and CUDA when present) and batch size it times, on real contexts
from the OBD sample (``random/all``, 80 items) and the Hillstrom data:

- ``ObdScorer.predict`` (the inference path: folded module, ``torch.inference_mode``)
  for one slot: ``B x 80`` candidates per call;
- the same plus featurization of the raw strings (``score``: what a replica runs);
- the training module's ``forward`` under ``torch.no_grad`` (baseline: every slot,
  item tower recomputed each call);
- ``HillstromScorer.predict`` (customers x 3 treatments: heads stacked into one matmul)
  against the training module's ``forward`` (one head after another).

Figures are medians (``benchmarks._timing.time_callable``); ratio = baseline median /
this case's median, both measured in this run.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks._timing import Case, time_callable
from nudgeserve.kernels import get_num_threads, set_num_threads
from nudgeserve.models import (
    HillstromScorer,
    ObdScorer,
    default_checkpoint,
    load_checkpoint,
    load_hillstrom,
    load_obd,
)

BATCH_SIZES = (1, 8, 32, 128, 512, 2048)


def _tile(array: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // array.shape[0])
    return np.concatenate([array] * reps)[:n]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def obd_cases(device: torch.device, batch_sizes: tuple[int, ...]) -> list[tuple[Case, int]]:
    """(case, candidates per call) for every batch size on ``device``."""
    loaded = load_checkpoint(default_checkpoint("obd"), expected_kind="obd_click")
    scorer = ObdScorer(loaded, device=device)
    log = load_obd("random", loaded.spec.campaign)
    module = loaded.module.to(device)
    cases = []
    for b in batch_sizes:
        users, affinity = _tile(log.user_features, b), _tile(log.affinity, b)
        features = scorer.featurizer.transform(users, affinity)
        user_t = torch.from_numpy(features.user_buckets).to(device)
        aff_t = torch.from_numpy(features.affinity).to(device)

        def training_forward(user_t=user_t, aff_t=aff_t) -> object:
            with torch.no_grad():
                out = module(user_t, aff_t)[:, 0].cpu()
            return out

        group = f"obd click model [{device.type}] B={b}"
        n_candidates = b * scorer.n_items
        cases += [
            (Case(group, "training module forward", training_forward, baseline=True), n_candidates),
            (
                Case(group, "ObdScorer.predict", lambda f=features: scorer.predict(f, 0)),
                n_candidates,
            ),
            (
                Case(
                    group, "featurize + predict", lambda u=users, a=affinity: scorer.score(u, a, 0)
                ),
                n_candidates,
            ),
        ]
    return cases


def hillstrom_cases(device: torch.device, batch_sizes: tuple[int, ...]) -> list[tuple[Case, int]]:
    loaded = load_checkpoint(default_checkpoint("hillstrom"), expected_kind="hillstrom_uplift")
    scorer = HillstromScorer(loaded, device=device)
    module = loaded.module.to(device)
    columns = load_hillstrom().raw_columns()
    cases = []
    for b in batch_sizes:
        batch = {k: _tile(v, b) for k, v in columns.items()}
        features = scorer.featurizer.transform(batch)
        cat_t = torch.from_numpy(features.categorical).to(device)
        num_t = torch.from_numpy(features.numeric).to(device)

        def training_forward(cat_t=cat_t, num_t=num_t) -> object:
            with torch.no_grad():
                out = module(cat_t, num_t).cpu()
            return out

        group = f"hillstrom uplift [{device.type}] B={b}"
        n = b * len(scorer.treatments)
        cases += [
            (Case(group, "training module forward", training_forward, baseline=True), n),
            (Case(group, "HillstromScorer.predict", lambda f=features: scorer.predict(f)), n),
            (Case(group, "featurize + predict", lambda c=batch: scorer.score(c)), n),
        ]
    return cases


def run(devices: list[torch.device], batch_sizes: tuple[int, ...], quick: bool) -> None:
    budget = dict(samples=7, max_total_s=0.5) if quick else dict(samples=15, max_total_s=2.0)
    print(
        f"torch {torch.__version__}, torch intra-op threads: {torch.get_num_threads()}, "
        f"kernel threads: {get_num_threads()}"
    )
    header = f"{'case':<34} {'median/call':>12} {'scored/s':>14} {'ratio':>7}"
    for device in devices:
        for title, cases in (
            (
                "OBD click model: candidates (context x item, one slot) scored per second",
                obd_cases(device, batch_sizes),
            ),
            (
                "Hillstrom uplift model: (customer x treatment) predictions per second",
                hillstrom_cases(device, batch_sizes),
            ),
        ):
            print(f"\n{title} on {device}")
            print(header)
            baseline_median: dict[str, float] = {}
            for case, n in cases:

                def timed(fn=case.fn, device=device) -> None:
                    fn()
                    _sync(device)

                median = time_callable(timed, **budget)
                if case.baseline:
                    baseline_median[case.group] = median
                base = baseline_median.get(case.group)
                ratio = (
                    f"{base / median:6.2f}x" if base else "   base" if case.baseline else "      -"
                )
                label = f"B={case.group.rsplit('B=', 1)[1]:<5} {case.name}"
                print(f"{label:<34} {median * 1e6:10.1f}us {n / median:14,.0f} {ratio:>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.models", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--batch-sizes",
        default=",".join(map(str, BATCH_SIZES)),
        help="comma-separated batch sizes (default %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op and kernel threads"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="all = CPU, and CUDA when present (default)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    args = parser.parse_args(argv)
    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        parser.error(
            f"--batch-sizes must be integers separated by commas, got {args.batch_sizes!r}"
        )
    if any(b < 1 for b in batch_sizes):
        parser.error("--batch-sizes must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
        set_num_threads(args.threads)  # the kernels' OpenMP/Numba threads, as a replica sets
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        parser.error("--device cuda: CUDA is not available")
    run(devices, batch_sizes, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
