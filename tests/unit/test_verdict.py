"""Verdict tables: one analysis -> pass | fail | inconclusive | error, with the numbers."""

from __future__ import annotations

import math

import pytest

from diffusion_operator.rollout.burnrate import WindowPair
from diffusion_operator.rollout.verdict import (
    SLO,
    AnalysisConfig,
    AnalysisInputs,
    Outcome,
    Reason,
    RevisionMeasurements,
    decide,
)

pytestmark = pytest.mark.unit

FAST = WindowPair(720, 60, 14.4)
SLOW = WindowPair(4320, 360, 6.0)
WINDOWS = (60, 360, 720, 4320)

CFG = AnalysisConfig(
    slos=(SLO("availability", 0.999), SLO("latency", 0.99, threshold_s=2.0), SLO("quality", 0.99)),
    pairs=(FAST, SLOW),
    min_requests=100,
)


def rev(availability=0.0, latency=0.0, quality=0.0, requests=1000.0, **per_window):
    """Measurements with one value for every window; ``availability_60=0.3`` overrides one."""
    values = {"availability": availability, "latency": latency, "quality": quality}
    ratios = {}
    for sli, value in values.items():
        ratios[sli] = {w: per_window.get(f"{sli}_{w}", value) for w in WINDOWS}
    counts = {w: per_window.get(f"requests_{w}", requests) for w in WINDOWS}
    return RevisionMeasurements(error_ratios=ratios, requests=counts)


HEALTHY = rev(availability=0.0005, latency=0.002, quality=0.001)

CASES = [
    # id, inputs, outcome, reason
    ("healthy", AnalysisInputs(HEALTHY, HEALTHY), Outcome.PASS, Reason.WITHIN_BUDGET),
    ("healthy-no-stable", AnalysisInputs(HEALTHY, None), Outcome.PASS, Reason.WITHIN_BUDGET),
    ("30pct-errors", AnalysisInputs(rev(availability=0.3), HEALTHY), Outcome.FAIL, Reason.AVAILABILITY_EXCEEDED),
    ("30pct-errors-no-stable", AnalysisInputs(rev(availability=0.3), None), Outcome.FAIL, Reason.AVAILABILITY_EXCEEDED),
    ("slow-canary", AnalysisInputs(rev(latency=0.5), HEALTHY), Outcome.FAIL, Reason.LATENCY_EXCEEDED),
    ("blank-images", AnalysisInputs(rev(quality=0.2), HEALTHY), Outcome.FAIL, Reason.QUALITY_EXCEEDED),
    # shared outage: stable as bad -> the canary is not to blame
    ("stable-also-burning", AnalysisInputs(rev(availability=0.3), rev(availability=0.28)), Outcome.INCONCLUSIVE,
     Reason.STABLE_ALSO_BURNING),
    # stable trips too, but the canary burns far worse (300x vs 20x): canary to blame
    ("stable-burning-less", AnalysisInputs(rev(availability=0.3), rev(availability=0.02)), Outcome.FAIL,
     Reason.AVAILABILITY_EXCEEDED),
    # stable's burn rests on too few requests to excuse anything
    ("stable-burning-no-traffic", AnalysisInputs(rev(availability=0.3), rev(availability=0.3, requests=5)),
     Outcome.FAIL, Reason.AVAILABILITY_EXCEEDED),
    # AND inside a pair: recovered short windows do not fail
    ("recovered", AnalysisInputs(rev(availability_60=0.0, availability_360=0.0), HEALTHY), Outcome.PASS,
     Reason.WITHIN_BUDGET),
    # a blip: short windows hot, long windows fine
    ("blip", AnalysisInputs(rev(availability=0.001, availability_60=0.5, availability_360=0.5), HEALTHY),
     Outcome.PASS, Reason.WITHIN_BUDGET),
    # OR across pairs: 10x fails only the 6x pair
    ("10x-slow-pair", AnalysisInputs(rev(availability=0.01), HEALTHY), Outcome.FAIL, Reason.AVAILABILITY_EXCEEDED),
    # empty results everywhere (no series yet)
    ("empty", AnalysisInputs(RevisionMeasurements(), RevisionMeasurements()), Outcome.INCONCLUSIVE,
     Reason.INSUFFICIENT_TRAFFIC),
    # zero traffic: increase() = 0 and every ratio 0/0 = NaN
    ("zero-traffic", AnalysisInputs(rev(math.nan, math.nan, math.nan, requests=0.0), HEALTHY),
     Outcome.INCONCLUSIVE, Reason.INSUFFICIENT_TRAFFIC),
    # below minRequests the counts decide: 99 failures in 99 requests are far beyond chance
    ("below-min-requests-all-failed", AnalysisInputs(rev(availability=1.0, requests=99), HEALTHY), Outcome.FAIL,
     Reason.AVAILABILITY_EXCEEDED),
    # ... one error in 50 requests is a 20x burn at 99.9%, but within chance: hold, never pass
    ("one-error-in-fifty", AnalysisInputs(rev(availability=0.02, requests=50), HEALTHY), Outcome.INCONCLUSIVE,
     Reason.BURN_NOT_SIGNIFICANT),
    # ... and 50 clean requests are too few to clear 14.4x at 99.9%: hold (about 120 needed)
    ("fifty-clean", AnalysisInputs(rev(requests=50), HEALTHY), Outcome.INCONCLUSIVE, Reason.INSUFFICIENT_TRAFFIC),
    # traffic, but a SLI has no series (e.g. no bucket at the latency threshold)
    ("latency-bucket-missing", AnalysisInputs(rev(latency=None), HEALTHY), Outcome.INCONCLUSIVE,
     Reason.SLI_DATA_MISSING),
    ("nan-ratio-with-traffic", AnalysisInputs(rev(quality=math.nan), HEALTHY), Outcome.INCONCLUSIVE,
     Reason.SLI_DATA_MISSING),
    ("inf-ratio", AnalysisInputs(rev(availability=math.inf), HEALTHY), Outcome.INCONCLUSIVE, Reason.SLI_DATA_MISSING),
    # counter resets: rate() corrects them; artefacts that slip through are guarded
    ("reset-negative-ratio", AnalysisInputs(rev(availability=-0.02), HEALTHY), Outcome.PASS, Reason.WITHIN_BUDGET),
    ("reset-negative-count", AnalysisInputs(rev(requests=-50.0), HEALTHY), Outcome.INCONCLUSIVE,
     Reason.INSUFFICIENT_TRAFFIC),
    ("provider-error", AnalysisInputs(error="connection refused"), Outcome.ERROR, Reason.METRICS_UNAVAILABLE),
    # a failure still wins over a fault in another SLI's data
    ("fail-beats-missing-data", AnalysisInputs(rev(availability=0.3, quality=None), HEALTHY), Outcome.FAIL,
     Reason.AVAILABILITY_EXCEEDED),
]


@pytest.mark.parametrize(("inputs", "outcome", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verdict_table(inputs, outcome, reason):
    v = decide(inputs, CFG)
    assert (v.outcome, v.reason) == (outcome, reason), v.message


@pytest.mark.parametrize(
    ("age", "availability", "outcome", "reason"),
    [
        (None, 0.3, Outcome.FAIL, Reason.AVAILABILITY_EXCEEDED),
        (30, 0.3, Outcome.INCONCLUSIVE, Reason.WARMING_UP),  # short window not filled yet
        (60, 0.3, Outcome.FAIL, Reason.AVAILABILITY_EXCEEDED),  # fast pair armed at 60 s
        (100, 0.01, Outcome.PASS, Reason.WITHIN_BUDGET),  # 10x: only the 6x pair can see it, not armed yet
        (360, 0.01, Outcome.FAIL, Reason.AVAILABILITY_EXCEEDED),  # armed once its 6 min short window filled
        (30, 0.0, Outcome.INCONCLUSIVE, Reason.WARMING_UP),
    ],
)
def test_pairs_arm_when_their_short_window_fills(age, availability, outcome, reason):
    v = decide(AnalysisInputs(rev(availability=availability), HEALTHY, canary_age_s=age), CFG)
    assert (v.outcome, v.reason) == (outcome, reason), v.message


def test_low_traffic_canary_is_judged_on_its_counts():
    # 40 requests in the fast pair's short window, below minRequests: burn rates alone would not
    # judge it, the sequential test on the long window's 1000 clean requests clears it
    canary = rev(requests=1000.0, requests_60=40.0)
    v = decide(AnalysisInputs(canary, HEALTHY, canary_age_s=400), CFG)
    assert v.outcome == Outcome.PASS
    fast = [p for p in v.pairs if p.pair == FAST]
    assert all(p.judged and p.method == "sequential" and p.evidence.cleared for p in fast)


def test_fail_carries_the_numbers():
    v = decide(AnalysisInputs(rev(availability=0.3), HEALTHY), CFG)
    p = v.decisive
    assert p is not None and v.sli == "availability"
    assert p.pair == FAST
    assert p.canary_short.ratio == pytest.approx(0.3)
    assert p.canary_short.burn == pytest.approx(300.0)
    assert p.canary_long.burn == pytest.approx(300.0)
    assert p.stable_short.burn == pytest.approx(0.5)
    assert p.threshold_ratio == pytest.approx(0.0144)
    for text in ("availability", "300x", "14.4x", "12m", "1m", "30%", "1.44%", "99.9%"):
        assert text in v.message, text
    assert v.outcome == Outcome.FAIL and v.reason == "AvailabilityBurnRateExceeded"
    assert len(v.pairs) == len(CFG.slos) * len(CFG.pairs)
    first = v.pairs[0]
    assert (first.canary_short.window_s, first.canary_short.ratio, first.canary_short.burn) == (
        60, pytest.approx(0.3), pytest.approx(300.0))
    assert first.threshold_ratio == pytest.approx(0.0144)


def test_pass_message_lists_each_sli():
    v = decide(AnalysisInputs(HEALTHY, HEALTHY), CFG)
    assert all(sli in v.message for sli in ("availability", "latency", "quality"))


def test_stable_burn_ratio_is_configurable():
    strict = AnalysisConfig(slos=CFG.slos, pairs=CFG.pairs, stable_burn_ratio=1.0)
    inputs = AnalysisInputs(rev(availability=0.3), rev(availability=0.28))
    assert decide(inputs, strict).outcome == Outcome.FAIL
    assert decide(inputs, CFG).outcome == Outcome.INCONCLUSIVE


def test_min_requests_zero_still_needs_some_traffic():
    cfg = AnalysisConfig(slos=CFG.slos, pairs=CFG.pairs, min_requests=0)
    v = decide(AnalysisInputs(rev(availability=math.nan, requests=0.0), HEALTHY), cfg)
    assert v.reason == Reason.INSUFFICIENT_TRAFFIC


WORKBOOK_WINDOWS = [
    {"factor": 14.4, "longWindowSeconds": 3600, "shortWindowSeconds": 300},
    {"factor": 6, "longWindowSeconds": 21600, "shortWindowSeconds": 1800},
    {"factor": 1, "longWindowSeconds": 259200, "shortWindowSeconds": 21600},
]


@pytest.mark.parametrize(
    ("slo", "analysis", "expected"),
    [
        (  # a body with the CRD's defaults written out
            {"availability": {"objective": 0.999}, "latency": {"objective": 0.99, "thresholdSeconds": 2},
             "periodDays": 30},
            {"intervalSeconds": 60, "minRequests": 50, "windows": WORKBOOK_WINDOWS, "scaleWindows": True,
             "shortWindowIntervals": 1, "stableBurnRatio": 0.5, "onNoData": "Hold", "consecutiveErrorLimit": 4},
            dict(slis=("availability", "latency"), pairs=[(720, 60, 14.4), (4320, 360, 6.0), (51840, 4320, 1.0)],
                 min_requests=50, objectives=(0.999, 0.99)),
        ),
        (  # nothing written: the same defaults as the CRD
            None,
            None,
            dict(slis=("availability",), pairs=[(720, 60, 14.4), (4320, 360, 6.0), (51840, 4320, 1.0)],
                 min_requests=50, objectives=(0.99,)),
        ),
        (
            {"availability": {"objective": 0.995}, "quality": {"objective": 0.99}},
            {"intervalSeconds": 5, "shortWindowIntervals": 2, "minRequests": 20},
            dict(slis=("availability", "quality"), pairs=[(120, 10, 14.4), (720, 60, 6.0), (8640, 720, 1.0)],
                 min_requests=20, objectives=(0.995, 0.99)),
        ),
        (  # own pairs, scaled: k = 10 s / 30 s
            {},
            {"intervalSeconds": 10, "windows": [{"longWindowSeconds": 300, "shortWindowSeconds": 30, "factor": 10},
                                                {"longWindowSeconds": 900, "shortWindowSeconds": 90, "factor": 3}]},
            dict(slis=("availability",), pairs=[(100, 10, 10.0), (300, 30, 3.0)], min_requests=50,
                 objectives=(0.99,)),
        ),
        (  # own pairs as written
            {"latency": {}},
            {"scaleWindows": False, "windows": [{"longWindowSeconds": 60, "shortWindowSeconds": 10, "factor": 10}]},
            dict(slis=("availability",), pairs=[(60, 10, 10.0)], min_requests=50, objectives=(0.99,)),
        ),
    ],
)
def test_from_spec(slo, analysis, expected):
    cfg = AnalysisConfig.from_spec(slo, analysis)
    assert tuple(s.sli for s in cfg.slos) == expected["slis"]
    assert tuple(s.objective for s in cfg.slos) == expected["objectives"]
    assert [(p.long_s, p.short_s, p.factor) for p in cfg.pairs] == expected["pairs"]
    assert cfg.min_requests == expected["min_requests"]


def test_from_pool_spec():
    cfg = AnalysisConfig.from_pool_spec(
        {"slo": {"quality": {"objective": 0.9}},
         "rollout": {"analysis": {"onNoData": "Fail", "extraSelector": 'a="b"'}}}
    )
    assert [s.sli for s in cfg.slos] == ["availability", "quality"]
    assert (cfg.on_no_data, cfg.extra_selector) == ("Fail", 'a="b"')


def test_on_no_data_fail_rolls_back():
    cfg = AnalysisConfig(slos=CFG.slos, pairs=CFG.pairs, on_no_data="Fail")
    v = decide(AnalysisInputs(rev(latency=None), HEALTHY), cfg)
    assert (v.outcome, v.reason) == (Outcome.FAIL, Reason.SLI_DATA_MISSING)
    # no traffic is still not a failure
    v = decide(AnalysisInputs(rev(latency=None, requests=0.0), HEALTHY), cfg)
    assert v.outcome == Outcome.INCONCLUSIVE


@pytest.mark.parametrize(
    "slo",
    [{"latency": {"objective": 0.99}}, {"availability": {"objective": 1.0}}, {"quality": {"objective": 0}}],
)
def test_from_spec_rejects_unusable_slos(slo):
    with pytest.raises(ValueError):
        AnalysisConfig.from_spec(slo, {})


# --- measure() with a fake provider: NoData -> None, NaN -> None, ProviderError -> error -------------


class FakeProvider:
    def __init__(self, answer):
        self.answer = answer
        self.queries: list[str] = []

    def query(self, q: str) -> float:
        self.queries.append(q)
        return self.answer(q)


def test_measure_maps_no_data_and_nan_to_none():
    from diffusion_operator.rollout.metrics_provider import NoDataError, measure

    def answer(q):
        if 'revision="stable"' in q:
            raise NoDataError(q)
        if "increase(" in q:
            return 500.0
        return math.nan if "images_generated" in q else 0.3

    cfg = AnalysisConfig(slos=CFG.slos, pairs=(FAST,))
    inputs = measure(FakeProvider(answer), "p", "canary", "stable", cfg, canary_age_s=120)
    assert inputs.error is None and inputs.canary_age_s == 120
    assert inputs.canary.error_ratios["availability"] == {60: 0.3, 720: 0.3}
    assert inputs.canary.error_ratios["quality"] == {60: None, 720: None}
    assert inputs.canary.requests == {60: 500.0, 720: 500.0}
    assert inputs.stable.requests == {60: None, 720: None}
    assert decide(inputs, cfg).reason == Reason.AVAILABILITY_EXCEEDED


def test_measure_stops_at_the_first_provider_error():
    from diffusion_operator.rollout.metrics_provider import ProviderError, measure

    def answer(q):
        raise ProviderError("connection refused")

    fake = FakeProvider(answer)
    inputs = measure(fake, "p", "canary", "stable", CFG)
    assert inputs.error == "connection refused" and len(fake.queries) == 1
    assert decide(inputs, CFG).outcome == Outcome.ERROR


def test_measure_without_a_stable_revision():
    from diffusion_operator.rollout.metrics_provider import measure

    fake = FakeProvider(lambda q: 1000.0 if "increase(" in q else 0.0)
    inputs = measure(fake, "p", "canary", None, CFG)
    assert inputs.stable is None
    assert all('revision="canary"' in q for q in fake.queries)
    assert len(fake.queries) == len(CFG.windows) * (1 + len(CFG.slos))
    assert decide(inputs, CFG).outcome == Outcome.PASS


FAST_ONLY = AnalysisConfig(slos=(SLO("availability", 0.999),), pairs=(FAST,), min_requests=100)


@pytest.mark.parametrize(
    ("burns", "tripped"),
    [
        ({720: 20.0, 60: 20.0}, True),
        ({720: 14.4, 60: 14.4}, True),  # at the factor counts
        ({720: 20.0, 60: 10.0}, False),  # AND inside a pair: short window recovered
        ({720: 10.0, 60: 300.0}, False),  # a blip: long window not significant
        ({720: 20.0, 60: None}, False),  # a window without data never trips
    ],
)
def test_a_pair_trips_only_when_both_windows_burn(burns, tripped):
    ratios = {w: (None if b is None else b * 0.001) for w, b in burns.items()}
    canary = RevisionMeasurements(error_ratios={"availability": ratios}, requests={720: 1000.0, 60: 1000.0})
    v = decide(AnalysisInputs(canary, None), FAST_ONLY)
    [pair] = v.pairs
    assert pair.tripped is tripped
    assert (v.outcome == Outcome.FAIL) is tripped


def test_small_counts_are_judged_by_the_sequential_test_and_large_by_burn_rates():
    # 1000 requests at 99%: 1000 x 14.4 x 1% = 144 errors expected at the factor -> burn rates;
    # at 99.9% the same traffic expects 14.4 at 14.4x but 6 at 6x -> sequential for the 6x pair
    v = decide(AnalysisInputs(HEALTHY, HEALTHY), CFG)
    methods = {(p.sli, p.pair.factor): p.method for p in v.pairs}
    assert methods[("latency", 14.4)] == methods[("latency", 6.0)] == "burn-rate"
    assert methods[("availability", 14.4)] == "burn-rate" and methods[("availability", 6.0)] == "sequential"
    assert all(p.evidence is not None for p in v.pairs)


def test_sequential_evidence_adds_up_errors_and_clean_requests():
    from diffusion_operator.rollout.verdict import sequential_evidence

    ev = sequential_evidence(0.02, 50, 0.999, 14.4)  # 1 error in 50
    assert (ev.requests, ev.errors) == (50, 1)
    assert ev.log_lr == pytest.approx(math.log(14.4) + 49 * math.log((1 - 0.0144) / 0.999))
    assert not ev.significant and not ev.cleared
    # the count to clear says exactly how many more clean requests it takes
    more = ev.clean_requests_to_clear
    assert sequential_evidence(1 / (50 + more), 50 + more, 0.999, 14.4).cleared
    assert not sequential_evidence(1 / (49 + more), 49 + more, 0.999, 14.4).cleared
    # the 1x pair's alternative is twice the budget: exactly-at-SLO counts never look like it
    slow = sequential_evidence(0.001, 100_000, 0.999, 1.0)
    assert slow.alternative == pytest.approx(0.002) and slow.log_lr < 0
    assert sequential_evidence(None, 50, 0.999, 14.4) is None
    assert sequential_evidence(0.5, 0, 0.999, 14.4) is None


def test_a_paging_pair_burning_without_evidence_holds_even_when_another_pair_is_clear():
    # The 6x pair's windows saw 3 errors in 150 requests (burn 20x at 99.9%, not beyond chance);
    # the fast pair's windows are clean and large enough to clear. Passing here would promote
    # past a pair still gathering evidence of a fault.
    canary = rev(requests=400.0, requests_360=150.0, requests_4320=150.0, availability_360=0.02,
                 availability_4320=0.02)
    v = decide(AnalysisInputs(canary, None), CFG)
    assert (v.outcome, v.reason) == (Outcome.INCONCLUSIVE, Reason.BURN_NOT_SIGNIFICANT), v.message
    assert v.decisive is not None and v.decisive.pair == SLOW
    assert "3 errors in 150 requests" in v.message
