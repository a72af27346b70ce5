"""Power before running: from a pilot's paired SD, how many seeds a part needs, and what margin a
given number of seeds can resolve.

A part decides on an interval of the mean of a per-seed quantity (a paired difference, or a slope):
its expected half-width with n seeds is t_{(1+L)/2, n-1} sd / sqrt(n), L the interval's level
(the 1 - 2 alpha interval of a margin part: t_{1-alpha, n-1}; the `level` interval of a
difference or trend part). A margin part can reach a verdict only when that half-width is below its
margin; with exactly that half-width and a true difference of 0, the interval's end sits on the
margin about half the time (this is a precision target, not 80% power: for that, n grows by about
(z_0.95 + z_0.8)^2 / z_0.95^2 = 2.3x). The smallest such n is `n_needed`; with the seeds the budget
allows, `resolvable` is the margin the study can resolve, the margin claims/params.yaml then states
and the part uses (decided before the main run). A variance-ratio part has no such half-width:
its power is not planned this way. A pilot of 3 seeds estimates the SD roughly (2 degrees of
freedom: its 80% upper confidence limit is 2.1x the estimate), so each row also gives the seeds
needed at that limit (`n_needed_sd_ucl80`): planning with it is the cautious choice.
"""

from __future__ import annotations

import math
import statistics

from ..stats import t_quantile
from .spec import ClaimsParams, PartSpec

N_MAX = 10_000


def half_width(sd: float, n: int, level: float) -> float:
    """The expected half-width of the `level` two-sided Student-t interval of a mean over n seeds."""
    if n < 2:
        return math.inf
    return t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)


def n_needed(sd: float, target: float, level: float, n_max: int = N_MAX) -> int | None:
    """The smallest n >= 2 whose expected half-width is < target; None when even n_max seeds are not enough."""
    if target <= 0:
        raise ValueError("the target half-width must be > 0")
    if half_width(sd, n_max, level) >= target:
        return None
    lo, hi = 2, n_max  # half_width falls with n: bisect for the first n below target
    while lo < hi:
        mid = (lo + hi) // 2
        if half_width(sd, mid, level) < target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def resolvable(sd: float, n: int, level: float) -> float:
    """The margin (or, for a difference part, the smallest effect whose interval can exclude 0) that n
    seeds resolve: the expected half-width at n."""
    return half_width(sd, n, level)


def sd_upper(sd: float, n: int, confidence: float = 0.8) -> float:
    """The one-sided `confidence` upper limit of a standard deviation estimated from n values (chi-square)."""
    from scipy.stats import chi2

    return sd * math.sqrt((n - 1) / float(chi2.ppf(1 - confidence, n - 1)))


def part_level(part: PartSpec, spec: ClaimsParams) -> float:
    """The level of the interval the part's rule reads: 1 - 2 alpha for margin parts, else `level`."""
    return 1 - 2 * spec.alpha if part.kind in ("equivalence", "non_inferiority") else spec.level


def part_power(part: PartSpec, spec: ClaimsParams, pilot_series: list[float], n_used: int, pilot: dict) -> dict:
    """The power row of one part from its pilot's per-seed effects: pilot n and paired SD, the
    target (its practically relevant margin: target_margin, else margin; a difference or trend part:
    none), seeds needed for it, seeds used, the margin resolvable with them, and the margin used."""
    level = part_level(part, spec)
    target = part.target_margin or part.margin
    row: dict = {"level": level, "target": target, "n_used": n_used, "margin_used": part.margin}
    row["pilot_steps"] = pilot.get("steps")
    if part.kind == "variance_ratio":
        return {**row, "pilot_n": len(pilot_series), "pilot_sd": None, "note": "no per-seed quantity: not planned"}
    if len(pilot_series) < 2:
        return {**row, "pilot_n": len(pilot_series), "pilot_sd": None, "note": "no pilot (or < 2 finished pairs)"}
    sd = statistics.stdev(pilot_series)
    row.update({"pilot_n": len(pilot_series), "pilot_sd": sd, "pilot_mean": statistics.fmean(pilot_series)})
    row["resolvable_at_n_used"] = resolvable(sd, n_used, level)
    if target is not None:
        row["n_needed"] = n_needed(sd, target, level)
        row["n_needed_sd_ucl80"] = n_needed(sd_upper(sd, len(pilot_series)), target, level)
        row["reaches_target"] = row["n_needed"] is not None and n_used >= row["n_needed"]
        if not row["reaches_target"]:  # what claims/params.yaml can state and use instead (margin, target_margin)
            row["suggested_margin"] = math.ceil(row["resolvable_at_n_used"] * 1e4) / 1e4
    if part.margin is not None:
        row["margin_resolvable"] = row["resolvable_at_n_used"] < part.margin
    return row
