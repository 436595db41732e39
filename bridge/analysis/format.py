"""The one formatter of a result with its error: ``value(error)`` with two significant digits of
the error (the particle-physics convention, e.g. ``0.6969(25)``), or ``value +- error`` with the
same digits for plain-text summaries."""

from __future__ import annotations

import math

__all__ = ["value_error"]


def value_error(value: float | None, error: float | None, *, style: str = "paren",
                plain: str = ".6g", missing: str = "n/a") -> str:
    """``value(error)`` (``style="paren"``) or ``value +- error`` (``style="pm"``) with two
    significant digits of the error, e.g. ``value_error(0.49961, 0.00132) == "0.4996(13)"``.

    ``missing`` when ``value`` is None; ``format(value, plain)`` when the error is None, not
    finite or not positive; errors beyond 12 decimals or at least 10 fall back to
    ``value+-error`` in ``%g`` notation (paren style)."""
    if style not in ("paren", "pm"):
        raise ValueError(f"style: expected 'paren' or 'pm', got {style!r}")
    if value is None:
        return missing
    if error is None or not (math.isfinite(value) and math.isfinite(error) and error > 0):
        return format(value, plain)
    digits = 1 - int(math.floor(math.log10(error)))
    if style == "pm":
        digits = max(0, digits)
    elif not 0 <= digits <= 12:
        return f"{value:.6g}+-{error:.2g}"
    err = round(error * 10**digits)
    if err >= 100 and digits > 0:  # rounding carried into a third digit
        digits -= 1
        err = round(error * 10**digits)
    if style == "pm":
        return f"{value:.{digits}f} +- {error:.{digits}f}"
    if digits == 0:
        return f"{value:.0f}({err})"
    return f"{value:.{digits}f}({err})"
