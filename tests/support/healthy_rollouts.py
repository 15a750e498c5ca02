"""Monte Carlo of healthy canary rollouts through the real verdict and state machine (pure).

A "healthy" canary errs at a fixed rate within its SLO (by default exactly at it: burn 1x, the
hardest healthy case) and serves Poisson traffic at ``rps``. Every analysis interval the
simulation draws that interval's requests and errors, sums them over each window the analysis
asks for (cut to the canary's age, as ``metrics_provider.same_spans`` does), lets
``verdict.decide`` judge them and ``state_machine.transition`` act, until the rollout is
promoted or rolled back. No stable to compare with: the canary gets no excuse from a stable
that burns too, which is the worst case for false rollbacks.

Used by ``tests/unit/test_healthy_rollouts.py`` (a bounded, seeded run) and
``benchmarks/rollout_false_alarms.py`` (1000 rollouts per setting).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from diffusion_operator.rollout.state_machine import Observations, Phase, RolloutSpec, RolloutStatus, transition
from diffusion_operator.rollout.verdict import AnalysisConfig, AnalysisInputs, RevisionMeasurements, decide

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Setting:
    objective: float = 0.999
    #: The canary's error rate as a multiple of its budget (1.0: exactly at the SLO).
    burn: float = 1.0
    rps: float = 2.0
    interval_s: int = 60
    min_requests: int = 50


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:  # normal approximation, plenty for counts this large
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    threshold, k, prod = math.exp(-lam), 0, rng.random()
    while prod > threshold:
        k += 1
        prod *= rng.random()
    return k


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if n * p > 50:
        return max(0, min(n, int(round(rng.gauss(n * p, math.sqrt(n * p * (1 - p)))))))
    return sum(1 for _ in range(n) if rng.random() < p) if n < 2000 else _poisson(rng, n * p)


def one_rollout(setting: Setting, rng: random.Random, spec: RolloutSpec | None = None) -> tuple[str, float]:
    """(``Promoted``, ``RolledBack:<reason>`` or ``Stuck``; seconds of canary traffic by then)."""
    spec = spec or replace(RolloutSpec(), analysis_interval_s=setting.interval_s)
    config = AnalysisConfig.from_spec({"availability": {"objective": setting.objective}},
                                      {"intervalSeconds": setting.interval_s, "minRequests": setting.min_requests})
    status = RolloutStatus(phase=Phase.STABLE, stable_revision="stable")
    bins: list[tuple[int, int]] = []  # (requests, errors) per interval since traffic started
    p_err = setting.burn * (1.0 - setting.objective)
    t = 0.0
    horizon = sum(s.pause_s for s in spec.steps) + 4 * spec.progress_deadline_s
    while t < horizon:
        now = T0 + timedelta(seconds=t)
        verdict = None
        if status.canary_weight > 0:
            n = _poisson(rng, setting.rps * setting.interval_s)
            bins.append((n, _binomial(rng, n, p_err)))
            age = len(bins) * setting.interval_s
            ratios, counts = {}, {}
            for w in config.windows:
                k = max(1, math.ceil(min(w, age) / setting.interval_s))
                req = sum(b[0] for b in bins[-k:])
                err = sum(b[1] for b in bins[-k:])
                counts[w] = float(req)
                ratios[w] = err / req if req else None
            canary = RevisionMeasurements(error_ratios={"availability": ratios}, requests=counts)
            verdict = decide(AnalysisInputs(canary, None, canary_age_s=float(age)), config)
        d = transition(status, spec, Observations(now=now, desired_revision="canary", canary_ready=True,
                                                  verdict=verdict, verdict_at=now))
        status = d.status
        traffic_s = len(bins) * setting.interval_s
        if status.phase == Phase.SUCCEEDED:
            return "Promoted", traffic_s
        if status.phase == Phase.ROLLED_BACK:
            return f"RolledBack:{status.reason}", traffic_s
        t += setting.interval_s
    return "Stuck", len(bins) * setting.interval_s


def simulate(setting: Setting, rollouts: int, seed: int = 1) -> tuple[Counter, list[float]]:
    """Outcomes of ``rollouts`` seeded rollouts, and the canary's traffic time at each end."""
    rng = random.Random(seed)
    runs = [one_rollout(setting, rng) for _ in range(rollouts)]
    return Counter(outcome for outcome, _ in runs), [t for _, t in runs]
