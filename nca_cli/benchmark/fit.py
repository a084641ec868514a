"""Least-squares lines through measurements, and the largest size a line allows."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class LinearFit:
    """``y = intercept + slope * x`` fitted to ``points`` measurements."""

    slope: float
    intercept: float
    points: int
    r2: float
    max_rel_residual: float     # largest |y - fit| / y over the larger half of the points (at least 2)
    x_max: float                # largest x measured

    def predict(self, x: float) -> float:
        return self.intercept + self.slope * x

    def to_dict(self) -> dict:
        return asdict(self)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> LinearFit:
    """Ordinary least squares; one point gives the line through the origin and that point."""
    if len(xs) != len(ys) or not xs:
        raise ValueError("fit_line needs the same positive number of xs and ys")
    n = len(xs)
    if n == 1 or len(set(xs)) == 1:
        x, y = sum(xs) / n, sum(ys) / n
        slope, intercept = (y / x if x else 0.0), 0.0
    else:
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        slope = sxy / sxx
        intercept = my - slope * mx
    pred = [intercept + slope * x for x in xs]
    my = sum(ys) / n
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - p) ** 2 for y, p in zip(ys, pred))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    upper = sorted(zip(xs, ys, pred))[-max(2, (n + 1) // 2):]
    rel = max((abs(y - p) / abs(y) if y else 0.0) for _, y, p in upper)
    return LinearFit(slope, intercept, n, r2, rel, max(xs))


def largest_size(fit: LinearFit, limit: float, pixels: Callable[[int], int], *, quantum: int = 1,
                 hi: int = 1 << 40) -> int | None:
    """The largest multiple of ``quantum`` (up to ``hi``) whose predicted value
    ``fit.predict(pixels(size))`` stays within ``limit``; None when even ``quantum`` does not.

    ``pixels`` must grow with the size; the search bisects over multiples of ``quantum``.
    """
    lo_k, hi_k = 1, max(1, hi // quantum)

    def fits(k: int) -> bool:
        return fit.predict(pixels(k * quantum)) <= limit

    if not fits(lo_k):
        return None
    if fits(hi_k):
        return hi_k * quantum
    while hi_k - lo_k > 1:
        mid = (lo_k + hi_k) // 2
        if fits(mid):
            lo_k = mid
        else:
            hi_k = mid
    return lo_k * quantum
