"""PromQL strings built from the sampler contract's metric names and labels."""

from __future__ import annotations

import re

import pytest

from diffusion_operator.rollout import promql

pytestmark = pytest.mark.unit

EP = 'endpoint=~"generations|generate|edits"'


def test_availability_counts_5xx_over_all_requests_of_the_revision():
    q = promql.availability_error_ratio("pool-a", "rev1", 60)
    assert q == (
        '(sum(rate(diffusion_sampler_requests_total{pool="pool-a",revision="rev1",' + EP + ',code=~"5.."}[60s]))'
        " or vector(0))"
        ' / sum(rate(diffusion_sampler_requests_total{pool="pool-a",revision="rev1",' + EP + "}[60s]))"
    )


@pytest.mark.parametrize(
    ("threshold", "le"),
    [(0.5, r'le=~"0\\.5"'), (2.0, r'le=~"2(\\.0)?"'), (10, r'le=~"10(\\.0)?"'), (0.25, r'le=~"0\\.25"')],
)
def test_latency_uses_the_exact_threshold_bucket(threshold, le):
    q = promql.latency_error_ratio("p", "r", 300, threshold)
    assert q.startswith("1 - (sum(rate(diffusion_sampler_request_duration_seconds_bucket{")
    assert le in q
    assert "diffusion_sampler_request_duration_seconds_count{" in q
    assert "[300s]" in q


@pytest.mark.parametrize(("threshold", "spelling", "matches"), [
    (2.0, "2", True), (2.0, "2.0", True), (2.0, "2.5", False), (2.0, "20", False),
    (0.5, "0.5", True), (0.5, "0.50", False), (0.5, "005", False),
])
def test_le_matcher_matches_only_the_threshold(threshold, spelling, matches):
    m = promql.le_matcher(threshold)
    # PromQL string -> regex: undo the string-literal escaping, anchor like Prometheus does.
    pattern = m.split("=~", 1)[1][1:-1].replace("\\\\", "\\")
    assert bool(re.fullmatch(pattern, spelling)) is matches


def test_quality_counts_blocked_images_blank_and_nan_over_images():
    q = promql.quality_error_ratio("p", "r", 60)
    assert 'diffusion_sampler_safety_checks_total{pool="p",revision="r",outcome="blocked_image"}' in q
    assert 'diffusion_sampler_blank_images_total{pool="p",revision="r",kind=~"blank|nan"}' in q
    assert q.endswith('/ sum(rate(diffusion_sampler_images_generated_total{pool="p",revision="r"}[60s]))')
    assert "blocked_prompt" not in q
    assert q.count("or vector(0)") == 2


def test_request_count_is_an_increase_over_the_window():
    assert promql.request_count("p", "r", 720) == (
        'sum(increase(diffusion_sampler_requests_total{pool="p",revision="r",' + EP + "}[720s]))"
    )


def test_extra_selector_scopes_every_series():
    q = promql.availability_error_ratio("p", "r", 60, extra_selector='namespace="prod", job=~"sampler.*"')
    assert q.count('namespace="prod", job=~"sampler.*"') == 2


@pytest.mark.parametrize("bad", ['namespace="a"} or vector(1) #', "namespace", 'ns=prod', '{ns="a"}'])
def test_extra_selector_rejects_anything_but_matchers(bad):
    with pytest.raises(ValueError):
        promql.request_count("p", "r", 60, extra_selector=bad)


def test_label_values_are_escaped():
    q = promql.request_count('p"x', "r\\1", 60)
    assert 'pool="p\\"x"' in q and 'revision="r\\\\1"' in q


def test_endpoint_filter_can_be_dropped():
    assert "endpoint" not in promql.request_count("p", "r", 60, endpoints=None)


@pytest.mark.parametrize(("seconds", "text"), [(60, "60s"), (0.4, "1s"), (1.6, "2s"), (51840, "51840s")])
def test_duration(seconds, text):
    assert promql.duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), float("inf")])
def test_duration_rejects_non_positive(seconds):
    with pytest.raises(ValueError):
        promql.duration(seconds)


def test_error_ratio_dispatch():
    assert promql.error_ratio("availability", "p", "r", 60) == promql.availability_error_ratio("p", "r", 60)
    latency = promql.error_ratio("latency", "p", "r", 60, latency_threshold_s=1)
    assert latency == promql.latency_error_ratio("p", "r", 60, 1)
    assert promql.error_ratio("quality", "p", "r", 60) == promql.quality_error_ratio("p", "r", 60)
    with pytest.raises(ValueError):
        promql.error_ratio("latency", "p", "r", 60)
    with pytest.raises(ValueError):
        promql.error_ratio("throughput", "p", "r", 60)


@pytest.mark.parametrize("sli", promql.SLI_NAMES)
def test_queries_are_balanced(sli):
    q = promql.error_ratio(sli, "p", "r", 60, latency_threshold_s=1.5, extra_selector='namespace="n"')
    assert q.count("(") == q.count(")") and q.count("{") == q.count("}") and q.count("[") == q.count("]")
