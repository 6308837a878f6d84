"""Mean and 95 % confidence interval across seeds (Student's t, no scipy)."""

from __future__ import annotations

import math
from typing import Iterable

# Two-sided 95 % quantiles t_{0.975, df} of Student's t distribution, df = 1..30.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
# Beyond the table: (df, t) anchors, interpolated linearly in 1/df (the classic table rule).
_T975_TAIL = ((30, 2.0423), (40, 2.0211), (60, 2.0003), (120, 1.9799), (math.inf, 1.95996))


def t_quantile_975(df: int) -> float:
    """``t_{0.975}`` for ``df >= 1`` degrees of freedom (exact table to 30, then 1/df interpolation)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    for (d0, t0), (d1, t1) in zip(_T975_TAIL, _T975_TAIL[1:]):
        if d0 <= df <= d1:
            x0, x1, x = 1.0 / d0, (0.0 if math.isinf(d1) else 1.0 / d1), 1.0 / df
            return t0 + (t1 - t0) * (x0 - x) / (x0 - x1)
    return _T975_TAIL[-1][1]


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the sample mean and its two-sided t confidence interval.

    ``low, high = mean -/+ t_{0.975, n-1} * s / sqrt(n)`` with the sample standard deviation
    ``s`` (n - 1 denominator). With one value the interval is undefined: ``(v, nan, nan)``.
    Only ``confidence=0.95`` is supported (the t table is for 95 %).
    """
    xs = [float(v) for v in values]
    if confidence != 0.95:
        raise ValueError(f"only confidence=0.95 is supported, got {confidence}")
    if not xs:
        raise ValueError("mean_ci needs at least one value, got none")
    if not all(math.isfinite(v) for v in xs):
        raise ValueError(f"mean_ci needs finite values, got {xs}")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan, math.nan
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in xs) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return mean, mean - half, mean + half
