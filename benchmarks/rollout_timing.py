#!/usr/bin/env python3
"""Rollout timing: how fast a faulty canary is rolled back, and how often a healthy one is.

Two modes, the same runs and tables:

- ``--data-plane gateway`` (default): everything through Kubernetes. A local cluster of its
  own with the real node (one per machine: stop a running ``dev`` cluster first), the operator
  in this process (1 s tick, as in tests/e2e), one pool whose revisions run as pods of the
  operator's Deployments, load through Traefik by the HTTPRoute the operator writes, Prometheus
  discovering the pods. Faults are model revisions with the sampler's test-only
  ``spec.faultInjection``; each run rolls out a new revision on the same pool (a distinct
  ``defaults.guidanceScale`` keeps revisions, and so series, apart). A run that the analysis
  does not end within the horizon is aborted (SRE action) and counted as held.
- ``--data-plane direct``: the decision alone, as measured first (described below): no
  Kubernetes, the load generator splits requests itself. Kept to show what the cluster adds.

Direct mode: everything real except Kubernetes: a Prometheus of its own (1 s scrapes), sampler processes on
the tiny model (``python -m diffusion_sampler``, faults injected with SAMPLER_FAULT_ERROR_RATE),
the operator's decision code as the operator runs it (``rollout.metrics_provider.measure`` ->
``verdict.decide`` -> ``state_machine.transition``, driven on a 1 s tick like the operator's
timer, analyses every ``--interval`` seconds), and a load generator that splits requests by
``state_machine.desired_weights`` of the current status (what the operator writes into the
HTTPRoute). The pod readiness and route plumbing are covered by tests/e2e; they are left out
here so the numbers are the decision's, not the cluster's.

Runs:

- **fault runs**: a canary whose every request fails with probability ``rate`` (5x, 10x, 30x
  the budget of a 99 % objective, i.e. 5 %, 10 %, 30 %) at 25 % of the traffic, held on that
  step (pause longer than the horizon) so only the analysis can end it. Measured: time from
  the canary's first request (the fault start) to the decision that set its weight to 0, and
  the same time counted from when the fastest pair's short window filled.
- **healthy runs**: 10 complete rollouts (25 -> 50 -> 100 %) of a canary as good as stable;
  both serve a background 0.5 % of errors (half the budget: within SLO, but not zero, so the
  count of false rollbacks measures something). Measured: false rollbacks (any rollback).

Beside each, Flagger's documented rule (docs.flagger.app, "Canary analysis": the canary is
rolled back once the number of failed checks reaches ``threshold``, one check per
``interval``) at the same interval, with threshold 5. A check is evaluated in the shadow of
every run on the same data: it fails when the canary's request success rate over the short
window is below 99 % (Flagger's built-in ``request-success-rate`` with
``thresholdRange.min: 99``). For a fault run, Flagger's time is the first failed check plus
4 more intervals (our rollback ends the run before a 5th check could be seen); for the
healthy runs, a 5th failed check within the rollout counts as a Flagger false rollback.

Each run gets fresh series: the samplers' target files are rewritten with a new ``run`` label
and the analysis selects it (``extraSelector``), as the e2e tests do with ``namespace``.

    .venv/bin/python benchmarks/rollout_timing.py --table               # docs/rollouts.md's table per SLO, ~20 minutes
    .venv/bin/python benchmarks/rollout_timing.py                       # gateway, ~25 minutes
    .venv/bin/python benchmarks/rollout_timing.py --data-plane direct   # ~12 minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffusion_operator.rollout import state_machine as sm  # noqa: E402
from diffusion_operator.rollout import verdict as vd  # noqa: E402
from diffusion_operator.rollout.burnrate import WORKBOOK_PAIRS, WindowPair, format_duration  # noqa: E402
from diffusion_operator.rollout.metrics_provider import PrometheusProvider, measure  # noqa: E402
from diffusion_operator.rollout.verdict import AnalysisConfig, Outcome, decide  # noqa: E402
from tests.support.direct_load import LoadGenerator  # noqa: E402
from tests.support.prometheus import PrometheusServer, TargetFile, wait_scraped  # noqa: E402
from tests.support.samplers import build_tiny_model, start_samplers  # noqa: E402

POOL = "bench"
OBJECTIVE = 0.99
BACKGROUND_ERROR_RATE = 0.005  # 0.5x the budget: a healthy revision, not a perfect one
FLAGGER_THRESHOLD = 5
FLAGGER_MIN_SUCCESS = 0.99


@dataclass
class RunResult:
    kind: str
    outcome: str  # RolledBack | Succeeded | Held (horizon reached)
    reason: str
    fault_start: float | None
    ended: float | None
    decisive_pair: str = ""
    flagger_rollback_at: float | None = None
    flagger_first_fail_at: float | None = None
    flagger_failed_checks: int = 0
    analyses: int = 0
    canary_requests: int = 0
    method: str = ""
    last_reason: str = ""
    notes: list[str] = field(default_factory=list)


def now() -> datetime:
    return datetime.now(timezone.utc)


def run_rollout(prom: PrometheusServer, provider: PrometheusProvider, stable, canary, *, kind: str,
                steps: list[tuple[int, int]], interval: int, short_intervals: int, min_requests: int,
                horizon_s: float, rps: float, tick_s: float) -> RunResult:
    run_id = uuid.uuid4().hex[:8]
    targets = [TargetFile(prom.targets_dir, f"stable-{run_id}", stable.port, {"run": run_id}),
               TargetFile(prom.targets_dir, f"canary-{run_id}", canary.port, {"run": run_id})]
    wait_scraped(prom.url, targets)
    spec = sm.RolloutSpec.from_spec({"steps": [{"weight": w, "pauseSeconds": p} for w, p in steps],
                                     "analysis": {"intervalSeconds": interval},
                                     "progressDeadlineSeconds": int(horizon_s) + 600})
    config = AnalysisConfig.from_pool_spec({
        "slo": {"availability": {"objective": OBJECTIVE}},
        "rollout": {"analysis": {"intervalSeconds": interval, "shortWindowIntervals": short_intervals,
                                 "minRequests": min_requests, "extraSelector": f'run="{run_id}"'}}})
    short_s = min(p.short_s for p in config.pairs)
    status = sm.transition(sm.RolloutStatus(stable_revision=stable.revision), spec,
                           sm.Observations(now=now(), desired_revision=stable.revision)).status
    status = sm.transition(status, spec, sm.Observations(now=now(), desired_revision=canary.revision)).status
    box = [status]
    load = LoadGenerator(lambda: sm.desired_weights(box[0]), {stable.revision: stable.url,
                                                             canary.revision: canary.url},
                         rps=rps, refresh_s=0.2).start()
    result = RunResult(kind, "Held", "", None, None)
    started = time.monotonic()
    try:
        while time.monotonic() - started < horizon_s:
            t = now()
            verdict = None
            if sm.analysis_due(status, spec, t):
                inputs = measure(provider, POOL, status.canary_revision, status.stable_revision, config,
                                 canary_age_s=sm.canary_age_s(status, t))
                verdict = decide(inputs, config)
                result.analyses += 1
                # Flagger's check in the shadow: success rate over the short window below 99 %.
                short = [p for p in verdict.pairs if p.sli == "availability" and p.pair.short_s == short_s]
                ratio = short[0].canary_short.ratio if short else None
                if ratio is not None and 1 - ratio < FLAGGER_MIN_SUCCESS and verdict.outcome != Outcome.ERROR:
                    result.flagger_failed_checks += 1
                    if result.flagger_first_fail_at is None:
                        result.flagger_first_fail_at = time.time()
                    if result.flagger_failed_checks == FLAGGER_THRESHOLD and result.flagger_rollback_at is None:
                        result.flagger_rollback_at = time.time()
            decision = sm.transition(status, spec, sm.Observations(now=t, desired_revision=canary.revision,
                                                                   canary_ready=True, verdict=verdict, verdict_at=t))
            status = box[0] = decision.status
            if status.phase in (sm.Phase.ROLLED_BACK, sm.Phase.SUCCEEDED):
                result.ended = time.time()
                result.outcome = status.phase
                result.reason = status.reason or ""
                if verdict is not None and verdict.decisive is not None:
                    result.decisive_pair = verdict.decisive.pair.name
                break
            time.sleep(max(0.0, tick_s - (time.monotonic() - started) % tick_s))
    finally:
        load.stop()
        for tf in targets:
            tf.remove()
    result.fault_start = load.first_sent.get(canary.revision)
    result.canary_requests = load.sent[canary.revision]
    result.notes.append(f"short window {short_s}s")
    return result


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def gateway_run(scenario, *, kind: str, index: int, error_rate: float, steps: list[tuple[int, int]],
                horizon_s: float) -> RunResult:
    """One rollout on the cluster: set the steps, roll out a new revision failing ``error_rate``
    of its requests, follow the pool until the operator ends it (or abort at the horizon)."""
    from diffusion_operator.plugin import ACTION_ANNOTATION
    from tests.support.rollouts import POOL as SCENARIO_POOL

    scenario.kubectl("patch", "inferencepool", SCENARIO_POOL, "--type=merge", "-p", json.dumps(
        {"spec": {"rollout": {"steps": [{"weight": w, "pauseSeconds": p} for w, p in steps]}}}))
    before = scenario.rollout()
    stable = before.get("stableRevision")
    n_history = len(before.get("history") or [])
    earlier_analysis = (before.get("lastAnalysis") or {}).get("at")
    patch = {"spec": {"defaults": {"guidanceScale": round(7.5 + 0.01 * index, 2)},
                      "faultInjection": {"errorRate": error_rate}}}
    scenario.stable_rev = stable
    canary = scenario.start_rollout(patch)
    result = RunResult(kind, "Held", "", None, None)
    seen_at: set[str] = set()
    deadline = None
    aborted = False
    while True:
        ro = scenario.rollout()
        a = ro.get("lastAnalysis") or {}
        if a.get("at") and a["at"] not in seen_at and ro.get("canaryRevision") == canary:
            seen_at.add(a["at"])
            result.analyses += 1
            # Flagger's check in the shadow: success rate over the fastest pair's short window below
            # 99 %, i.e. its availability short burn above 1 at objective 99 %.
            avail = [b for b in a.get("burnRates") or [] if b.get("sli") == "availability"]
            fastest = min(avail, key=lambda b: b["shortWindowSeconds"], default=None)
            if fastest and fastest.get("shortBurnRate") is not None and fastest["shortBurnRate"] > 1 \
                    and a.get("outcome") != "error":
                result.flagger_failed_checks += 1
                if result.flagger_first_fail_at is None:
                    result.flagger_first_fail_at = time.time()
                if result.flagger_failed_checks == FLAGGER_THRESHOLD and result.flagger_rollback_at is None:
                    result.flagger_rollback_at = time.time()
        history = ro.get("history") or []
        # the analysis that failed is recorded in the same status write that clears the canary
        if a.get("outcome") == "fail" and not result.decisive_pair and a.get("at") != earlier_analysis:
            trip = [b for b in a.get("burnRates") or [] if b.get("state") == "tripped"]
            if trip:
                result.decisive_pair = (f"{trip[0]['factor']:g}x {trip[0]['longWindowSeconds']}s/"
                                        f"{trip[0]['shortWindowSeconds']}s")
                result.method = trip[0].get("method") or ""
        if a.get("reason") and ro.get("canaryRevision") == canary:
            result.last_reason = a["reason"]
        if len(history) > n_history and history[-1].get("canaryRevision") == canary:
            last = history[-1]
            result.outcome = {"Promoted": sm.Phase.SUCCEEDED, "RolledBack": sm.Phase.ROLLED_BACK}.get(
                last["outcome"], last["outcome"])
            if aborted:
                result.outcome = "Held"
            result.reason = last.get("reason") or ""
            result.ended = datetime.fromisoformat(last["finishedAt"].replace("Z", "+00:00")).timestamp()
            break
        if deadline is None and ro.get("canaryWeight"):
            deadline = time.monotonic() + horizon_s
        if deadline is not None and time.monotonic() > deadline and not aborted:
            scenario.kubectl("annotate", "--overwrite", "inferencepool", SCENARIO_POOL,
                             f"{ACTION_ANNOTATION}=abort@bench-{index}")
            aborted = True
        time.sleep(0.5)
    assert scenario.load is not None
    result.fault_start = scenario.load.first_answer.get(canary)
    result.canary_requests = sum(scenario.load.codes[canary].values())
    return result


@contextlib.contextmanager
def gateway_scenario(args, model_spec: dict):
    """A local cluster with the real node, the operator, one pool on ``model_spec`` and load
    through the Gateway at ``args.rps``; yields the Scenario, tears everything down after."""
    from diffusion_operator.devcluster import images, toolchain
    from diffusion_operator.devcluster.cluster import ClusterConfig, LocalCluster
    from diffusion_operator.devcluster.first_run import DEV_MODEL_DIR, ensure_dev_model
    from tests.conftest import operator_kubeconfig_for
    from tests.support.operator_control import OperatorProcess
    from tests.support.rollouts import Scenario, rollout_spec

    work = Path(tempfile.mkdtemp(prefix="rollout-timing-"))
    ensure_dev_model(print)
    archives = tuple(i.archive for i in images.ensure_images() if i.name != images.PAUSE_IMAGE)
    cluster = LocalCluster(ClusterConfig(name="bench-rollout-timing", state_dir=work / "cluster", gpu_nodes=0,
                                         cpu_nodes=0, real_nodes=1, gateway=True, scrape_interval="1s",
                                         node_images=archives), toolchain.ensure_toolchain())
    t0 = time.monotonic()
    cluster.up(progress=lambda m: print(f"# [cluster] {m}", flush=True))
    op = None
    try:
        op = OperatorProcess(operator_kubeconfig_for(cluster, work), allow_file_sources=True,
                             allow_fault_injection=True, sampler_image=images.SAMPLER_IMAGE).start()
        cluster.kubectl("create", "namespace", "bench")
        scenario = Scenario(cluster, "bench", f"file://{DEV_MODEL_DIR}")
        spec = rollout_spec([(25, 4), (50, 4), (100, 4)], min_requests=args.min_requests)
        spec["analysis"].update(intervalSeconds=args.interval, shortWindowIntervals=args.short_window_intervals)
        scenario.create(spec, prometheus_url=cluster.prometheus_url, model_spec=model_spec)
        scenario.serve(cluster.prometheus_url, rps=args.rps)
        print(f"# cluster, pool and load ready in {time.monotonic() - t0:.0f}s; Gateway {cluster.gateway_url}",
              flush=True)
        yield scenario
    finally:
        if op is not None:
            op.stop()
        cluster.down()


def gateway_main(args) -> tuple[dict[float, list[RunResult]], list[RunResult]]:
    from tests.support.rollouts import DM_SPEC

    faults: dict[float, list[RunResult]] = {}
    healthy: list[RunResult] = []
    budget = 1 - OBJECTIVE
    with gateway_scenario(args, {**DM_SPEC, "faultInjection": {"errorRate": BACKGROUND_ERROR_RATE}}) as scenario:
        index = 0
        for r in [float(x) for x in args.fault_rates.split(",") if x]:
            for i in range(args.fault_runs):
                index += 1
                res = gateway_run(scenario, kind=f"{r:g}x", index=index, error_rate=r * budget,
                                  steps=[(25, int(args.horizon) + 60), (100, 5)], horizon_s=args.horizon)
                faults.setdefault(r, []).append(res)
                took = None if res.ended is None or res.fault_start is None else res.ended - res.fault_start
                print(f"# fault {r:g}x run {i + 1}: {res.outcome} {res.reason} after {fmt(took)}s "
                      f"({res.decisive_pair})", flush=True)
        for i in range(args.healthy_runs):
            index += 1
            res = gateway_run(scenario, kind="healthy", index=index, error_rate=BACKGROUND_ERROR_RATE,
                              steps=[(25, 4), (50, 4), (100, 4)], horizon_s=120)
            healthy.append(res)
            print(f"# healthy run {i + 1}: {res.outcome} {res.reason}; flagger failed checks "
                  f"{res.flagger_failed_checks}", flush=True)
    return faults, healthy


def direct_main(args) -> tuple[dict[float, list[RunResult]], list[RunResult]]:
    from diffusion_operator.devcluster import toolchain

    work = Path(tempfile.mkdtemp(prefix="rollout-timing-"))
    model = build_tiny_model(args.model_dir or work / "tiny-sd")
    prom = PrometheusServer(toolchain.ensure_prometheus()[0], work / "prometheus", file_targets=True).start()
    budget = 1 - OBJECTIVE
    rates = [float(r) for r in args.fault_rates.split(",") if r]
    bg = {"SAMPLER_FAULT_ERROR_RATE": str(BACKGROUND_ERROR_RATE)}
    specs = {"stable": (POOL, "stable", bg), "healthy": (POOL, "canary", bg)}
    for r in rates:
        specs[f"fault-{r:g}x"] = (POOL, "canary", {"SAMPLER_FAULT_ERROR_RATE": str(r * budget)})
    t0 = time.monotonic()
    procs = start_samplers(model, work, specs)
    print(f"# {len(procs)} samplers ready in {time.monotonic() - t0:.0f}s; Prometheus {prom.url}", flush=True)
    provider = PrometheusProvider(prom.url, timeout_s=5)
    common = dict(interval=args.interval, short_intervals=args.short_window_intervals, min_requests=args.min_requests,
                  rps=args.rps, tick_s=1.0)
    faults: dict[float, list[RunResult]] = {}
    healthy: list[RunResult] = []
    try:
        for r in rates:
            for i in range(args.fault_runs):
                res = run_rollout(prom, provider, procs["stable"], procs[f"fault-{r:g}x"], kind=f"{r:g}x",
                                  steps=[(25, int(args.horizon) + 60), (100, 5)], horizon_s=args.horizon, **common)
                faults.setdefault(r, []).append(res)
                took = None if res.ended is None or res.fault_start is None else res.ended - res.fault_start
                first_fail = (None if res.flagger_first_fail_at is None
                              else res.flagger_first_fail_at - res.fault_start)
                print(f"# fault {r:g}x run {i + 1}: {res.outcome} {res.reason} after {fmt(took)}s "
                      f"({res.decisive_pair}); Flagger's check first failed after {fmt(first_fail)}s",
                      flush=True)
        for i in range(args.healthy_runs):
            res = run_rollout(prom, provider, procs["stable"], procs["healthy"], kind="healthy",
                              steps=[(25, 4), (50, 4), (100, 4)], horizon_s=120, **common)
            healthy.append(res)
            print(f"# healthy run {i + 1}: {res.outcome} {res.reason} after "
                  f"{fmt(None if res.ended is None else res.ended - res.fault_start)}s; "
                  f"flagger failed checks {res.flagger_failed_checks}", flush=True)
    finally:
        provider.close()
        for p in procs.values():
            p.stop()
        prom.stop()
    return faults, healthy


# ---------------------------------------------------------------------------- --table

#: The table of docs/rollouts.md: (label, error rate, or a multiple of the budget as "<n>x").
TABLE_FAULTS = [("100%", 1.0), ("30%", 0.3), ("10%", 0.1), ("10x budget", "10x"), ("2x budget", "2x")]
TABLE_OBJECTIVES = (0.99, 0.999)


def fault_rate(spec: float | str, objective: float) -> float:
    return float(spec[:-1]) * (1 - objective) if isinstance(spec, str) else spec


def workbook_detection(rate: float, objective: float, pairs: tuple[WindowPair, ...]) -> tuple[float, WindowPair] | None:
    """The SRE Workbook's detection time of an error rate starting at once on a service that was
    healthy: the first pair whose long window's average reaches its factor, ``long x factor x
    budget / rate`` (the short window fills sooner). ``None`` when no pair's factor is reached."""
    b = 1 - objective
    times = [(p.long_s * p.factor * b / rate, p) for p in pairs if rate >= p.factor * b * (1 - 1e-9)]
    return min(times, key=lambda t: t[0]) if times else None


def sequential_expectation(rate: float, objective: float, pairs: tuple[WindowPair, ...],
                           canary_rps: float) -> tuple[float, WindowPair] | None:
    """Wald's approximation of when this analysis trips at ``canary_rps``: a canary is measured
    over its own life, so a pair whose factor the rate reaches trips once armed (its short
    window) and once the sequential test's evidence, rising by its expected step per request,
    reaches the trip level. ``None`` when the evidence does not rise (no pair can trip)."""
    p0 = 1 - objective
    best = None
    for p in pairs:
        if rate < p.factor * p0 * (1 - 1e-9):
            continue
        p1 = min(max(p.factor, vd.MIN_ALTERNATIVE_FACTOR) * p0, 1 - 1e-6)
        q = min(rate, 1 - 1e-9)
        step = q * math.log(p1 / p0) + (1 - q) * math.log((1 - p1) / (1 - p0))
        if step <= 0:
            continue
        t = max(p.short_s, math.log(1 / vd.FALSE_TRIP_RATE) / step / canary_rps)
        if best is None or t < best[0]:
            best = (t, p)
    return best


def table_main(args) -> int:
    """docs/rollouts.md's time-to-rollback table: one faulty canary per SLO and error rate,
    through the cluster, beside the Workbook's detection time and Wald's expectation."""
    from tests.support.rollouts import DM_SPEC, POOL

    started = time.monotonic()
    canary_rps = args.rps * 0.25
    rows = []
    with gateway_scenario(args, DM_SPEC) as scenario:
        index = 100
        for objective in TABLE_OBJECTIVES:
            scenario.kubectl("patch", "inferencepool", POOL, "--type=merge", "-p", json.dumps(
                {"spec": {"slo": {"availability": {"objective": objective}}}}))
            pairs = AnalysisConfig.from_pool_spec({"slo": {"availability": {"objective": objective}}, "rollout": {
                "analysis": {"intervalSeconds": args.interval,
                             "shortWindowIntervals": args.short_window_intervals}}}).pairs
            for label, spec in TABLE_FAULTS:
                index += 1
                rate = fault_rate(spec, objective)
                expected = sequential_expectation(rate, objective, pairs, canary_rps)
                # Long enough to see the expected trip with room; a trip expected beyond the cap is
                # run briefly to show what the analysis does meanwhile (it holds).
                horizon = args.table_cap
                if expected is not None and 2 * expected[0] + 30 < args.table_cap:
                    horizon = max(60.0, 2 * expected[0] + 30)
                elif expected is None or expected[0] > args.table_cap:
                    horizon = args.table_held
                res = gateway_run(scenario, kind=label, index=index, error_rate=rate,
                                  steps=[(25, int(horizon) + 60), (100, 5)], horizon_s=horizon)
                took = None if res.ended is None or res.fault_start is None else res.ended - res.fault_start
                print(f"# {objective:.3g} {label}: {res.outcome} {res.reason} after {fmt(took)}s "
                      f"({res.decisive_pair} {res.method}); last analysis {res.last_reason}", flush=True)
                rows.append((objective, label, rate, pairs, expected, horizon, res, took))
    print()
    print(f"Data plane: gateway; whole run {(time.monotonic() - started) / 60:.1f} min. Analysis every "
          f"{args.interval}s, short window {args.interval * args.short_window_intervals}s, {args.rps:g} req/s "
          f"through the Gateway, canary at 25% ({canary_rps:g} req/s), minRequests {args.min_requests}; a stable "
          "without errors; 1 s scrapes, 1 s tick.")
    print()
    print("| SLO | errors | burn | Workbook detection, 30-day windows | detection, these windows "
          "| expected here (sequential test) | measured: time to roll back | tripped pair, method | canary requests |")
    print("|---|---|---|---|---|---|---|---|---|")

    def when(x):
        return "never (below every factor)" if x is None else f"{format_duration(x[0])} ({x[1].name})"

    for objective, label, rate, pairs, expected, horizon, res, took in rows:
        burn = rate / (1 - objective)
        measured = (f"{took:.1f} s" if res.outcome == sm.Phase.ROLLED_BACK and took is not None
                    else f"held {horizon:.0f} s ({res.last_reason or 'no analysis'})")
        print(f"| {objective * 100:g}% | {label} ({rate * 100:.3g}%) | {burn:.3g}x "
              f"| {when(workbook_detection(rate, objective, WORKBOOK_PAIRS))} "
              f"| {when(workbook_detection(rate, objective, pairs))} | {when(expected)} | {measured} "
              f"| {res.decisive_pair or '-'} {res.method} | {res.canary_requests} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-plane", choices=("gateway", "direct"), default="gateway",
                    help="gateway: pods, Traefik and the operator on a local cluster; direct: the decision alone")
    ap.add_argument("--interval", type=int, default=2, help="analysis interval, seconds (default 2)")
    ap.add_argument("--short-window-intervals", type=int, default=4, help="short window in intervals (default 4)")
    ap.add_argument("--min-requests", type=int, default=5)
    ap.add_argument("--rps", type=float, default=10.0, help="requests per second over both revisions")
    ap.add_argument("--fault-rates", default="5,10,30", help="faults, in multiples of the error budget")
    ap.add_argument("--fault-runs", type=int, default=3, help="runs per fault rate")
    ap.add_argument("--horizon", type=float, default=60.0, help="seconds a fault run may take before 'held'")
    ap.add_argument("--healthy-runs", type=int, default=10)
    ap.add_argument("--model-dir", type=Path, help="direct: tiny model directory (built when missing)")
    ap.add_argument("--table", action="store_true",
                    help="docs/rollouts.md's time-to-rollback table (SLO 99%% and 99.9%%; gateway)")
    ap.add_argument("--table-cap", type=float, default=600.0,
                    help="--table: longest a run may take when a trip is expected (seconds)")
    ap.add_argument("--table-held", type=float, default=120.0,
                    help="--table: how long to watch a fault no pair is expected to trip within the cap")
    args = ap.parse_args(argv)
    if args.table:
        return table_main(args)
    started = time.monotonic()
    faults, healthy = gateway_main(args) if args.data_plane == "gateway" else direct_main(args)
    budget = 1 - OBJECTIVE

    short_s = args.interval * args.short_window_intervals
    print()
    print(f"Data plane: {args.data_plane}; whole run {(time.monotonic() - started) / 60:.1f} min.")
    print(f"Analysis every {args.interval}s, short window {short_s}s (pairs 14.4x {12 * short_s}s/{short_s}s, "
          f"6x {72 * short_s}s/{6 * short_s}s, 1x {864 * short_s}s/{72 * short_s}s), objective {OBJECTIVE:.0%}, "
          f"{args.rps:g} req/s, canary at 25%, minRequests {args.min_requests}; 1 s scrapes, 1 s tick.")
    print()
    print("| fault (x budget) | error rate | runs | rolled back | time to weight 0, s (median [min-max]) "
          "| its pair's short window: time after it filled, s | caught by "
          f"| Flagger's rule: first failed check + {FLAGGER_THRESHOLD - 1} x {args.interval}s, s |")
    print("|---|---|---|---|---|---|---|---|")
    pairs_all = AnalysisConfig.from_pool_spec({"rollout": {"analysis": {
        "intervalSeconds": args.interval, "shortWindowIntervals": args.short_window_intervals}}}).pairs

    def window_for(burn: float) -> int | None:
        """Short window of the fastest pair that a fault burning ``burn`` can trip."""
        eligible = [p.short_s for p in pairs_all if p.factor <= burn]
        return min(eligible) if eligible else None

    for r, runs in faults.items():
        rb = [x for x in runs if x.outcome == sm.Phase.ROLLED_BACK and x.fault_start]
        times = [x.ended - x.fault_start for x in rb]
        w = window_for(r)
        after = [t - w for t in times] if w else []
        # Flagger: rolled back at the threshold-th failed check, one check per interval after the first.
        fl = [x.flagger_first_fail_at - x.fault_start + (FLAGGER_THRESHOLD - 1) * args.interval
              for x in runs if x.flagger_first_fail_at and x.fault_start]
        pairs = sorted({x.decisive_pair for x in rb if x.decisive_pair})

        def span(v):
            return "-" if not v else f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]"

        print(f"| {r:g}x | {r * budget:.0%} | {len(runs)} | {len(rb)}/{len(runs)} | {span(times)} "
              f"| {w}s: {span(after)} | {', '.join(pairs) or f'held {args.horizon:g}s, verdict pass'} | {span(fl)} |")
    false_rb = sum(1 for x in healthy if x.outcome == sm.Phase.ROLLED_BACK)
    promoted = sum(1 for x in healthy if x.outcome == sm.Phase.SUCCEEDED)
    durations = [x.ended - x.fault_start for x in healthy if x.ended and x.fault_start]
    flagger_false = sum(1 for x in healthy if x.flagger_rollback_at)
    print()
    print("| healthy rollouts | promoted | false rollbacks | rollout duration, s (median [min-max]) "
          "| Flagger shadow: failed checks (total) | Flagger shadow: false rollbacks |")
    print("|---|---|---|---|---|---|")
    duration_span = ("-" if not durations
                     else f"{statistics.median(durations):.1f} [{min(durations):.1f}-{max(durations):.1f}]")
    print(f"| {len(healthy)} | {promoted} | {false_rb} | {duration_span}"
          f" | {sum(x.flagger_failed_checks for x in healthy)} | {flagger_false} |")
    ten = faults.get(10.0, [])
    # Two intervals as run: the 1 s tick can add a second to each; the data is one scrape behind.
    ok10 = bool(ten) and all(x.outcome == sm.Phase.ROLLED_BACK and x.fault_start
                             and x.ended - x.fault_start - window_for(10.0) <= 2 * (args.interval + 1) + 1 for x in ten)
    print()
    print(f"target: 10x rolled back within two intervals after the short window fills: {'met' if ok10 else 'NOT met'}; "
          f"zero false rollbacks in {len(healthy)} healthy runs: {'met' if false_rb == 0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
