"""False rollbacks and thin traffic: seeded simulations of whole rollouts through the real
verdict and state machine (tests/support/simulated_rollouts.py; the 1000-rollout figures, with
the analysis before the sequential test beside them, are benchmarks/rollout_false_alarms.py).

Before the sequential test, a canary erring exactly at its 99.9% SLO was rolled back in about
60% of rollouts at a 10 s interval (one error in a short window burns far past the factor), and
a 30%-error canary at 0.3 requests/s was held until its 6-minute window armed.
"""

from __future__ import annotations

import pytest

from tests.support.simulated_rollouts import Setting, simulate, tally

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("setting", [Setting(rps=2, interval_s=60), Setting(rps=10, interval_s=10)],
                         ids=["60s-2rps", "10s-10rps"])
def test_canaries_at_the_slo_edge_are_promoted_not_rolled_back(setting):
    assert tally(simulate(setting, rollouts=60, seed=21)) == {"Promoted": 60}


def test_a_broken_canary_is_rolled_back_at_the_first_analysis():
    outcomes = simulate(Setting(rps=2, interval_s=60, burn=300), rollouts=50, seed=21)  # 30% errors
    assert tally(outcomes) == {"RolledBack:AvailabilityBurnRateExceeded": 50}
    assert max(o.traffic_s for o in outcomes) == 60


def test_thin_traffic_is_judged_on_its_counts():
    # 0.3 canary requests/s: 18 per minute, below minRequests 50 in the fast pair's 1-minute short
    # window. 30% errors in a few requests are beyond chance at 99%: rolled back by the sequential
    # test within three analyses, most at the first (before: only once the 6-minute window armed,
    # at 360 s); healthy canaries at the same traffic are promoted.
    broken = simulate(Setting(objective=0.99, rps=0.3, interval_s=60, burn=30), rollouts=50, seed=21)
    assert tally(broken) == {"RolledBack:AvailabilityBurnRateExceeded": 50}
    times = sorted(o.traffic_s for o in broken)
    assert times[len(times) // 2] <= 60 and times[-1] <= 180, times
    assert all("sequential" in o.methods for o in broken)
    healthy = simulate(Setting(objective=0.99, rps=0.3, interval_s=60), rollouts=50, seed=21)
    assert tally(healthy) == {"Promoted": 50}
