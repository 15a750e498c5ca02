"""Canary rollouts end to end, through the real data plane: the operator's Deployments run
our sampler image on the local cluster's real node, Traefik splits the load by the weights the
operator writes into the HTTPRoute, and the cluster's Prometheus discovers the pods through the
API server. Faulty canaries are model revisions with the sampler's test-only fault injection.

Test-sized settings (tests/support/rollouts.py): analysis every 2 s, short window 8 s, so the
fastest Workbook pair becomes 14.4x over 96 s / 8 s; 10 requests per second through the Gateway.
"""

from __future__ import annotations

import time

import pytest

from diffusion_operator.demo.traffic import GATEWAY
from diffusion_operator.rollout.verdict import sequential_evidence
from tests.support.operator_control import TICK_S
from tests.support.prometheus import SCRAPE_S, PrometheusServer
from tests.support.rollouts import (
    ERRORS_PATCH,
    INTERVAL_S,
    LABEL_REVISION,
    POOL,
    SHORT_WINDOW_S,
    SLOW_PATCH,
    parse_time,
    rollout_spec,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

#: "Within two analysis intervals after the short window fills": an analysis runs when the
#: operator's 1 s timer finds the interval over, so one interval as run is up to INTERVAL + TICK;
#: the data is one scrape behind.
TWO_INTERVALS_AS_RUN = 2 * (INTERVAL_S + TICK_S) + SCRAPE_S


def evidence_time(load, revision: str, *, objective: float, factor: float) -> float:
    """When ``revision``'s answers through the Gateway, counted from its first, first held
    errors beyond chance for a revision meeting ``objective`` at the pair of ``factor``: the
    earliest any analysis could trip it (verdict.sequential_evidence on the client's counts)."""
    n = errors = 0
    for t, _rev, code in sorted(a for a in list(load.answers) if a[1] == revision):
        n += 1
        errors += code >= 500
        ev = sequential_evidence(errors / n, n, objective, factor)
        if ev is not None and ev.significant:
            return t
    raise AssertionError(f"{revision}'s {n} answers ({errors} errors) never held errors beyond chance")


def canary_weights_seen(scenario) -> list[int]:
    return [ro.get("canaryWeight") or 0 for ro in scenario.seen]


def wait_all_answers_from(load, revision, since: float, window: float = 2.0, timeout: float = 15.0) -> float:
    """The first time after ``since`` from which ``window`` seconds of answers all came from
    ``revision``; fails after ``timeout``."""
    deadline = since + timeout
    start = since
    while time.time() < deadline:
        time.sleep(0.5)
        if time.time() < start + window:
            continue
        mine, total = load.share(revision, since=start, until=start + window)
        if total and mine == total:
            return start
        start += 0.5
    raise AssertionError(f"answers still from other revisions {timeout:.0f} s after {since:.1f}: "
                         f"{load.share(revision, since=since)}")


def assert_users_saw_no_errors(load, revision):
    codes = dict(load.codes[revision])
    assert codes and set(codes) == {200}, f"requests to {revision} answered {codes}"


def assert_gateway_never_failed(load, scenario=None):
    """Traefik itself never answered (no 502/503 for want of a ready backend, no refusals)."""
    if load.codes.get(GATEWAY):
        when = [(round(t, 2), code) for t, rev, code in load.answers if rev == GATEWAY]
        timeline = [] if scenario is None else [
            (round(r["_at"], 2), r.get("phase"), r.get("canaryWeight")) for r in scenario.seen]
        changes = [x for i, x in enumerate(timeline) if i == 0 or x[1:] != timeline[i - 1][1:]]
        raise AssertionError(f"answers without a sampler behind them: {dict(load.codes[GATEWAY])} at {when}; "
                             f"rollout (time, phase, weight) changes: {changes}")


def assert_rolled_back_cleanly(scenario, reason: str) -> dict:
    """What a user notices after a rollback: phase, history, remembered revision, stable with
    all traffic, canary gone, a Warning event naming the reason."""
    stable, canary = scenario.stable_rev, scenario.canary_rev
    pool = scenario.pool()
    ro = pool["status"]["rollout"]
    assert pool["status"]["phase"] == "RolledBack"
    assert ro["phase"] == "RolledBack" and ro["reason"] == reason
    assert ro["stableRevision"] == stable and not ro.get("canaryRevision") and ro["canaryWeight"] == 0
    assert canary in [f["revision"] for f in ro["failedRevisions"]]
    last = ro["history"][-1]
    assert (last["canaryRevision"], last["stableRevision"], last["outcome"], last["reason"]) == \
        (canary, stable, "RolledBack", reason)
    assert scenario.route_weights() == {stable: 100}
    scenario.wait_gone("deployment", f"{POOL}-{canary}")
    dep = scenario.get("deployment", f"{POOL}-{stable}")
    assert dep["spec"]["replicas"] == 1 and dep["status"].get("readyReplicas") == 1
    warnings = [e for e in scenario.events(reason) if e["type"] == "Warning"]
    assert warnings and canary in warnings[0]["message"], scenario.events()
    return ro


# --------------------------------------------------------------------------- 1


def test_healthy_canary_is_promoted_through_every_step(node_cluster, operator_ctl, scenario):
    scenario.create(rollout_spec([(25, 4), (50, 4), (100, 4)]), prometheus_url=node_cluster.prometheus_url)
    stable = scenario.stable_rev
    load = scenario.serve(node_cluster.prometheus_url)
    canary = scenario.start_rollout()

    ro = scenario.wait(lambda ro, p: ro.get("phase") == "Succeeded", timeout=240, what="promotion")
    promoted = time.time()

    assert ro["stableRevision"] == canary and not ro.get("canaryRevision")
    last = ro["history"][-1]
    assert (last["canaryRevision"], last["stableRevision"], last["outcome"]) == (canary, stable, "Promoted")
    # Every step was taken, in order, and each only after an analysis passed on it.
    steps = [e["message"] for e in sorted(scenario.events("TrafficWeightUpdated"),
                                          key=lambda e: e["metadata"]["creationTimestamp"])]
    assert [m.split(": ")[-1] if ": " in m else m for m in steps] == \
        ["canary weight 25%", "canary weight 50%", "canary weight 100%"], steps
    seen = [w for w in canary_weights_seen(scenario) if w]
    assert seen == sorted(seen) and {25, 50}.issubset(seen), seen
    # The data plane followed: the Gateway sent the canary a share of the load before the end,
    # and everything after promotion.
    assert scenario.route_weights() == {canary: 100}
    canary_first = load.first_answer[canary]
    before, total_before = load.share(canary, until=promoted)
    assert 0 < before < total_before, (before, total_before)
    wait_all_answers_from(load, canary, since=promoted)
    assert canary_first < promoted
    # The old revision is scaled down after scaleDownDelaySeconds and its children removed.
    scenario.wait_gone("deployment", f"{POOL}-{stable}")
    assert scenario.get("deployment", f"{POOL}-{canary}")["spec"]["replicas"] == 1
    assert scenario.pool()["status"]["phase"] == "Ready"
    assert_users_saw_no_errors(load, canary)
    assert_users_saw_no_errors(load, stable)
    assert_gateway_never_failed(load, scenario)


# --------------------------------------------------------------------------- 2


def test_canary_with_errors_is_rolled_back_within_two_intervals_of_the_evidence(node_cluster, operator_ctl, scenario):
    scenario.create(rollout_spec([(25, 60), (100, 4)]), prometheus_url=node_cluster.prometheus_url)
    stable = scenario.stable_rev
    stable_dep = scenario.get("deployment", f"{POOL}-{stable}")
    load = scenario.serve(node_cluster.prometheus_url)
    canary = scenario.start_rollout(ERRORS_PATCH)

    scenario.wait(lambda ro, p: ro.get("phase") == "RolledBack", timeout=180, what="rollback")
    ro = assert_rolled_back_cleanly(scenario, "AvailabilityBurnRateExceeded")

    # Timing: from when the analysis could first have tripped the fast pair (its short window of
    # the canary's answers through the Gateway filled, and those answers held errors beyond
    # chance for a canary meeting 99%: five errors, about 16 requests, at 30%) to the rollback the
    # operator recorded.
    fault_start = load.first_answer[canary]
    judgeable = max(fault_start + SHORT_WINDOW_S, evidence_time(load, canary, objective=0.99, factor=14.4))
    rolled_back = parse_time(ro["history"][-1]["finishedAt"]).timestamp()
    after = rolled_back - judgeable
    print(f"rolled back {rolled_back - fault_start:.1f}s after the fault started, {after:.1f}s after the "
          f"{SHORT_WINDOW_S}s short window had filled and the errors were beyond chance "
          f"({judgeable - fault_start:.1f}s; bound {TWO_INTERVALS_AS_RUN}s)")
    assert after <= TWO_INTERVALS_AS_RUN
    # The event says what, how much, against what, over which windows.
    msg = scenario.events("AvailabilityBurnRateExceeded")[0]["message"]
    assert "availability burn rate" in msg and "threshold 14.4x" in msg and "over 96s" in msg and "over 8s" in msg
    assert ro["lastAnalysis"]["outcome"] == "fail"
    # Stable untouched: same Deployment generation, and its users never saw an error.
    assert scenario.get("deployment", f"{POOL}-{stable}")["metadata"]["generation"] == \
        stable_dep["metadata"]["generation"]
    assert_users_saw_no_errors(load, stable)
    assert_gateway_never_failed(load, scenario)
    # The faults came from the canary's own pods: about 30% of its answers.
    bad, good = load.codes[canary][500], load.codes[canary][200]
    assert bad and good and 0.1 < bad / (bad + good) < 0.6, dict(load.codes[canary])
    assert max(canary_weights_seen(scenario)) == 25


# --------------------------------------------------------------------------- 3


def test_canary_slower_than_latency_slo_is_rolled_back(node_cluster, operator_ctl, scenario):
    # 95% of requests under 1 s: the canary's injected 1.5 s per batch burns 1 / 0.05 = 20x >= 14.4x.
    slo = {"availability": {"objective": 0.99}, "latency": {"thresholdSeconds": 1, "objective": 0.95}}
    scenario.create(rollout_spec([(25, 60), (100, 4)]), prometheus_url=node_cluster.prometheus_url, slo=slo,
                    batching={"maxBatchSize": 16, "maxWaitMs": 20})
    stable = scenario.stable_rev
    load = scenario.serve(node_cluster.prometheus_url)
    canary = scenario.start_rollout(SLOW_PATCH)

    scenario.wait(lambda ro, p: ro.get("phase") == "RolledBack", timeout=180, what="rollback")
    ro = assert_rolled_back_cleanly(scenario, "LatencyBurnRateExceeded")
    msg = scenario.events("LatencyBurnRateExceeded")[0]["message"]
    assert "latency burn rate" in msg and "objective 95%" in msg
    # Slow, not failing: the canary answered every request, just late.
    assert_users_saw_no_errors(load, canary)
    assert_users_saw_no_errors(load, stable)
    assert_gateway_never_failed(load, scenario)
    assert ro["stableRevision"] == stable


# --------------------------------------------------------------------------- 4


def test_no_traffic_holds_then_progress_deadline_rolls_back(node_cluster, operator_ctl, scenario):
    # The deadline covers the canary's start too (phase Pending until its pod is Ready), so it
    # must outlast a real pod's start on two busy cores.
    pause, deadline = 3, 45
    # Prometheus is up and scrapes both revisions' pods, but nobody sends a request.
    scenario.create(rollout_spec([(25, pause), (100, pause)], deadline=deadline),
                    prometheus_url=node_cluster.prometheus_url)
    stable = scenario.stable_rev
    canary = scenario.start_rollout()

    ro = scenario.wait(lambda ro, p: ro.get("phase") == "RolledBack", timeout=180, what="deadline rollback")

    # It held: the first step's weight and never more, while the analysis said "not enough traffic".
    assert max(canary_weights_seen(scenario)) == 25
    held = [r["lastAnalysis"] for r in scenario.seen if r.get("phase") == "Progressing" and r.get("lastAnalysis")]
    assert held and all(a["outcome"] == "inconclusive" for a in held), held
    assert "InsufficientTraffic" in {a["reason"] for a in held}
    # Then the deadline (pause + progressDeadlineSeconds of the step) failed it, saying why.
    assert_rolled_back_cleanly(scenario, "ProgressDeadlineExceeded")
    assert "InsufficientTraffic" in ro["message"]
    last = ro["history"][-1]
    step_started = next(r["stepStartedAt"] for r in reversed(scenario.seen) if r.get("stepStartedAt"))
    lasted = (parse_time(last["finishedAt"]) - parse_time(step_started)).total_seconds()
    assert pause + deadline <= lasted <= pause + deadline + 15, lasted
    assert ro["stableRevision"] == stable and canary not in [h.get("stableRevision") for h in ro["history"]]


# --------------------------------------------------------------------------- 6


def test_operator_restarted_mid_rollout_finishes_it_without_duplicates(node_cluster, operator_ctl, scenario):
    scenario.create(rollout_spec([(25, 4), (50, 6), (100, 4)]), prometheus_url=node_cluster.prometheus_url)
    stable = scenario.stable_rev
    load = scenario.serve(node_cluster.prometheus_url)
    canary = scenario.start_rollout()
    scenario.wait(lambda ro, p: ro.get("canaryWeight") == 50, timeout=180, what="step 2 (weight 50)")

    operator_ctl.stop()
    frozen = {k: v for k, v in scenario.rollout().items() if k != "_at"}
    time.sleep(2 * INTERVAL_S + 2)  # down for longer than an analysis interval; traffic goes on
    assert {k: v for k, v in scenario.rollout().items() if k != "_at"} == frozen  # nobody moved it
    operator_ctl.start()

    ro = scenario.wait(lambda ro, p: ro.get("phase") == "Succeeded", timeout=180, what="promotion after restart")
    assert operator_ctl.starts == 2
    assert ro["stableRevision"] == canary and not ro.get("canaryRevision")
    mine = [h for h in ro["history"] if h["canaryRevision"] == canary]
    assert [h["outcome"] for h in mine] == ["Promoted"]
    steps = [e["message"].split(": ")[-1] for e in scenario.events("TrafficWeightUpdated")]
    assert sorted(steps) == ["canary weight 100%", "canary weight 25%", "canary weight 50%"], steps
    assert len(scenario.events("RolloutStarted")) == 1 and len(scenario.events("RolloutPromoted")) == 1
    # No duplicate objects: one of each per revision, and the old revision cleaned up.
    scenario.wait_gone("deployment", f"{POOL}-{stable}")
    sel = f"diffusion.serving.dev/pool={POOL}"

    def per_revision(kind):
        items = scenario.get(kind, selector=sel)["items"]
        revs = [i["metadata"]["labels"].get(LABEL_REVISION) for i in items]
        return sorted(r for r in revs if r)

    assert per_revision("deployments") == [canary]
    assert per_revision("services") == [canary]
    assert per_revision("controllerrevisions") == sorted([stable, canary])
    assert len(scenario.get("httproutes")["items"]) == 1
    assert scenario.route_weights() == {canary: 100}
    # Traffic went on while the operator was down: the data plane does not need it.
    assert_users_saw_no_errors(load, canary)
    assert_users_saw_no_errors(load, stable)
    assert_gateway_never_failed(load, scenario)


# --------------------------------------------------------------------------- 5


def test_prometheus_down_holds_then_error_policy_pauses(node_cluster, operator_ctl, scenario, prometheus_bin,
                                                         tmp_path):
    # This pool's own Prometheus (discovering the same pods), so killing it leaves the cluster's
    # to the other tests.
    prom = PrometheusServer(prometheus_bin, tmp_path / "prometheus",
                            kubeconfig=node_cluster.dir / "prometheus" / "kubeconfig").start()
    try:
        limit = 3
        scenario.create(rollout_spec([(25, 120), (100, 4)], error_policy="Pause", error_limit=limit),
                        prometheus_url=prom.url)
        stable = scenario.stable_rev
        scenario.serve(prom.url)
        canary = scenario.start_rollout()
        scenario.wait(lambda ro, p: (ro.get("lastAnalysis") or {}).get("outcome") == "pass", timeout=180,
                      what="a passing analysis at step 1")
        prom.stop()
        killed = time.time()

        ro = scenario.wait(lambda ro, p: ro.get("phase") == "Paused", timeout=60, what="error policy Pause")
    finally:
        prom.stop()

    # Held while the errors counted up: weight unchanged, still Progressing, not rolled back.
    erring = [r for r in scenario.seen if r.get("consecutiveErrors")]
    assert erring and all(r["canaryWeight"] == 25 for r in erring)
    assert any(r["phase"] == "Progressing" for r in erring)
    # Then the policy: paused at the same weight, the route still splitting 75/25.
    assert ro["pausedBy"] == "errorPolicy" and ro["reason"] == "AnalysisErrorLimitReached"
    assert ro["consecutiveErrors"] >= limit and ro["canaryWeight"] == 25 and ro["canaryRevision"] == canary
    assert ro["lastAnalysis"]["outcome"] == "error" and ro["lastAnalysis"]["reason"] == "MetricsUnavailable"
    assert scenario.pool()["status"]["phase"] == "Paused"
    assert scenario.route_weights() == {stable: 75, canary: 25}
    warn = [e for e in scenario.events("AnalysisErrorLimitReached") if e["type"] == "Warning"]
    assert warn and "paused" in warn[0]["message"] and "unreachable" in warn[0]["message"]
    paused_at = max(r["_at"] for r in scenario.seen if r.get("phase") != "Paused")
    assert paused_at - killed >= (limit - 1) * INTERVAL_S, "paused before the error limit could be reached"


# --------------------------------------------------------------------------- 7


def test_sre_pause_resume_and_promote_through_the_plugin(node_cluster, operator_ctl, scenario):
    """An SRE holds a rollout with ``kubectl diffusion pause``, lets it go on with ``resume`` and
    ends it with ``promote``: the weights the Gateway serves follow each action."""
    from tests.support.kubectl_plugin import run_plugin

    scenario.create(rollout_spec([(25, 600), (100, 4)]), prometheus_url=node_cluster.prometheus_url)
    stable = scenario.stable_rev
    load = scenario.serve(node_cluster.prometheus_url)
    canary = scenario.start_rollout()
    scenario.wait(lambda ro, p: ro.get("canaryWeight") == 25, timeout=180, what="the first step (25%)")

    run_plugin(node_cluster, "pause", POOL, "-n", scenario.ns)
    ro = scenario.wait(lambda ro, p: ro.get("phase") == "Paused", timeout=30, what="paused by the SRE")
    assert ro["pausedBy"] != "errorPolicy" and ro["canaryWeight"] == 25
    paused_at = time.time()
    time.sleep(3 * INTERVAL_S)
    assert scenario.rollout()["canaryWeight"] == 25 and scenario.route_weights() == {stable: 75, canary: 25}
    share, total = load.share(canary, since=paused_at)
    assert total and 0 < share < total, (share, total)  # the Gateway still splits while paused

    run_plugin(node_cluster, "resume", POOL, "-n", scenario.ns)
    scenario.wait(lambda ro, p: ro.get("phase") == "Progressing", timeout=30, what="resumed")
    run_plugin(node_cluster, "promote", POOL, "-n", scenario.ns)
    ro = scenario.wait(lambda ro, p: ro.get("phase") == "Succeeded", timeout=60, what="promoted by the SRE")
    promoted = time.time()
    assert ro["stableRevision"] == canary and ro["history"][-1]["outcome"] == "Promoted"
    assert scenario.route_weights() == {canary: 100}
    # Traefik applies a route change after its provider throttle (2 s by default): within a few
    # seconds every answer comes from the promoted revision.
    settled = wait_all_answers_from(load, canary, since=promoted)
    print(f"the Gateway served only the promoted revision {settled - promoted:.1f} s after promotion")
    assert_users_saw_no_errors(load, canary)
    assert_users_saw_no_errors(load, stable)
    assert_gateway_never_failed(load, scenario)
