"""False rollbacks: seeded simulations of rollouts through the real verdict and state machine.

Before the binomial test, a canary erring exactly at its SLO (99.9%) was rolled back in about
1% of rollouts at a 60 s interval and 2 requests/s, and in about 60% at a 10 s interval (the
1x pair's burn estimate sits at its factor half the time). The full 1000-rollout figures are
``benchmarks/rollout_false_alarms.py``; this is the bounded form.
"""

from __future__ import annotations

import pytest

from diffusion_operator.rollout import verdict
from tests.support.healthy_rollouts import Setting, simulate

pytestmark = pytest.mark.unit

SETTINGS = [Setting(rps=2, interval_s=60), Setting(rps=10, interval_s=10)]


@pytest.mark.parametrize("setting", SETTINGS, ids=["60s-2rps", "10s-10rps"])
def test_canaries_at_the_slo_edge_are_promoted_not_rolled_back(setting):
    outcomes, _ = simulate(setting, rollouts=150, seed=21)
    assert outcomes == {"Promoted": 150}


def test_without_the_binomial_test_the_same_canaries_are_rolled_back(monkeypatch):
    monkeypatch.setattr(verdict, "FALSE_TRIP_RATE", 2.0)  # every count "beyond chance": burn rates alone
    outcomes, _ = simulate(Setting(rps=10, interval_s=10), rollouts=150, seed=21)
    assert outcomes["RolledBack:AvailabilityBurnRateExceeded"] > 30


def test_a_broken_canary_is_still_rolled_back_at_the_first_analysis():
    outcomes, times = simulate(Setting(rps=2, interval_s=60, burn=300), rollouts=50, seed=21)  # 30% errors
    assert outcomes == {"RolledBack:AvailabilityBurnRateExceeded": 50}
    assert max(times) == 60
