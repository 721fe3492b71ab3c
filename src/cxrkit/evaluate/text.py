"""How evaluation numbers are written: one "value [CI]" formatter and one Markdown table.

Every table, report, summary, comparison, figure title and CLI line writes an estimate with
its interval through :func:`format_ci`, so "0.812 [0.790, 0.833]" reads the same
everywhere and an undefined value or a missing interval is said the same way.
"""

from __future__ import annotations

import math

import pandas as pd


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def format_ci(
    rec: dict | None,
    digits: int = 3,
    *,
    signed: bool = False,
    missing: str = "undefined",
    star: bool = False,
) -> str:
    """``{"value", "lo", "hi"}`` -> ``"0.812 [0.790, 0.833]"``.

    ``missing``: the text for an undefined value (None or NaN); a value without an
    interval is ``"0.812 (no CI)"``. ``signed``: a leading + for differences; ``star``:
    append `` *`` when the interval excludes 0 (a difference that is not noise).
    """
    if not rec or _missing(rec.get("value")):
        return missing
    f = f"+.{digits}f" if signed else f".{digits}f"
    value = format(rec["value"], f)
    lo, hi = rec.get("lo"), rec.get("hi")
    if lo is None or hi is None or _missing(lo) or _missing(hi):
        return f"{value} (no CI)"
    mark = " *" if star and (lo > 0 or hi < 0) else ""
    return f"{value} [{format(lo, f)}, {format(hi, f)}]{mark}"


def _cell(v) -> str:
    if v is None or (not isinstance(v, str) and pd.api.types.is_scalar(v) and pd.isna(v)):
        return ""
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table (blank for missing; floats to one decimal:
    the numbers that matter are already formatted strings)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


__all__ = ["format_ci", "markdown_table"]
