"""Number formatting and the accuracy-budget rule shared by the panes. Missing values read "n/a"."""

from __future__ import annotations

NA = "n/a"


def num(value, digits: int = 2, unit: str = "") -> str:
    if value is None or isinstance(value, bool):
        return NA
    try:
        v = float(value)
    except (TypeError, ValueError):
        return NA
    if v != v:
        return NA
    if abs(v) >= 1e5 or (0 < abs(v) < 10 ** -digits):
        text = f"{v:.{max(1, digits)}e}"
    else:
        text = f"{v:,.{digits}f}"
    return f"{text} {unit}".rstrip() if unit else text


def sig(value, digits: int = 5) -> str:
    """Significant digits, for metrics whose scale varies (perplexity 23520, agreement 0.96875, KL 2.2e-08)."""
    if value is None or isinstance(value, bool):
        return NA
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return NA


def ms(value) -> str:
    return num(value, 2, "ms")


def mb(value) -> str:
    if value is None:
        return NA
    if value >= 10240:
        return num(value / 1024, 1, "GB")
    return num(value, 0 if value >= 100 else 1, "MB")


def params(count) -> str:
    if count is None:
        return NA
    if count >= 1e9:
        return f"{count / 1e9:.2f} B"
    if count >= 1e6:
        return f"{count / 1e6:.1f} M"
    if count >= 1e3:
        return f"{count / 1e3:.1f} k"
    return str(int(count))


def ratio(value) -> str:
    return NA if value is None else f"{value:.2f}×"


def size_bytes(n: int | None) -> str:
    if n is None:
        return NA
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def signed(value, digits: int = 4) -> str:
    if value is None:
        return NA
    return f"{value:+.{digits}g}"


def worse_fraction(entry: dict) -> float | None:
    """How much worse a metric got, as a fraction of its baseline (negative: it improved). None if unknown.

    A baseline of 0 (e.g. KL divergence against itself) has no relative scale: the absolute change is used.
    """
    delta, base = entry.get("delta"), entry.get("baseline")
    if delta is None:
        return None
    worse = -delta if entry.get("higher_is_better", True) else delta
    return worse / abs(base) if base else worse


def budget_status(entry: dict, budget_pct: float) -> str:
    """"better", "within" (budget) or "over"; "unknown" when the metric has no delta."""
    w = worse_fraction(entry)
    if w is None:
        return "unknown"
    if w <= 0:
        return "better"
    return "within" if w * 100 <= budget_pct + 1e-12 else "over"


STATUS_STYLE = {"better": "green", "within": "yellow", "over": "bold red", "unknown": "dim"}
STATUS_WORD = {"better": "no loss", "within": "in budget", "over": "OVER budget", "unknown": NA}
