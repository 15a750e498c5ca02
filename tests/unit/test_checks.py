"""Apply-time checks of the rollout analysis: what the API server accepts but judges nothing."""

from __future__ import annotations

import pytest

from diffusion_operator.conditions import Reason
from diffusion_operator.rollout.checks import check_analysis
from diffusion_operator.rollout.state_machine import RolloutSpec, Step
from diffusion_operator.rollout.verdict import AnalysisConfig

pytestmark = pytest.mark.unit


def analysis(interval_s: int, short_intervals: int = 1) -> AnalysisConfig:
    return AnalysisConfig.from_spec(None, {"intervalSeconds": interval_s, "shortWindowIntervals": short_intervals})


DEFAULT_STEPS = RolloutSpec()  # 4 steps of 300 s, interval 60 s


def test_the_defaults_fit_except_the_slow_paging_pair_is_named():
    findings = check_analysis(DEFAULT_STEPS, analysis(60), scrape_interval_s=15)
    # 14.4x 12m/1m and 6x 72m/6m arm within 20 min of steps; the 1x pair never gates.
    assert findings == []


def test_a_window_at_the_scrape_interval_is_reported():
    """60 s scrapes and a 60 s short window: rate() over it is empty (a 30% fault was caught at
    361 s instead of 61 s)."""
    [finding, *_] = check_analysis(DEFAULT_STEPS, analysis(60), scrape_interval_s=60)
    assert finding.reason == Reason.WINDOW_BELOW_SCRAPE_INTERVAL
    assert "1m window" in finding.message and "60s scrapes" in finding.message
    assert check_analysis(DEFAULT_STEPS, analysis(60, short_intervals=2), scrape_interval_s=60) == []


def test_a_paging_pair_longer_than_the_steps_is_reported_with_the_deadline_risk():
    three_minutes = RolloutSpec(steps=(Step(10, 60), Step(50, 60), Step(100, 60)), progress_deadline_s=600)
    findings = check_analysis(three_minutes, analysis(60), scrape_interval_s=15)
    assert [f.reason for f in findings] == [Reason.PAIR_CANNOT_ARM]
    assert "6x" in findings[0].message and "3m of canary traffic" in findings[0].message
    assert "rolled back on the deadline" not in findings[0].message  # 6 min < 60 s + 600 s
    short_deadline = RolloutSpec(steps=three_minutes.steps, progress_deadline_s=120)
    [f] = check_analysis(short_deadline, analysis(60), scrape_interval_s=15)
    assert "rolled back on the deadline" in f.message


def test_the_examples_judge_with_every_paging_pair():
    """What a new user applies first must not start with AnalysisValid=False."""
    from pathlib import Path

    import yaml

    from diffusion_operator.spec import PoolSpec

    repo = Path(__file__).resolve().parents[2]
    for path in sorted(repo.glob("examples/**/inferencepool-*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "InferencePool":
                continue
            pool = PoolSpec.from_body(doc["spec"])
            assert check_analysis(pool.rollout, pool.analysis, pool.scrape_interval) == [], path
