"""Kernel micro-benchmarks: our Cython/Numba kernels against their baselines, one run.

    python -m benchmarks.kernels [--json PATH] [--only SUBSTRING] [--threads 1,2]

For each op and shape, every case (ours and the baselines: np.argpartition+sort,
torch.topk, scikit-learn's FeatureHasher, pure-Python loops) is timed in this process,
single-threaded and with all cores; the table shows medians and the ratio
(fastest baseline median / case median: above 1 means faster than every baseline).
"""

from __future__ import annotations

from benchmarks import _cases_hashing, _cases_topk
from benchmarks._timing import (
    case_arguments,
    print_table,
    run_cases,
    thread_counts,
    write_rows_json,
)

CASE_MODULES = (_cases_topk, _cases_hashing)


def main(argv: list[str] | None = None) -> int:
    args = case_arguments("python -m benchmarks.kernels", __doc__).parse_args(argv)
    threads = thread_counts(args.threads)

    from nudgeserve import kernels

    kernels.warmup()
    cases = [c for m in CASE_MODULES for c in m.cases() if args.only in c.group]
    rows = []
    for n in threads:
        rows += run_cases(cases, n)
    print(f"kernel backends chosen at import: {kernels.chosen_backends()}")
    print_table(rows)
    if args.json_path:
        write_rows_json(args.json_path, rows)
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
