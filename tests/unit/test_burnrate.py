"""Burn-rate arithmetic, Workbook defaults and the canary scaling rule."""

from __future__ import annotations

import math

import pytest

from diffusion_operator.rollout.burnrate import (
    WORKBOOK_PAIRS,
    WindowPair,
    burn_rate,
    format_duration,
    sanitize_count,
    sanitize_ratio,
    scale_pairs,
    windows_of,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("ratio", "objective", "expected"),
    [
        (0.001, 0.999, 1.0),
        (0.0144, 0.999, 14.4),
        (0.3, 0.999, 300.0),
        (0.06, 0.99, 6.0),
        (0.0, 0.999, 0.0),
        (1.0, 0.9, 10.0),
        # clamped: rate extrapolation can push 1 - good/total slightly out of [0, 1]
        (-0.0001, 0.999, 0.0),
        (1.2, 0.9, 10.0),
        # no data
        (None, 0.999, None),
        (math.nan, 0.999, None),
        (math.inf, 0.999, None),
        (-math.inf, 0.999, None),
    ],
)
def test_burn_rate(ratio, objective, expected):
    got = burn_rate(ratio, objective)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize("objective", [0.0, 1.0, 1.5, -0.1])
def test_burn_rate_rejects_objectives_without_budget(objective):
    with pytest.raises(ValueError):
        burn_rate(0.01, objective)


@pytest.mark.parametrize(
    ("value", "ratio", "count"),
    [
        (0.5, 0.5, 0.5),
        (12.0, 1.0, 12.0),
        (-3.0, 0.0, None),  # a negative increase is a counter-reset artefact: not data
        (math.nan, None, None),
        (math.inf, None, None),
        (None, None, None),
        ("abc", None, None),
        ("0.25", 0.25, 0.25),
    ],
)
def test_sanitize(value, ratio, count):
    assert sanitize_ratio(value) == ratio
    assert sanitize_count(value) == count


def test_workbook_pairs_spend_the_documented_budget():
    assert [(p.long_s, p.short_s, p.factor) for p in WORKBOOK_PAIRS] == [
        (3600, 300, 14.4),
        (21600, 1800, 6.0),
        (259200, 21600, 1.0),
    ]
    assert [round(p.budget_consumed(), 4) for p in WORKBOOK_PAIRS] == [0.02, 0.05, 0.1]
    assert all(p.long_s == 12 * p.short_s for p in WORKBOOK_PAIRS)


def test_scaling_rule_worked_example():
    """The docstring's example: 60 s interval -> 12m/1m, 72m/6m, 14.4h/72m; factors kept."""
    pairs = scale_pairs(60)
    assert [(p.long_s, p.short_s, p.factor) for p in pairs] == [
        (720, 60, 14.4),
        (4320, 360, 6.0),
        (51840, 4320, 1.0),
    ]
    assert [p.name for p in pairs] == ["14.4x 12m/1m", "6x 1h12m/6m", "1x 14h24m/1h12m"]
    assert windows_of(pairs) == (60, 360, 720, 4320, 51840)


@pytest.mark.parametrize(
    ("interval", "intervals", "fast_short", "fast_long"),
    [(10, 1, 10, 120), (10, 3, 30, 360), (5, 1, 5, 60), (300, 1, 300, 3600)],
)
def test_scaling_keeps_ratios(interval, intervals, fast_short, fast_long):
    pairs = scale_pairs(interval, short_window_intervals=intervals)
    assert (pairs[0].short_s, pairs[0].long_s) == (fast_short, fast_long)
    assert all(p.long_s == 12 * p.short_s for p in pairs)
    assert pairs[1].short_s == 6 * pairs[0].short_s
    assert [p.factor for p in pairs] == [p.factor for p in WORKBOOK_PAIRS]


def test_scaling_a_tiny_interval_never_gives_zero_windows():
    pairs = scale_pairs(0.01)
    assert min(p.short_s for p in pairs) >= 1


@pytest.mark.parametrize("bad", [dict(analysis_interval_s=0), dict(analysis_interval_s=10, short_window_intervals=0)])
def test_scaling_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        scale_pairs(**bad)


@pytest.mark.parametrize(
    ("kwargs"),
    [dict(long_s=60, short_s=120, factor=1), dict(long_s=0, short_s=0, factor=1), dict(long_s=60, short_s=5, factor=0),
     dict(long_s=60, short_s=5, factor=math.inf)],
)
def test_window_pair_validation(kwargs):
    with pytest.raises(ValueError):
        WindowPair(**kwargs)


def test_window_pair_round_trips_through_dict():
    p = WindowPair(720, 60, 14.4)
    assert WindowPair.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(300, "5m"), (3600, "1h"), (90, "90s"), (51840, "14h24m"), (259200, "3d"), (0, "0s"), (4320, "1h12m")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
