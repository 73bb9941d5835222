"""Mean, sd and the t interval of a few seeds, and what a paired difference says."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t by degrees of freedom (1..30; beyond, the normal's).
T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


@dataclass
class Summary:
    n: int
    mean: float
    sd: float
    half_width: float  # of the 95% interval (t); nan for n < 2


def summarise(values: Iterable[float]) -> Summary:
    values = list(values)
    n = len(values)
    mean = statistics.fmean(values) if values else math.nan
    sd = statistics.stdev(values) if n >= 2 else math.nan
    t = T95[n - 2] if 2 <= n <= 31 else 1.96
    return Summary(n, mean, sd, t * sd / math.sqrt(n) if n >= 2 else math.nan)


def percent(value: float) -> str:
    """A fraction as a table's percent; "n/a" where one seed leaves no sd or interval."""
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def interval(summary: Summary) -> str:
    """The 95% interval as a table shows it."""
    low, high = summary.mean - summary.half_width, summary.mean + summary.half_width
    return f"[{percent(low)}, {percent(high)}]"


def verdict(diff: Summary) -> str:
    if diff.n < 2:
        return "one pair: no verdict"
    low, high = diff.mean - diff.half_width, diff.mean + diff.half_width
    if low > 0:
        return "better (95% interval above 0)"
    if high < 0:
        return "worse (95% interval below 0)"
    return "no difference shown"
