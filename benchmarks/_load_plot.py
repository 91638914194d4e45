"""The load benchmark's latency-throughput figure: p50 and p99 against offered rate.

One panel per API with open-loop points (KServe v2 infer, ``/v1/decide``); in each, every
system that ran gets one colour, its p99 as a solid line and its p50 dashed, on a log
latency axis. An unanswered percentile (``inf``: requests still waiting when the drain
timeout expired) is drawn as a triangle near the panel's top. A dotted line marks the
p99 limit that defines capacity. Drawn with matplotlib's Agg canvas (no display, no
pyplot state), imported only when a figure is written.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = {
    "ours": "tab:blue",
    "ours-separate": "tab:purple",
    "plain-serve": "tab:orange",
    "triton": "tab:green",
    "bare-hop": "tab:gray",
}
API_TITLES = {"v2": "KServe v2 infer (batch 1)", "decide": "POST /v1/decide"}
API_UNITS = {"v2": "requests/s", "decide": "decisions/s"}


def has_open_loop_points(rows: Sequence[Any]) -> bool:
    return any(r.result.mode == "open" for r in rows)


def _series(rows: Sequence[Any], system: str, api: str) -> list[tuple[float, float, float]]:
    """``(offered, p50_ms, p99_ms)`` of a system's open-loop points on one API, by rate."""
    pts = [
        (r.result.offered, r.result.p50_ms, r.result.p99_ms)
        for r in rows
        if r.system == system and r.api == api and r.result.mode == "open"
    ]
    return sorted(pts)


def write_plot(
    rows: Sequence[Any],
    path: Path,
    p99_limit_ms: float = 50.0,
    cpus: int | None = None,
    date: str | None = None,
) -> Path:
    """Draw the open-loop points of ``rows`` (``benchmarks.load.Row``) into a PNG at
    ``path``; raises ValueError when there are none. Returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    apis = [a for a in API_TITLES if any(r.api == a and r.result.mode == "open" for r in rows)]
    if not apis:
        raise ValueError("no open-loop points to plot")
    systems = [s for s in COLOURS if any(r.system == s for r in rows)]
    systems += sorted({r.system for r in rows} - set(systems))
    cpus = cpus if cpus is not None else os.cpu_count()
    date = date if date is not None else time.strftime("%Y-%m-%d")

    from matplotlib.lines import Line2D

    fig = Figure(figsize=(5.6 * len(apis) + 2.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(apis), squeeze=False)[0]
    shown: dict[str, str] = {}
    any_lost = False
    for ax, api in zip(axes, apis, strict=True):
        finite = [
            v
            for system in systems
            for _, p50, p99 in _series(rows, system, api)
            for v in (p50, p99)
            if math.isfinite(v) and v > 0
        ]
        low = min(finite + [p99_limit_ms]) / 1.5
        top = max(finite + [p99_limit_ms]) * 2.0
        for i, system in enumerate(systems):
            pts = _series(rows, system, api)
            if not pts:
                continue
            colour = shown.setdefault(system, COLOURS.get(system, f"C{(i + 4) % 10}"))
            x = [p[0] for p in pts]
            for idx, style in ((2, "-"), (1, "--")):
                y = [p[idx] if math.isfinite(p[idx]) and p[idx] > 0 else math.nan for p in pts]
                ax.plot(x, y, style, color=colour, marker="o", ms=4)
                lost = [p[0] for p in pts if math.isinf(p[idx])]
                if lost:
                    any_lost = True
                    ax.plot(lost, [top] * len(lost), "^", color=colour, ms=8)
        ax.axhline(p99_limit_ms, color="black", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_ylim(low, top * 1.6)
        ax.set_xlim(left=0)
        ax.set_title(API_TITLES[api])
        ax.set_xlabel(f"offered rate ({API_UNITS[api]}, open loop, Poisson)")
        ax.set_ylabel("latency from scheduled send (ms)")
        ax.grid(True, which="both", alpha=0.3)
    handles = [
        Line2D([], [], color=shown[system], marker="o", ms=4, label=system)
        for system in systems
        if system in shown
    ]
    handles += [
        Line2D([], [], color="black", ls="-", label="p99"),
        Line2D([], [], color="black", ls="--", label="p50"),
        Line2D(
            [],
            [],
            color="black",
            ls=":",
            lw=0.8,
            label=f"capacity's p99\nlimit, {p99_limit_ms:g} ms",
        ),
    ]
    if any_lost:
        handles.append(
            Line2D([], [], color="black", marker="^", ls="", ms=8, label="unanswered\n(inf)")
        )
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle(
        "load benchmark, open loop: p50 (dashed) and p99 (solid) against offered rate\n"
        f"{cpus} CPU(s), {date}"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
