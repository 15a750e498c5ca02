"""Reconcile an InferencePool: one level-based pass from spec (and rollout status) to children.

Order of a pass:
1. parse the spec, resolve the DiffusionModel and its Secrets (missing -> condition + retry);
2. compute the desired model revision and snapshot it (ControllerRevision);
3. advance the rollout state machine (``rollout.state_machine.transition``), measuring the
   canary in Prometheus first when an analysis is due;
4. server-side apply every child for the revisions that should run, with the weights the
   rollout status says; delete children of revisions that should not;
5. compute the whole new status from what the cluster reports; the caller writes it once, and
   not at all when nothing changed.

Nothing here talks to Kopf: handlers call ``reconcile_pool`` and act on the ``PoolResult``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

from . import API_GROUP, API_VERSION, builders
from . import conditions as cond
from .errors import DependencyMissing, OperatorError, SpecError, TemporaryError
from .kube import Kube
from .models import check_references
from .rollout import state_machine as sm
from .rollout.metrics_provider import MetricsProvider, measure
from .rollout.promql import namespaced_selector
from .rollout.verdict import AnalysisConfig, decide
from .spec import ModelSpec, PoolSpec, model_revision, pool_revision

log = logging.getLogger("diffusion_operator.pools")

POOL_API = f"{API_GROUP}/{API_VERSION}"
ACTION_ANNOTATION = f"{API_GROUP}/action"
GATEWAY_API = "gateway.networking.k8s.io/v1"
MONITORING_API = "monitoring.coreos.com/v1"

ProviderFactory = Callable[[dict, PoolSpec], MetricsProvider | None]


@dataclass
class PoolResult:
    status: dict
    events: list[tuple[str, str, str]] = field(default_factory=list)
    error: OperatorError | None = None
    requeue_after: float | None = None


def _canary_replicas(pool: PoolSpec, weight: int) -> int:
    """Enough replicas for the canary's share of traffic, and at least one to warm up."""
    return max(1, math.ceil(pool.replicas * weight / 100))


def _deployment_counts(dep: dict | None) -> tuple[int, int, bool]:
    """(replicas, readyReplicas, fully rolled out) as the Deployment controller reports them."""
    if not dep:
        return 0, 0, False
    st = dep.get("status") or {}
    want = (dep.get("spec") or {}).get("replicas", 1)
    ready = st.get("readyReplicas") or 0
    current = (st.get("observedGeneration") or 0) >= (dep["metadata"].get("generation") or 0)
    updated = st.get("updatedReplicas") or 0
    return st.get("replicas") or 0, ready, current and ready >= want and updated >= want


def _unschedulable_gpu(pods: list[dict], pool: PoolSpec) -> str | None:
    """A message naming the GPU request when a pod is Pending for lack of GPUs, else None."""
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                msg = c.get("message") or ""
                if pool.gpu.resource in msg:
                    product = f" ({', '.join(pool.gpu.products)})" if pool.gpu.products else ""
                    return (f"pod {pod['metadata']['name']} requests {pool.gpu.count} {pool.gpu.resource}{product} "
                            f"and no node can take it: {msg}")
    return None


def _snapshot(kube: Kube, namespace: str, pool_name: str, revision: str) -> tuple[ModelSpec, str] | None:
    cr = kube.get("apps/v1", "ControllerRevision", builders.revision_name(pool_name, revision), namespace)
    data = (cr or {}).get("data") or {}
    if data.get("model") and data.get("image"):
        return ModelSpec.from_snapshot(data["model"]), data["image"]
    return None


def reconcile_pool(kube: Kube, pool_obj: dict, *, now: dt.datetime | None = None,
                   provider_factory: ProviderFactory | None = None) -> PoolResult:
    now = now or dt.datetime.now(dt.timezone.utc)
    meta = pool_obj["metadata"]
    name, ns, gen = meta["name"], meta["namespace"], meta.get("generation")
    old = pool_obj.get("status") or {}
    conds = list(old.get("conditions") or [])
    events: list[tuple[str, str, str]] = []
    status: dict = {"observedGeneration": gen}

    def fail(exc: OperatorError, phase: str = "Degraded") -> PoolResult:
        nonlocal conds
        ctype = cond.VALID if isinstance(exc, SpecError) else cond.RESOLVED
        conds = cond.set_condition(conds, ctype, False, exc.reason, str(exc), gen)
        conds = cond.set_condition(conds, cond.READY, False, exc.reason, str(exc), gen)
        was = cond.get_condition(old.get("conditions"), cond.READY)
        if not was or was.get("reason") != exc.reason or was.get("message") != str(exc):
            events.append(("Warning", exc.reason, str(exc)))
        keep = {k: old[k] for k in ("replicas", "readyReplicas", "selector", "rollout", "modelRevision") if k in old}
        return PoolResult(status={**keep, **status, "phase": old.get("phase") if old.get("rollout") else phase,
                                  "conditions": conds}, events=events, error=exc)

    # 1. spec and references
    try:
        pool = PoolSpec.from_body(pool_obj.get("spec") or {})
    except (SpecError, KeyError, ValueError, TypeError) as exc:
        return fail(exc if isinstance(exc, SpecError) else SpecError(f"spec could not be read: {exc}"))
    conds = cond.set_condition(conds, cond.VALID, True, "SpecValid", "spec is valid", gen)
    dm = kube.get(POOL_API, "DiffusionModel", pool.model_name, ns)
    if dm is None:
        return fail(DependencyMissing(f"DiffusionModel {ns}/{pool.model_name} (spec.modelRef.name) not found",
                                      reason="ModelNotFound", delay=15), phase="Pending")
    try:
        model = ModelSpec.from_body(pool.model_name, dm.get("spec") or {})
        check_references(kube, ns, model)
    except (SpecError, DependencyMissing) as exc:
        return fail(exc, phase="Pending")
    conds = cond.set_condition(conds, cond.RESOLVED, True, "ReferencesResolved",
                               f"DiffusionModel {pool.model_name} and its Secrets exist", gen)
    image = pool.image or builders.DEFAULT_SAMPLER_IMAGE
    status["modelRevision"] = model_revision(model)
    desired = pool_revision(status["modelRevision"], image)
    status["desiredRevision"] = desired

    # 2./3. rollout state
    rspec = sm.RolloutSpec.from_spec((pool_obj.get("spec") or {}).get("rollout"))
    rstatus = sm.RolloutStatus.from_dict(old.get("rollout"))
    canary_dep = None
    if rstatus.canary_revision:
        canary_dep = kube.get("apps/v1", "Deployment", builders.revision_name(name, rstatus.canary_revision), ns)
    canary_ready = _deployment_counts(canary_dep)[2]
    verdict = None
    if sm.analysis_due(rstatus, rspec, now):
        provider = provider_factory(pool_obj, pool) if provider_factory else None
        config = AnalysisConfig.from_pool_spec(pool_obj.get("spec") or {})
        config = dataclasses.replace(config, extra_selector=namespaced_selector(ns, config.extra_selector))
        if provider is None:
            from .rollout.verdict import AnalysisInputs

            inputs = AnalysisInputs(error="no Prometheus configured: set spec.prometheus.url or the operator's "
                                          "DIFFUSION_OPERATOR_PROMETHEUS_URL")
        else:
            inputs = measure(provider, name, rstatus.canary_revision, rstatus.stable_revision, config,
                             canary_age_s=sm.canary_age_s(rstatus, now))
        verdict = decide(inputs, config)
    action = sm.SREAction.parse((meta.get("annotations") or {}).get(ACTION_ANNOTATION))
    decision = sm.transition(rstatus, rspec, sm.Observations(now=now, desired_revision=desired,
                                                             canary_ready=canary_ready, verdict=verdict,
                                                             verdict_at=now, action=action))
    ro = decision.status
    for a in decision.events:
        events.append((a.event_type or "Normal", a.reason or "Rollout", a.message or ""))

    # 4. children
    active = sm.active_revisions(ro)
    models: dict[str, tuple[ModelSpec, str]] = {}
    for rev in active:
        if rev == desired:
            models[rev] = (model, image)
            existing = kube.get("apps/v1", "ControllerRevision", builders.revision_name(name, rev), ns)
            number = int(existing.get("revision") or 1) if existing else _next_revision_number(kube, ns, name)
            kube.apply(builders.controller_revision(pool_obj, rev, number, model, image))
        else:
            snap = _snapshot(kube, ns, name, rev)
            if snap is None:
                # Only a snapshot says what an older revision ran; without one we cannot rebuild it.
                return fail(TemporaryError(f"no ControllerRevision snapshot for revision {rev}",
                                           reason="RevisionSnapshotMissing", delay=30))
            models[rev] = snap
    queue = {q["revision"] for q in ro.scale_down_queue}
    applied_deps: dict[str, dict] = {}
    for rev in active:
        if rev == ro.stable_revision:
            replicas = pool.replicas
        elif rev == ro.canary_revision:
            replicas = _canary_replicas(pool, ro.canary_weight)
        else:  # old stable waiting for its scale-down delay keeps serving drained traffic
            replicas = pool.replicas if rev in queue else 0
        rev_model, rev_image = models[rev]
        applied_deps[rev] = kube.apply(builders.deployment(pool_obj, pool, rev_model, rev, replicas, image=rev_image))
        kube.apply(builders.revision_service(pool_obj, pool, rev))
    kube.apply(builders.pool_service(pool_obj, pool))
    _garbage_collect(kube, ns, name, set(active))

    weights = sm.desired_weights(ro)
    if pool.traffic_provider == "gateway-api":
        if kube.has_kind(GATEWAY_API, "HTTPRoute"):
            kube.apply(builders.httproute(pool_obj, pool, weights))
            conds = cond.set_condition(conds, cond.TRAFFIC, True, "HTTPRouteApplied",
                                       _weights_text(weights), gen)
        else:
            conds = cond.set_condition(conds, cond.TRAFFIC, False, "GatewayAPIMissing",
                                       "traffic.provider is gateway-api but the HTTPRoute CRD is not installed", gen)
    else:
        conds = cond.set_condition(conds, cond.TRAFFIC, True, "ServiceRouting",
                                   "pool Service selects every ready revision; weights follow replica counts", gen)
    if pool.autoscaling:
        kube.apply(builders.hpa(pool_obj, pool))
    elif kube.get("autoscaling/v2", "HorizontalPodAutoscaler", name, ns) is not None:
        kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", name, ns)  # autoscaling was switched off
    kube.apply(builders.pdb(pool_obj))
    kube.apply(builders.network_policy(pool_obj))
    if pool.monitoring_enabled:
        conds = _apply_monitoring(kube, pool_obj, pool, ro, conds, gen)

    # 5. status from what the cluster reports
    stable_dep = applied_deps.get(ro.stable_revision)
    replicas, ready, rolled_out = _deployment_counts(stable_dep)
    pods = kube.list("v1", "Pod", ns, label_selector=f"{builders.LABEL_POOL}={name}")
    no_gpu = _unschedulable_gpu(pods, pool)
    status.update({
        "replicas": replicas, "readyReplicas": ready,
        "selector": f"{builders.LABEL_POOL}={name}",
        "rollout": ro.to_dict(),
    })
    rolling = bool(ro.canary_revision)
    if no_gpu:
        phase = "Degraded" if ready else "Pending"
        conds = cond.set_condition(conds, cond.READY, bool(ready) and ready >= pool.replicas, "InsufficientGPU",
                                   no_gpu, gen)
        conds = cond.set_condition(conds, cond.DEGRADED, True, "InsufficientGPU", no_gpu, gen)
    elif rolled_out and ready >= pool.replicas:
        phase = "Ready"
        conds = cond.set_condition(conds, cond.READY, True, "Ready",
                                   f"{ready}/{pool.replicas} replicas of revision {ro.stable_revision} ready", gen)
        conds = cond.set_condition(conds, cond.DEGRADED, False, "AsExpected", "no problems", gen)
    else:
        # Losing every ready replica after having had some is Degraded; starting up is Progressing.
        phase = "Degraded" if ready == 0 and old.get("readyReplicas") else "Progressing"
        conds = cond.set_condition(conds, cond.READY, False, "ReplicasNotReady",
                                   f"{ready}/{pool.replicas} replicas of revision {ro.stable_revision} ready", gen)
        conds = cond.set_condition(conds, cond.DEGRADED, ready < 1 and bool(old.get("readyReplicas")),
                                   "NoReadyReplicas" if ready < 1 else "AsExpected",
                                   "no ready replicas" if ready < 1 else "no problems", gen)
    if ro.phase == sm.Phase.ROLLED_BACK:
        phase = "RolledBack"
    elif ro.phase == sm.Phase.PAUSED:
        phase = "Paused"
    elif rolling and phase == "Ready":
        phase = "Progressing"
    conds = cond.set_condition(conds, cond.PROGRESSING, rolling or not rolled_out,
                               ro.reason or ("RolloutInProgress" if rolling else "Stable"),
                               ro.message or ("" if rolling else f"serving revision {ro.stable_revision}"), gen)
    status["phase"] = phase
    status["conditions"] = conds
    if no_gpu and (cond.get_condition(old.get("conditions"), cond.DEGRADED) or {}).get("reason") != "InsufficientGPU":
        events.append(("Warning", "InsufficientGPU", no_gpu))
    return PoolResult(status=status, events=events, requeue_after=sm.next_wakeup_s(ro, rspec, now))


def _weights_text(weights: dict[str, int]) -> str:
    return ", ".join(f"{rev}={w}%" for rev, w in sorted(weights.items(), key=lambda kv: -kv[1])) or "no backends"


def _next_revision_number(kube: Kube, ns: str, pool: str) -> int:
    existing = kube.list("apps/v1", "ControllerRevision", ns, label_selector=f"{builders.LABEL_POOL}={pool}")
    return max([int(cr.get("revision") or 0) for cr in existing] + [0]) + 1


def _garbage_collect(kube: Kube, ns: str, pool: str, keep: set[str]) -> None:
    """Delete Deployments and Services of revisions that are neither stable, canary nor queued."""
    selector = f"{builders.LABEL_POOL}={pool},{builders.LABEL_REVISION}"
    for api, kind in (("apps/v1", "Deployment"), ("v1", "Service")):
        for obj in kube.list(api, kind, ns, label_selector=selector):
            rev = obj["metadata"]["labels"].get(builders.LABEL_REVISION)
            if rev not in keep:
                kube.delete(api, kind, obj["metadata"]["name"], ns)


def _apply_monitoring(kube: Kube, pool_obj: dict, pool: PoolSpec, ro: sm.RolloutStatus, conds: list[dict],
                      gen: int | None) -> list[dict]:
    if not kube.has_kind(MONITORING_API, pool.monitoring_kind):
        return cond.set_condition(conds, cond.MONITORING, False, "MonitoringCRDsMissing",
                                  f"{pool.monitoring_kind} CRD (monitoring.coreos.com) not installed; "
                                  "install the Prometheus Operator or set spec.monitoring.enabled=false", gen)
    kube.apply(builders.monitor(pool_obj, pool))
    made = [pool.monitoring_kind]
    if pool.prometheus_rule and kube.has_kind(MONITORING_API, "PrometheusRule"):
        from .rollout.rules import prometheus_rule

        kube.apply(prometheus_rule(pool_obj, pool_obj.get("spec") or {}, ro.stable_revision))
        made.append("PrometheusRule")
    return cond.set_condition(conds, cond.MONITORING, True, "MonitorApplied", " and ".join(made) + " applied", gen)
