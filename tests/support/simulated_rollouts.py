"""Monte Carlo of canary rollouts through the real verdict and state machine (pure, seeded).

A canary errs at a fixed rate (``burn`` times its SLO's error budget; 1.0 is exactly at the
SLO, the hardest healthy case) and serves Poisson traffic at ``rps``. Every analysis interval
the simulation draws that interval's requests and errors, sums them over each window the
analysis asks for (cut to the canary's age, as ``metrics_provider.same_spans`` does), lets
``verdict.decide`` judge them and ``state_machine.transition`` act, until the rollout is
promoted or rolled back. No stable to compare with: the canary gets no excuse from a stable
that burns too, which is the worst case for false rollbacks. The analysis runs exactly on its
interval and the data is never late (no scrape lag): what is measured is the decision rule.

Only the public API of ``diffusion_operator.rollout`` is used, so the same code runs against an
older checkout of the operator (``benchmarks/rollout_false_alarms.py --baseline-ref``).

Used by ``tests/unit/test_simulated_rollouts.py`` (bounded, seeded) and
``benchmarks/rollout_false_alarms.py`` (1000 rollouts per setting).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from diffusion_operator.rollout.state_machine import Observations, Phase, RolloutSpec, RolloutStatus, transition
from diffusion_operator.rollout.verdict import AnalysisConfig, AnalysisInputs, RevisionMeasurements, decide

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Setting:
    objective: float = 0.999
    #: The canary's error rate as a multiple of its budget (1.0: exactly at the SLO).
    burn: float = 1.0
    #: Canary requests per second.
    rps: float = 2.0
    interval_s: int = 60
    min_requests: int = 50
    #: ``spec.rollout.analysis`` beyond interval and minRequests (e.g. shortWindowIntervals).
    analysis: dict = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return min(1.0, self.burn * (1.0 - self.objective))


@dataclass(frozen=True)
class Outcome:
    #: ``Promoted``, ``RolledBack:<reason>`` or ``Stuck`` (neither within the horizon).
    end: str
    #: Seconds of canary traffic by then.
    traffic_s: float
    #: What judged the deciding analysis' pairs (``method`` of status; "" on older code).
    methods: tuple[str, ...] = ()

    @property
    def rolled_back(self) -> bool:
        return self.end.startswith("RolledBack")


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 50:  # normal approximation, plenty for counts this large
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    threshold, k, prod = math.exp(-lam), 0, rng.random()
    while prod > threshold:
        k += 1
        prod *= rng.random()
    return k


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if p >= 1.0:
        return n
    if n * p > 50:
        return max(0, min(n, int(round(rng.gauss(n * p, math.sqrt(n * p * (1 - p)))))))
    return sum(1 for _ in range(n) if rng.random() < p) if n < 2000 else _poisson(rng, n * p)


def config_for(setting: Setting) -> AnalysisConfig:
    return AnalysisConfig.from_spec(
        {"availability": {"objective": setting.objective}},
        {"intervalSeconds": setting.interval_s, "minRequests": setting.min_requests, **setting.analysis},
    )


def one_rollout(setting: Setting, rng: random.Random, spec: RolloutSpec | None = None) -> Outcome:
    spec = spec or replace(RolloutSpec(), analysis_interval_s=setting.interval_s)
    config = config_for(setting)
    status = RolloutStatus(phase=Phase.STABLE, stable_revision="stable")
    bins: list[tuple[int, int]] = []  # (requests, errors) per interval since traffic started
    t = 0.0
    horizon = sum(s.pause_s for s in spec.steps) + 4 * spec.progress_deadline_s
    while t < horizon:
        now = T0 + timedelta(seconds=t)
        verdict = None
        if status.canary_weight > 0:
            n = _poisson(rng, setting.rps * setting.interval_s)
            bins.append((n, _binomial(rng, n, setting.error_rate)))
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
        methods = tuple(getattr(p, "method", "") for p in verdict.pairs) if verdict else ()
        if status.phase == Phase.SUCCEEDED:
            return Outcome("Promoted", traffic_s, methods)
        if status.phase == Phase.ROLLED_BACK:
            return Outcome(f"RolledBack:{status.reason}", traffic_s, methods)
        t += setting.interval_s
    return Outcome("Stuck", len(bins) * setting.interval_s)


def simulate(setting: Setting, rollouts: int, seed: int = 1, spec: RolloutSpec | None = None) -> list[Outcome]:
    """``rollouts`` seeded rollouts of ``setting``."""
    rng = random.Random(seed)
    return [one_rollout(setting, rng, spec) for _ in range(rollouts)]


def tally(outcomes: list[Outcome]) -> Counter:
    return Counter(o.end for o in outcomes)
