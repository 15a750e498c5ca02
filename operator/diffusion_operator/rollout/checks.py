"""Apply-time checks of a pool's rollout analysis: settings the API server accepts but that
would silently judge nothing (pure).

- A window at or below the scrape interval holds fewer than two samples: ``rate()`` over it is
  empty, and the pair it belongs to never trips (a 30% fault was caught at 361 s instead of
  61 s with 60 s scrapes). Windows need at least two scrapes; four are safer.
- A paging pair (factor above 1) whose short window is longer than all the steps' pauses
  cannot arm within the steps: the rollout holds at a step until it does
  (``state_machine.unarmed_pairs_blocking``), and when that wait is longer than the step's
  pause plus the progress deadline, a healthy canary is rolled back on the deadline.

The operator reports the result as the pool's ``AnalysisValid`` condition (a warning: the
rollout still runs) and one Warning Event when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..conditions import Reason
from .burnrate import format_duration
from .state_machine import RolloutSpec, traffic_seconds
from .verdict import AnalysisConfig


@dataclass(frozen=True)
class Finding:
    reason: str
    message: str


def check_analysis(rollout: RolloutSpec, analysis: AnalysisConfig, scrape_interval_s: int) -> list[Finding]:
    findings = []
    for pair in analysis.pairs:
        short = min(pair.short_s, pair.long_s)
        if short < 2 * scrape_interval_s:
            findings.append(Finding(Reason.WINDOW_BELOW_SCRAPE_INTERVAL, (
                f"pair {pair.factor:g}x ({format_duration(pair.long_s)}/{format_duration(pair.short_s)}): a "
                f"{format_duration(short)} window holds fewer than two {scrape_interval_s}s scrapes, so it "
                "never has data; raise rollout.analysis.intervalSeconds or shortWindowIntervals, or lower "
                "monitoring.scrapeIntervalSeconds")))
    steps_s = traffic_seconds(rollout)
    first_wait = rollout.steps[0].pause_s + rollout.progress_deadline_s if rollout.steps else 0
    for pair in analysis.pairs:
        if pair.factor <= 1 or pair.short_s <= steps_s:
            continue
        msg = (f"pair {pair.factor:g}x ({format_duration(pair.long_s)}/{format_duration(pair.short_s)}) cannot arm "
               f"within the steps' {format_duration(steps_s)} of canary traffic: the rollout holds at a step "
               f"until the canary has carried traffic for {format_duration(pair.short_s)}")
        if pair.short_s > first_wait:
            msg += (f", longer than the first step's pause plus progressDeadlineSeconds "
                    f"({format_duration(first_wait)}): a healthy canary would be rolled back on the deadline; "
                    "lengthen the steps or the deadline, or shorten the windows")
        findings.append(Finding(Reason.PAIR_CANNOT_ARM, msg))
    return findings
