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

    .venv/bin/python benchmarks/rollout_timing.py                       # gateway, ~25 minutes
    .venv/bin/python benchmarks/rollout_timing.py --data-plane direct   # ~12 minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
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


def gateway_main(args) -> tuple[dict[float, list[RunResult]], list[RunResult]]:
    from diffusion_operator.cli import DEV_MODEL_DIR, _ensure_dev_model
    from diffusion_operator.devcluster import images, toolchain
    from diffusion_operator.devcluster.cluster import ClusterConfig, LocalCluster
    from tests.conftest import operator_kubeconfig_for
    from tests.support.operator_control import OperatorProcess
    from tests.support.rollouts import DM_SPEC, Scenario, rollout_spec

    work = Path(tempfile.mkdtemp(prefix="rollout-timing-"))
    _ensure_dev_model()
    archives = tuple(i.archive for i in images.ensure_images() if i.name != images.PAUSE_IMAGE)
    cluster = LocalCluster(ClusterConfig(name="bench-rollout-timing", state_dir=work / "cluster", gpu_nodes=0,
                                         cpu_nodes=0, real_nodes=1, gateway=True, scrape_interval="1s",
                                         node_images=archives), toolchain.ensure_toolchain())
    t0 = time.monotonic()
    cluster.up(progress=lambda m: print(f"# [cluster] {m}", flush=True))
    op = None
    faults: dict[float, list[RunResult]] = {}
    healthy: list[RunResult] = []
    budget = 1 - OBJECTIVE
    try:
        op = OperatorProcess(operator_kubeconfig_for(cluster, work), allow_file_sources=True,
                             allow_fault_injection=True, sampler_image=images.SAMPLER_IMAGE).start()
        cluster.kubectl("create", "namespace", "bench")
        scenario = Scenario(cluster, "bench", f"file://{DEV_MODEL_DIR}")
        spec = rollout_spec([(25, 4), (50, 4), (100, 4)], min_requests=args.min_requests)
        spec["analysis"].update(intervalSeconds=args.interval, shortWindowIntervals=args.short_window_intervals)
        scenario.create(spec, prometheus_url=cluster.prometheus_url,
                        model_spec={**DM_SPEC, "faultInjection": {"errorRate": BACKGROUND_ERROR_RATE}})
        scenario.serve(cluster.prometheus_url, rps=args.rps)
        print(f"# cluster, pool and load ready in {time.monotonic() - t0:.0f}s; Gateway {cluster.gateway_url}",
              flush=True)
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
    finally:
        if op is not None:
            op.stop()
        cluster.down()
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
    args = ap.parse_args(argv)
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
