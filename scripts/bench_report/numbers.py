"""Medians and the formatting of numbers: 3 significant figures, thousands separators."""

from __future__ import annotations

import math
import statistics
from typing import Iterable

MISSING = "—"


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are there; None when none is."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def significant(value: float | None, digits: int = 3) -> str:
    """``10512`` → ``10,500``; ``23.34`` → ``23.3``; ``0.51234`` → ``0.512``."""
    if value is None:
        return MISSING
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == 0:
        return "0"
    rounded = round(value, digits - 1 - magnitude(value))
    if rounded == 0:
        return "0"
    decimals = max(0, digits - 1 - magnitude(rounded))
    return f"{rounded:,.{decimals}f}"


def magnitude(value: float) -> int:
    return math.floor(math.log10(abs(value)))


def count(value: float | int | None) -> str:
    """A count with thousands separators: ``20000`` → ``20,000``."""
    if value is None:
        return MISSING
    if float(value).is_integer():
        return f"{int(value):,}"
    return significant(value)


def factor(value: float | None) -> str:
    return MISSING if value is None else f"{significant(value)}×"


def duration_from_nanoseconds(nanoseconds: float) -> str:
    """``370.9`` → ``371 ns``; ``267300000`` → ``267 ms``."""
    for limit, divisor, unit in ((1e3, 1, "ns"), (1e6, 1e3, "µs"), (1e9, 1e6, "ms")):
        if nanoseconds < limit:
            return f"{significant(nanoseconds / divisor)} {unit}"
    return f"{significant(nanoseconds / 1e9)} s"


def gap_to_minimum(actual: float | None, target: float) -> str:
    """How far a rate is below its target: ``met``, or the factor still missing."""
    if actual is None:
        return MISSING
    if actual >= target:
        return "met"
    if actual <= 0:
        return "∞"
    return factor(target / actual)


def gap_to_maximum(actual: float | None, limit: float) -> str:
    """How far a latency is above its limit: ``met``, or the factor it is over by."""
    if actual is None:
        return MISSING
    if actual <= limit:
        return "met"
    return factor(actual / limit)
