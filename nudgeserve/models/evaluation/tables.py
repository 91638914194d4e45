"""Plain-text tables of the evaluation reports (``to_text`` of the impact and training
reports): aligned columns, numbers at a fixed precision per outcome."""

from __future__ import annotations

import math

__all__ = ["format_table", "format_value", "outcome_digits"]


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under ``headers``, two spaces apart, a dashed rule below."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def format_value(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals; ``nan`` for anything not finite."""
    return "nan" if not math.isfinite(x) else f"{x:.{digits}f}"


def outcome_digits(outcome: str) -> int:
    """Decimals for an outcome's numbers: money (spend) to the cent, rates to 4."""
    return 2 if outcome == "spend" else 4
