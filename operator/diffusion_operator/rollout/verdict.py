"""One canary analysis -> a :class:`Verdict` with the numbers behind it (pure, no I/O).

Input: the canary's and the stable revision's error ratios per SLI and window, their request
counts per window, how long the canary has carried traffic, and whether the metrics provider
failed (:class:`AnalysisInputs`, built by :func:`.metrics_provider.measure`). Output: pass,
fail, inconclusive or error, a reason code and message, and per SLI and window pair the
measured ratio, burn rate and threshold for canary and stable.

Rules, in order:

1. **error** (``MetricsUnavailable``) when the provider failed: nothing was measured.
2. Each (SLI, window pair) is *armed* once the canary has carried traffic for the pair's
   short window. An armed pair with data in both windows is *burning* when the canary burns
   at or above the factor in both, and its long window's counts go through a sequential
   test (:func:`sequential_evidence`): the log likelihood ratio of "errs at the factor"
   against "meets the SLO". It *trips* when burning and the evidence reaches
   ``log(1 / FALSE_TRIP_RATE)``: errors beyond chance for a canary meeting its SLO, however
   few the requests. With large counts (at least ``minRequests`` in the short window and
   ``LARGE_EXPECTED_ERRORS`` errors expected there at the factor) the pair is judged by its
   burn rates (``method: burn-rate``; the test agrees with them there); with small counts
   it is judged only once the test decides (``method: sequential``): a trip, or cleared
   (evidence down to ``log(CLEAR_MISS_RATE)`` and not burning). Otherwise it is
   *collecting*: burning but not yet significant, or clean but too few requests to clear.
3. **fail** (``AvailabilityBurnRateExceeded`` / ``LatencyBurnRateExceeded`` /
   ``QualityBurnRateExceeded``) when a pair trips and the stable revision is *not* burning
   as badly: stable burning as badly means stable, with enough traffic of its own, burns
   the same pair and at least ``stableBurnRatio`` (default 0.5) times the canary's burn in
   both windows.
4. **inconclusive** when every trip is shared with stable (``StableAlsoBurning``: the
   canary is not to blame for a shared outage), when no pair is armed yet
   (``AnalysisWarmingUp``), when a paging pair (factor above 1) burns but not yet beyond
   chance (``BurnNotYetSignificant``, even if another pair is clear), or when some SLI has no
   judged pair: too little traffic to clear it
   (``InsufficientTraffic``, also for no traffic at all) or missing series
   (``SLIDataMissing``, e.g. no histogram bucket at the latency threshold; with
   ``onNoData: Fail`` this one is a **fail**).
5. **pass** (``BurnRateWithinBudget``) otherwise: every SLI has at least one judged pair and
   none tripped.

The false-rollback rate this states: for a canary that meets its SLO, each pair's evidence is
a likelihood ratio, a supermartingale under the SLO, so by Ville's inequality it reaches
``1 / FALSE_TRIP_RATE`` with probability at most ``FALSE_TRIP_RATE`` over all the analyses of
a rollout while the long window covers the canary's life (``metrics_provider.same_spans``
cuts it to the canary's age); per rollout at most pairs x SLIs x ``FALSE_TRIP_RATE``
(docs/rollouts.md, "Thin data").

No data is never failure and never pass (flagger#1035, argo-rollouts#1466). This module must
not query anything or read the clock.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .burnrate import (
    WORKBOOK_PAIRS,
    WindowPair,
    burn_rate,
    format_duration,
    sanitize_count,
    sanitize_ratio,
    scale_pairs,
    windows_of,
)
from .promql import AVAILABILITY, DEFAULT_ENDPOINTS, LATENCY, QUALITY, SLI_NAMES

__all__ = [
    "AnalysisConfig",
    "AnalysisInputs",
    "Outcome",
    "PairVerdict",
    "Reason",
    "RevisionMeasurements",
    "SLO",
    "Evidence",
    "Verdict",
    "decide",
    "sequential_evidence",
]


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"


class Reason:
    """Reason codes (also used as Kubernetes Event reasons)."""

    WITHIN_BUDGET = "BurnRateWithinBudget"
    AVAILABILITY_EXCEEDED = "AvailabilityBurnRateExceeded"
    LATENCY_EXCEEDED = "LatencyBurnRateExceeded"
    QUALITY_EXCEEDED = "QualityBurnRateExceeded"
    INSUFFICIENT_TRAFFIC = "InsufficientTraffic"
    BURN_NOT_SIGNIFICANT = "BurnNotYetSignificant"
    STABLE_ALSO_BURNING = "StableAlsoBurning"
    WARMING_UP = "AnalysisWarmingUp"
    SLI_DATA_MISSING = "SLIDataMissing"
    METRICS_UNAVAILABLE = "MetricsUnavailable"

    EXCEEDED_BY_SLI = {
        AVAILABILITY: AVAILABILITY_EXCEEDED,
        LATENCY: LATENCY_EXCEEDED,
        QUALITY: QUALITY_EXCEEDED,
    }


@dataclass(frozen=True)
class SLO:
    """One SLI's objective (share of good events, in (0, 1))."""

    sli: str
    objective: float
    #: Latency only: the threshold in seconds (a histogram bucket must sit exactly there).
    threshold_s: float | None = None

    def __post_init__(self) -> None:
        if self.sli not in SLI_NAMES:
            raise ValueError(f"unknown SLI {self.sli!r}")
        if not 0.0 < self.objective < 1.0:
            raise ValueError(f"{self.sli} objective must be in (0, 1), got {self.objective!r}")
        if self.sli == LATENCY and not (self.threshold_s and self.threshold_s > 0):
            raise ValueError("the latency SLO needs a positive threshold in seconds")

    @property
    def budget(self) -> float:
        return 1.0 - self.objective


def _num(spec: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in spec and spec[name] is not None:
            return spec[name]
    return default


@dataclass(frozen=True)
class AnalysisConfig:
    """What the analysis compares against. Build it with :meth:`from_spec`."""

    slos: tuple[SLO, ...]
    pairs: tuple[WindowPair, ...]
    interval_s: int = 60
    min_requests: int = 50
    stable_burn_ratio: float = 0.5
    #: What an SLI with traffic but no series does: "Hold" (inconclusive) or "Fail".
    on_no_data: str = "Hold"
    extra_selector: str = ""
    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS

    def __post_init__(self) -> None:
        if not self.slos:
            raise ValueError("the analysis needs at least one SLO")
        if not self.pairs:
            raise ValueError("the analysis needs at least one window pair")
        if self.min_requests < 0 or self.interval_s <= 0 or self.stable_burn_ratio <= 0:
            raise ValueError("minRequests >= 0, interval > 0 and stableBurnRatio > 0 required")
        if self.on_no_data not in ("Hold", "Fail"):
            raise ValueError(f"onNoData must be Hold or Fail, got {self.on_no_data!r}")

    @property
    def windows(self) -> tuple[int, ...]:
        return windows_of(self.pairs)

    @classmethod
    def from_spec(cls, slo: Mapping[str, Any] | None, analysis: Mapping[str, Any] | None = None) -> AnalysisConfig:
        """From ``InferencePool.spec.slo`` and ``spec.rollout.analysis`` (field names of
        ``crds/inferencepools.diffusion.serving.dev.yaml``; the CRD's defaults are repeated
        here so a body without them reads the same).

        ``slo``: ``availability.objective`` (default 0.99), ``latency.{objective,
        thresholdSeconds}``, ``quality.objective``; an SLI without an objective is not judged.
        ``analysis``: ``intervalSeconds`` (60), ``minRequests`` (50), ``windows`` (the
        Workbook pairs), ``scaleWindows`` (true: scaled to the interval, see
        :mod:`.burnrate`), ``shortWindowIntervals`` (1), ``stableBurnRatio`` (0.5),
        ``onNoData`` (Hold), ``extraSelector``.
        """
        slo = dict(slo or {})
        analysis = analysis or {}
        slo.setdefault("availability", {})
        slos: list[SLO] = []
        for name in SLI_NAMES:
            item = dict(slo.get(name) or {})
            if name == AVAILABILITY:
                item.setdefault("objective", 0.99)
            objective = _num(item, "objective")
            if objective is None:
                continue
            threshold = _num(item, "thresholdSeconds")
            slos.append(SLO(name, float(objective), float(threshold) if threshold is not None else None))
        interval = int(_num(analysis, "intervalSeconds", default=60))
        pairs = tuple(WindowPair.from_dict(w) for w in analysis.get("windows") or ()) or WORKBOOK_PAIRS
        if _num(analysis, "scaleWindows", default=True):
            pairs = scale_pairs(
                interval, short_window_intervals=int(_num(analysis, "shortWindowIntervals", default=1)), pairs=pairs
            )
        return cls(
            slos=tuple(slos),
            pairs=pairs,
            interval_s=interval,
            min_requests=int(_num(analysis, "minRequests", default=50)),
            stable_burn_ratio=float(_num(analysis, "stableBurnRatio", default=0.5)),
            on_no_data=str(_num(analysis, "onNoData", default="Hold")).capitalize(),
            extra_selector=str(_num(analysis, "extraSelector", default="")),
        )

    @classmethod
    def from_pool_spec(cls, spec: Mapping[str, Any]) -> AnalysisConfig:
        """From a whole ``InferencePool.spec``."""
        return cls.from_spec(spec.get("slo"), (spec.get("rollout") or {}).get("analysis"))


@dataclass(frozen=True)
class RevisionMeasurements:
    """One revision's measurements: ``error_ratios[sli][window_s]`` (bad/total, ``None`` = no
    data) and ``requests[window_s]`` (requests served in the window, ``None`` = no data)."""

    error_ratios: Mapping[str, Mapping[int, float | None]] = field(default_factory=dict)
    requests: Mapping[int, float | None] = field(default_factory=dict)

    def ratio(self, sli: str, window_s: int) -> float | None:
        return sanitize_ratio(self.error_ratios.get(sli, {}).get(window_s))

    def count(self, window_s: int) -> float:
        return sanitize_count(self.requests.get(window_s)) or 0.0


@dataclass(frozen=True)
class AnalysisInputs:
    """Everything one analysis needs. ``error`` set means the provider failed."""

    canary: RevisionMeasurements = field(default_factory=RevisionMeasurements)
    stable: RevisionMeasurements | None = None
    #: Seconds the canary has carried traffic; ``None`` arms every pair.
    canary_age_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class WindowNumbers:
    window_s: int
    ratio: float | None
    burn: float | None


@dataclass(frozen=True)
class PairVerdict:
    """The numbers for one SLI and one window pair."""

    sli: str
    objective: float
    pair: WindowPair
    canary_long: WindowNumbers
    canary_short: WindowNumbers
    stable_long: WindowNumbers | None
    stable_short: WindowNumbers | None
    canary_requests: float
    armed: bool
    judged: bool
    tripped: bool
    stable_also_burning: bool
    #: Why a pair is not judged: "" | "warming-up" | "insufficient-traffic" | "no-data" |
    #: "collecting" (the sequential test has not decided yet).
    skipped: str = ""
    #: "burn-rate" (large counts: the burn rates judge) or "sequential" (small counts: the
    #: sequential test on the counts judges); "" when the pair had nothing to judge.
    method: str = ""
    #: The sequential test on the long window's counts; ``None`` when it had no data.
    evidence: Evidence | None = None

    @property
    def burning(self) -> bool:
        """Canary at or above the factor in both windows (whether or not beyond chance)."""
        return _both_at_least(self.canary_long, self.canary_short, self.pair.factor, self.pair.factor)

    @property
    def threshold_ratio(self) -> float:
        """The error ratio the factor corresponds to: ``factor x (1 - objective)``."""
        return self.pair.factor * (1.0 - self.objective)

    @property
    def blamed(self) -> bool:
        return self.tripped and not self.stable_also_burning

    def describe(self) -> str:
        def pct(x: float | None) -> str:
            return "no data" if x is None else f"{x * 100:.3g}%"

        def burn(x: float | None) -> str:
            return "no data" if x is None else f"{x:.3g}x"

        text = (
            f"{self.sli} burn rate {burn(self.canary_long.burn)} over {format_duration(self.pair.long_s)} and "
            f"{burn(self.canary_short.burn)} over {format_duration(self.pair.short_s)} vs threshold "
            f"{self.pair.factor:g}x (error ratio {pct(self.canary_short.ratio)} vs {pct(self.threshold_ratio)}, "
            f"objective {self.objective * 100:g}%)"
        )
        if self.stable_short is not None:
            stable_long = self.stable_long.burn if self.stable_long else None
            text += f"; stable {burn(stable_long)}/{burn(self.stable_short.burn)}"
        return text


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    message: str
    pairs: tuple[PairVerdict, ...] = ()
    #: The pair that decided a fail (or the first shared trip); ``None`` otherwise.
    decisive: PairVerdict | None = None

    @property
    def sli(self) -> str | None:
        return self.decisive.sli if self.decisive else None


def _numbers(m: RevisionMeasurements, sli: str, window_s: int, slo: SLO) -> WindowNumbers:
    ratio = m.ratio(sli, window_s)
    return WindowNumbers(window_s, ratio, burn_rate(ratio, slo.objective))


#: Relative slack for "at or above the factor": a burn is a ratio divided by ``1 - objective``,
#: and ``0.0144 / (1 - 0.999)`` is 14.399999999999999 in floating point.
_EPS = 1e-9


def _at_least(value: float, floor: float) -> bool:
    return value >= floor * (1.0 - _EPS)


def _both_at_least(a: WindowNumbers | None, b: WindowNumbers | None, floor_a: float, floor_b: float) -> bool:
    return (
        a is not None
        and b is not None
        and a.burn is not None
        and b.burn is not None
        and _at_least(a.burn, floor_a)
        and _at_least(b.burn, floor_b)
    )


#: Probability that the sequential test trips a pair of a canary that meets its SLO, over a
#: whole rollout (Ville's inequality): with the three Workbook pairs on one SLI at most 3e-5 per
#: rollout, 0 expected in 1000 (benchmarks/rollout_false_alarms.py measures it).
FALSE_TRIP_RATE = 1e-5
#: A pair with small counts is cleared once the evidence favours "meets the SLO" over "errs at
#: the factor" 1 / CLEAR_MISS_RATE to 1 (5:1). Stricter clearing holds thin-traffic canaries
#: into their progress deadline: at 99.9% and 0.5 canary requests/s, 0.05 rolled back 30% of
#: canaries exactly at their SLO on the deadline and 0.2 5% (200 simulated rollouts each; 3.1%
#: in benchmarks/rollout_false_alarms.py's 1000), while a 20x-budget canary was never promoted
#: at either (docs/rollouts.md, "Thin data").
CLEAR_MISS_RATE = 0.2
#: The test's alternative is the pair's factor, but at least this many times the budget: at 1x
#: a canary exactly at its SLO and one a hair above cannot be told apart by any count.
MIN_ALTERNATIVE_FACTOR = 2.0
#: Burn rates judge on their own once the short window would hold this many errors at the
#: factor; below it one error more or less moves the burn across the factor.
LARGE_EXPECTED_ERRORS = 10.0


@dataclass(frozen=True)
class Evidence:
    """A sequential test on one window's counts: ``log_lr`` is the log likelihood ratio of
    "errs at ``alternative``" against "meets the SLO (errs at ``null``)"."""

    requests: int
    errors: int
    null: float
    alternative: float
    log_lr: float

    @property
    def trip_at(self) -> float:
        return math.log(1.0 / FALSE_TRIP_RATE)

    @property
    def clear_at(self) -> float:
        return math.log(CLEAR_MISS_RATE)

    @property
    def significant(self) -> bool:
        return self.log_lr >= self.trip_at

    @property
    def cleared(self) -> bool:
        return self.log_lr <= self.clear_at

    @property
    def clean_requests_to_clear(self) -> int:
        """How many more error-free requests would clear it (0 when cleared)."""
        step = math.log((1.0 - self.alternative) / (1.0 - self.null))  # < 0
        return max(0, math.ceil((self.clear_at - self.log_lr) / step - 1e-9))

    def describe(self) -> str:
        return (f"{self.errors} errors in {self.requests} requests, evidence {self.log_lr:.3g} "
                f"(trips at {self.trip_at:.3g}, clears at {self.clear_at:.3g})")


def sequential_evidence(ratio: float | None, requests: float, objective: float, factor: float) -> Evidence | None:
    """The sequential test for a pair at ``factor`` on counts ``(ratio x requests, requests)``;
    ``None`` without data. Counts come from ``rate()``/``increase()``, so they are rounded."""
    n = int(round(sanitize_count(requests) or 0.0))
    if ratio is None or n <= 0:
        return None
    k = min(n, int(round(ratio * n)))
    p0 = 1.0 - objective
    p1 = min(max(factor, MIN_ALTERNATIVE_FACTOR) * p0, 1.0 - 1e-6)
    log_lr = k * math.log(p1 / p0) + (n - k) * math.log((1.0 - p1) / (1.0 - p0))
    return Evidence(requests=n, errors=k, null=p0, alternative=p1, log_lr=log_lr)


def _large_counts(requests: float, pair: WindowPair, slo: SLO, config: AnalysisConfig) -> bool:
    return requests >= max(config.min_requests, 1) and requests * pair.factor * slo.budget >= LARGE_EXPECTED_ERRORS


def _judge_pair(slo: SLO, pair: WindowPair, inputs: AnalysisInputs, config: AnalysisConfig) -> PairVerdict:
    c = inputs.canary
    c_long, c_short = _numbers(c, slo.sli, pair.long_s, slo), _numbers(c, slo.sli, pair.short_s, slo)
    s_long = s_short = None
    if inputs.stable is not None:
        s_long, s_short = _numbers(inputs.stable, slo.sli, pair.long_s, slo), _numbers(
            inputs.stable, slo.sli, pair.short_s, slo
        )
    requests = c.count(pair.short_s)
    armed = inputs.canary_age_s is None or inputs.canary_age_s >= pair.short_s
    skipped = method = ""
    evidence = None
    tripped = False
    if not armed:
        skipped = "warming-up"
    elif requests == 0:
        skipped = "insufficient-traffic"
    elif c_long.burn is None or c_short.burn is None:
        skipped = "no-data"
    else:
        evidence = sequential_evidence(c_long.ratio, c.count(pair.long_s), slo.objective, pair.factor)
        burning = _both_at_least(c_long, c_short, pair.factor, pair.factor)
        tripped = burning and evidence is not None and evidence.significant
        large = _large_counts(requests, pair, slo, config)
        method = "burn-rate" if large else "sequential"
        cleared = large or (evidence is not None and evidence.cleared)
        if not tripped and (burning or not cleared):
            skipped = "collecting"
    judged = not skipped
    stable_also = False
    if tripped and inputs.stable is not None and inputs.stable.count(pair.short_s) >= max(config.min_requests, 1):
        k = config.stable_burn_ratio
        stable_also = _both_at_least(
            s_long,
            s_short,
            max(pair.factor, k * c_long.burn),  # type: ignore[operator]
            max(pair.factor, k * c_short.burn),  # type: ignore[operator]
        )
    return PairVerdict(
        sli=slo.sli,
        objective=slo.objective,
        pair=pair,
        canary_long=c_long,
        canary_short=c_short,
        stable_long=s_long,
        stable_short=s_short,
        canary_requests=requests,
        armed=armed,
        judged=judged,
        tripped=tripped,
        stable_also_burning=stable_also,
        skipped=skipped,
        method=method,
        evidence=evidence,
    )


def decide(inputs: AnalysisInputs, config: AnalysisConfig) -> Verdict:
    """The verdict for one analysis (see the module docstring for the rules)."""
    if inputs.error is not None:
        return Verdict(Outcome.ERROR, Reason.METRICS_UNAVAILABLE, f"metrics provider failed: {inputs.error}")

    pairs = tuple(_judge_pair(slo, pair, inputs, config) for slo in config.slos for pair in config.pairs)

    blamed = [p for p in pairs if p.blamed]
    if blamed:
        first = blamed[0]
        return Verdict(Outcome.FAIL, Reason.EXCEEDED_BY_SLI[first.sli], first.describe(), pairs, first)

    shared = [p for p in pairs if p.tripped]
    if shared:
        first = shared[0]
        return Verdict(
            Outcome.INCONCLUSIVE,
            Reason.STABLE_ALSO_BURNING,
            f"stable revision burns as badly as the canary: {first.describe()}",
            pairs,
            first,
        )

    if not any(p.armed for p in pairs):
        shortest = min(p.short_s for p in config.pairs)
        return Verdict(
            Outcome.INCONCLUSIVE,
            Reason.WARMING_UP,
            f"canary has carried traffic for {format_duration(inputs.canary_age_s or 0)}, "
            f"less than the shortest window {format_duration(shortest)}",
            pairs,
        )

    # A paging pair burning but not yet beyond chance holds, even when another pair of the SLI
    # is clear: a pass must not promote past a pair still gathering evidence of a fault. The 1x
    # pair does not hold (as for arming, state_machine.unarmed_pairs_blocking): a canary exactly
    # at its SLO burns at 1x half the time, and no canary of minutes can settle that.
    doubtful = [p for p in pairs if p.skipped == "collecting" and p.burning and p.pair.factor > 1]
    if doubtful:
        first = doubtful[0]
        assert first.evidence is not None
        return Verdict(
            Outcome.INCONCLUSIVE,
            Reason.BURN_NOT_SIGNIFICANT,
            f"{first.describe()}; not yet beyond chance for a canary meeting its SLO: {first.evidence.describe()}",
            pairs,
            first,
        )

    for slo in config.slos:
        mine = [p for p in pairs if p.sli == slo.sli and p.armed]
        if any(p.judged for p in mine):
            continue
        if any(p.skipped == "no-data" for p in mine):
            return Verdict(
                Outcome.FAIL if config.on_no_data == "Fail" else Outcome.INCONCLUSIVE,
                Reason.SLI_DATA_MISSING,
                f"no {slo.sli} data for the canary although it served traffic"
                + (f" (is there a histogram bucket at le={slo.threshold_s:g}?)" if slo.sli == LATENCY else ""),
                pairs,
            )
        collecting = [p for p in mine if p.evidence is not None]
        if collecting:
            nearest = min(collecting, key=lambda p: p.evidence.clean_requests_to_clear)  # type: ignore[union-attr]
            ev = nearest.evidence
            assert ev is not None
            message = (f"{slo.sli}: canary served {ev.requests} requests over "
                       f"{format_duration(min(nearest.pair.long_s, inputs.canary_age_s or nearest.pair.long_s))} "
                       f"with {ev.errors} errors; about {ev.clean_requests_to_clear} more without errors clear "
                       f"{nearest.pair.factor:g}x at objective {slo.objective * 100:g}% (sequential test)")
        else:
            most = max(p.canary_requests for p in mine)
            message = f"{slo.sli}: canary served {most:.0f} requests in its short windows"
        return Verdict(Outcome.INCONCLUSIVE, Reason.INSUFFICIENT_TRAFFIC, message, pairs)

    return Verdict(
        Outcome.PASS,
        Reason.WITHIN_BUDGET,
        "; ".join(p.describe() for p in pairs if p.judged and p.pair == _fastest_judged(pairs, p.sli)),
        pairs,
    )


def _fastest_judged(pairs: Sequence[PairVerdict], sli: str) -> WindowPair | None:
    judged = [p.pair for p in pairs if p.sli == sli and p.judged]
    return min(judged, key=lambda w: w.short_s) if judged else None
