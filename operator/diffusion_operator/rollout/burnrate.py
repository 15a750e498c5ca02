"""Burn-rate arithmetic for SLO-judged canaries (pure, no I/O).

An SLO with objective ``o`` (e.g. 0.999) allows an error ratio of ``1 - o``. The *burn rate*
of a measured error ratio ``e`` is ``e / (1 - o)``: 1 means the error budget is spent exactly
at the sustainable pace, 14.4 means fourteen times faster (Google SRE Workbook, "Alerting on
SLOs").

A :class:`WindowPair` trips when the burn rate is at or above its factor in BOTH its long and
its short window (the long window says the problem is significant, the short one that it is
still happening). A set of pairs trips when ANY pair trips.

Workbook defaults, for a 30-day SLO period (:data:`WORKBOOK_PAIRS`):

====== ======= ======= ==========================
factor  long    short   budget spent when it trips
====== ======= ======= ==========================
14.4    1h      5m      2 %
6       6h      30m     5 %
1       3d      6h      10 %
====== ======= ======= ==========================

Scaling rule for canaries (:func:`scale_pairs`)
-----------------------------------------------
A canary lives for minutes, not days, so the windows are compressed; the factors are kept.
Factors are speeds ("how many times faster than sustainable"), which do not depend on how
long we watch: a revision that would page the on-call at 100 % traffic must not reach 100 %.

1. The fastest pair's short window becomes ``S = analysis interval x shortWindowIntervals``
   (default 1 interval, the same window Flagger's built-in checks use), so every analysis
   sees fresh data and nothing older than one interval decides "still happening".
2. Every Workbook window is multiplied by ``k = S / 5m``. This keeps the Workbook's 12:1
   long:short ratio inside each pair and the 1 : 6 : 72 spacing across pairs.
3. A pair is *armed* (allowed to trip) only once the canary has carried traffic for at least
   its short window; until then the short window would silently cover less time than it
   claims. Until the long window fills, PromQL's ``rate()`` over it covers the canary's whole
   life, which is the right reading for a revision that did not exist before.

Worked example: analysis interval 60 s, steps of 5 min (4 steps, 20 min of analysis).
``S = 60 s``, ``k = 60 / 300 = 0.2``:

====== ================ ================ ==========================================
factor  long             short            armed after
====== ================ ================ ==========================================
14.4    1h x 0.2 = 12m   5m x 0.2 = 1m    1 min: a 30 % error fault at 99.9 %
                                          (burn 300) is rolled back at the first
                                          analysis after the first minute
6       6h x 0.2 = 72m   30m x 0.2 = 6m   6 min: a 10x fault (1 % errors at 99.9 %)
                                          is rolled back at the first analysis
                                          after 6 minutes of traffic
1       3d x 0.2 = 14.4h 6h x 0.2 = 72m   72 min: never within this 20-minute
                                          rollout; it only acts in long canaries,
                                          where enough requests make a 1x
                                          difference measurable
====== ================ ================ ==========================================

Hard numbers are guarded before they reach the arithmetic: ``None``, NaN (PromQL's 0/0 when
there was no traffic) and infinities (x/0) are "no data"; ratios are clamped to [0, 1]
(rate extrapolation can push ``1 - good/total`` a hair below zero). ``rate()`` and
``increase()`` already correct counter resets; a negative count that slips through anyway is
treated as no data rather than trusted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_SLO_PERIOD_S",
    "WORKBOOK_PAIRS",
    "WORKBOOK_SHORTEST_WINDOW_S",
    "WindowPair",
    "burn_rate",
    "format_duration",
    "sanitize_count",
    "sanitize_ratio",
    "scale_pairs",
    "windows_of",
]

#: The Workbook's SLO period: 30 days.
DEFAULT_SLO_PERIOD_S = 30 * 24 * 3600
#: The Workbook's shortest window (the fast pair's short window), 5 minutes.
WORKBOOK_SHORTEST_WINDOW_S = 300

_H = 3600


@dataclass(frozen=True, order=True)
class WindowPair:
    """A long and a short window (seconds) that must both burn at ``factor`` or more."""

    long_s: int
    short_s: int
    factor: float

    def __post_init__(self) -> None:
        if self.short_s <= 0 or self.long_s <= 0:
            raise ValueError(f"window pair needs positive windows, got {self}")
        if self.short_s > self.long_s:
            raise ValueError(f"short window longer than long window in {self}")
        if not (self.factor > 0 and math.isfinite(self.factor)):
            raise ValueError(f"window pair needs a positive finite factor, got {self}")

    @property
    def name(self) -> str:
        """Human label such as ``14.4x 12m/1m``."""
        return f"{self.factor:g}x {format_duration(self.long_s)}/{format_duration(self.short_s)}"

    def budget_consumed(self, period_s: int = DEFAULT_SLO_PERIOD_S) -> float:
        """Share of the period's error budget spent when the long window burns at ``factor``."""
        return self.factor * self.long_s / period_s

    def to_dict(self) -> dict[str, Any]:
        return {"longWindowSeconds": self.long_s, "shortWindowSeconds": self.short_s, "factor": self.factor}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowPair:
        return cls(
            long_s=int(data["longWindowSeconds"]),
            short_s=int(data["shortWindowSeconds"]),
            factor=float(data["factor"]),
        )


#: SRE Workbook pairs for a 30-day period: page 14.4x (1h/5m), page 6x (6h/30m), ticket 1x (3d/6h).
WORKBOOK_PAIRS: tuple[WindowPair, ...] = (
    WindowPair(long_s=1 * _H, short_s=300, factor=14.4),
    WindowPair(long_s=6 * _H, short_s=1800, factor=6.0),
    WindowPair(long_s=72 * _H, short_s=6 * _H, factor=1.0),
)


def scale_pairs(
    analysis_interval_s: float,
    *,
    short_window_intervals: int = 1,
    pairs: Iterable[WindowPair] = WORKBOOK_PAIRS,
) -> tuple[WindowPair, ...]:
    """Compress ``pairs`` so the fastest short window is ``interval x short_window_intervals``.

    Every window is multiplied by the same ``k = S / (fastest pair's short window)``, rounded to
    whole seconds (at least 1); factors are unchanged. See the module docstring for the rule
    and a worked example.
    """
    pairs = tuple(pairs)
    if not pairs:
        raise ValueError("no window pairs to scale")
    if analysis_interval_s <= 0 or short_window_intervals < 1:
        raise ValueError("analysis interval and short_window_intervals must be positive")
    target_short = analysis_interval_s * short_window_intervals
    base_short = min(p.short_s for p in pairs)
    k = target_short / base_short
    return tuple(
        WindowPair(long_s=max(1, round(p.long_s * k)), short_s=max(1, round(p.short_s * k)), factor=p.factor)
        for p in pairs
    )


def windows_of(pairs: Iterable[WindowPair]) -> tuple[int, ...]:
    """Distinct windows (seconds) used by ``pairs``, ascending: what has to be queried."""
    return tuple(sorted({w for p in pairs for w in (p.long_s, p.short_s)}))


def sanitize_ratio(value: float | None) -> float | None:
    """A measured ratio fit for arithmetic, or ``None`` for "no data".

    ``None``/NaN/inf -> ``None``; finite values are clamped to [0, 1].
    """
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    return min(1.0, max(0.0, value))


def sanitize_count(value: float | None) -> float | None:
    """A request count fit for comparison, or ``None``: NaN, inf and negatives are not data."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


def burn_rate(error_ratio: float | None, objective: float) -> float | None:
    """``error_ratio / (1 - objective)``; ``None`` when the ratio is no data.

    ``objective`` must lie in (0, 1): an objective of 1 has no budget to burn.
    """
    if not 0.0 < objective < 1.0:
        raise ValueError(f"SLO objective must be in (0, 1), got {objective!r}")
    ratio = sanitize_ratio(error_ratio)
    if ratio is None:
        return None
    return ratio / (1.0 - objective)


def format_duration(seconds: float) -> str:
    """Compact duration: ``300 -> '5m'``, ``3600 -> '1h'``, ``90 -> '90s'``, ``51840 -> '14h24m'``."""
    s = int(round(seconds))
    if s <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            n, s = divmod(s, size)
            parts.append(f"{n}{unit}")
    # Keep at most two units; ``90s`` reads better than ``1m30s`` for short canary windows.
    if len(parts) == 2 and parts[0].endswith("m") and parts[1].endswith("s"):
        return f"{int(round(seconds))}s"
    return "".join(parts[:2])
