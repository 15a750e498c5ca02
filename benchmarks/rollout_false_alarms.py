#!/usr/bin/env python3
"""False rollbacks and missed faults of the canary analysis, simulated (no cluster, pure).

Runs ``tests/support/healthy_rollouts.py``'s Monte Carlo through the real ``verdict.decide``
and ``state_machine.transition``: every analysis interval, Poisson traffic at ``rps`` with
errors at ``burn`` x the SLO's error budget, summed over each window cut to the canary's age;
default rollout steps (4 x 300 s), Workbook pairs scaled to the interval, minRequests 50, no
stable to excuse the canary (the worst case for false rollbacks). Each setting runs twice in
the same process: with the binomial test (the operator's rule) and with burn rates alone
(``FALSE_TRIP_RATE`` forced off: the rule before), so the table's ratio compares the two on
the same seeds.

Usage: .venv/bin/python benchmarks/rollout_false_alarms.py [--rollouts 1000] [--seed 11]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from diffusion_operator.rollout import verdict  # noqa: E402
from tests.support.healthy_rollouts import Setting, simulate  # noqa: E402

#: (label, setting): the SLO's edge (burn 1x) is healthy; the faults must be caught.
CASES = [
    ("healthy 1x, 99.9%, 60 s interval, 2 req/s", Setting(rps=2, interval_s=60)),
    ("healthy 1x, 99.9%, 60 s interval, 50 req/s", Setting(rps=50, interval_s=60)),
    ("healthy 1x, 99.9%, 10 s interval, 10 req/s", Setting(rps=10, interval_s=10)),
    ("healthy 1x, 99.9%, 10 s interval, 50 req/s", Setting(rps=50, interval_s=10)),
    ("healthy 1x, 99%, 60 s interval, 2 req/s", Setting(objective=0.99, rps=2, interval_s=60)),
    ("fault 30% errors, 99.9%, 60 s, 2 req/s", Setting(rps=2, interval_s=60, burn=300)),
    ("fault 10x budget, 99.9%, 60 s, 2 req/s", Setting(rps=2, interval_s=60, burn=10)),
    ("fault 10x budget, 99%, 60 s, 2 req/s", Setting(objective=0.99, rps=2, interval_s=60, burn=10)),
]


def run(setting: Setting, rollouts: int, seed: int, binomial: bool) -> float:
    """The share of ``rollouts`` that ended rolled back."""
    saved = verdict.FALSE_TRIP_RATE
    verdict.FALSE_TRIP_RATE = saved if binomial else 2.0  # 2.0: every count passes the test
    try:
        outcomes, _ = simulate(setting, rollouts, seed=seed)
    finally:
        verdict.FALSE_TRIP_RATE = saved
    return sum(n for k, n in outcomes.items() if k.startswith("RolledBack")) / rollouts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rollouts", type=int, default=1000)
    p.add_argument("--seed", type=int, default=11)
    args = p.parse_args(argv)
    started = time.monotonic()
    print(f"| setting ({args.rollouts} rollouts each) | rolled back, binomial test | rolled back, burn rates alone "
          "| ratio |")
    print("|---|---|---|---|")
    for label, setting in CASES:
        with_test = run(setting, args.rollouts, args.seed, binomial=True)
        without = run(setting, args.rollouts, args.seed, binomial=False)
        ratio = f"{with_test / without:.2f}x" if without else ("-" if not with_test else "inf")
        print(f"| {label} | {with_test:.1%} | {without:.1%} | {ratio} |", flush=True)
    print(f"\n{time.monotonic() - started:.0f} s; FALSE_TRIP_RATE={verdict.FALSE_TRIP_RATE:g}, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
