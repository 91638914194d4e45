"""PNG plots of the impact analysis: Qini curves with bands, effects by segment.

matplotlib is imported inside each function and drawn through the Agg canvas directly
(``Figure`` + ``FigureCanvasAgg``, never ``pyplot``): no display, no global figure state,
safe from worker threads, and importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nudgeserve.models.evaluation.effects import SegmentEffect
from nudgeserve.models.evaluation.qini import QiniBand

__all__ = ["plot_qini", "plot_segment_effects"]

_MODEL_COLOR = "#1f77b4"
_RANDOM_COLOR = "#7f7f7f"
_TREATMENT_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return fig, FigureCanvasAgg(fig)


def _save(fig: Any, canvas: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))
    return path


def _text(value: str) -> str:
    """``value`` shown literally: matplotlib reads text between two ``$`` as math."""
    return value.replace("$", r"\$")


def _unit(outcome: str) -> str:
    return r"\$ per customer" if outcome == "spend" else f"{outcome}s per customer"


def plot_qini(bands: Sequence[QiniBand], path: str | Path, *, title: str | None = None) -> Path:
    """One panel per band: the model's Qini curve with its bootstrap 95% band, the random
    targeting line and the 95% band of random rankings. Returns the PNG's path.

    bands: from ``impact.qini_band`` (e.g. one per treatment of one outcome).
    """
    if not bands:
        raise ValueError("bands is empty: nothing to plot")
    for b in bands:
        if not isinstance(b, QiniBand):
            raise TypeError(f"bands must hold QiniBand, got {type(b).__name__}")
    fig, canvas = _figure(5.0 * len(bands), 4.2)
    axes = fig.subplots(1, len(bands), squeeze=False)[0]
    for ax, b in zip(axes, bands, strict=True):
        x = [100 * f for f in b.fraction]
        ax.fill_between(
            x,
            b.random_low,
            b.random_high,
            color=_RANDOM_COLOR,
            alpha=0.18,
            label="random rankings (95% band)",
        )
        ax.plot(x, b.random_line, color=_RANDOM_COLOR, lw=1.2, ls="--", label="random targeting")
        ax.fill_between(
            x,
            b.model_low,
            b.model_high,
            color=_MODEL_COLOR,
            alpha=0.25,
            label="model (bootstrap 95% band)",
        )
        ax.plot(x, b.model, color=_MODEL_COLOR, lw=2.0, label="model: by predicted uplift")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_title(_text(f"{b.treatment} vs control: {b.outcome}"))
        ax.set_xlabel("customers targeted, highest predicted uplift first (%)")
        ax.set_ylabel(f"incremental {_unit(b.outcome)}")
        ax.set_xlim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8, framealpha=0.9)
    if title:
        fig.suptitle(_text(title))
    return _save(fig, canvas, path)


def plot_segment_effects(
    segments: Sequence[SegmentEffect], path: str | Path, *, outcome: str, title: str | None = None
) -> Path:
    """One panel per feature: each segment's observed effect (difference in means, 95%
    interval as error bars) per treatment, and the model's mean predicted uplift (open
    diamonds). Returns the PNG's path."""
    rows = [s for s in segments if s.outcome == outcome]
    if not rows:
        raise ValueError(f"no segment effects for outcome {outcome!r}")
    features = list(dict.fromkeys(s.feature for s in rows))
    treatments = list(dict.fromkeys(s.treatment for s in rows))
    widths = [max(2, len({s.segment for s in rows if s.feature == f})) for f in features]
    fig, canvas = _figure(1.1 * sum(widths) + 2.0, 4.6)
    axes = fig.subplots(1, len(features), squeeze=False, width_ratios=widths)[0]
    offset_step = 0.8 / max(1, len(treatments))
    for ax, feature in zip(axes, features, strict=True):
        names = sorted({s.segment for s in rows if s.feature == feature})
        for k, treatment in enumerate(treatments):
            color = _TREATMENT_COLORS[k % len(_TREATMENT_COLORS)]
            found = {
                s.segment: s for s in rows if s.feature == feature and s.treatment == treatment
            }
            xs = [
                i - 0.4 + offset_step * (k + 0.5) for i, name in enumerate(names) if name in found
            ]
            cells = [found[name] for name in names if name in found]
            ax.errorbar(
                xs,
                [c.estimate for c in cells],
                yerr=[
                    [c.estimate - c.low for c in cells],
                    [c.high - c.estimate for c in cells],
                ],
                fmt="o",
                color=color,
                capsize=3,
                label=_text(f"{treatment}: observed (95% CI)"),
            )
            ax.plot(
                xs,
                [c.predicted for c in cells],
                "D",
                mfc="none",
                color=color,
                ms=7,
                label=_text(f"{treatment}: model mean uplift"),
            )
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([_text(n) for n in names], rotation=25, ha="right", fontsize=8)
        ax.set_title(_text(feature))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(f"effect on {_unit(outcome)}")
    axes[0].legend(loc="best", fontsize=7, framealpha=0.9)
    if title:
        fig.suptitle(_text(title))
    return _save(fig, canvas, path)
