"""Reconcile an InferencePool: one level-based pass from spec (and rollout status) to children.

A pass is four named steps and a pure status function:

1. ``resolve``: parse the spec, find the DiffusionModel and its Secrets, compute the desired
   revision (model revision + sampler image);
2. ``advance_rollout``: measure the canary in Prometheus when an analysis is due, render the
   model's golden prompts on canary and stable while a Ready canary waits for its first
   traffic (``rollout.renderer``, judged by ``rollout.golden``), then run the rollout state
   machine (``rollout.state_machine.transition``);
3. ``apply_children``: server-side apply the Deployments first (they take longest to come up),
   then Services, HTTPRoute, HPA, PDB, NetworkPolicy and monitoring; delete what the rollout
   no longer needs;
4. ``unschedulable_gpu``: whether pods wait for GPUs no node has;
5. ``pool_status``: the whole new status and the Events, from what the steps saw (pure).

Every ``OperatorError`` raised on the way (a missing model, a child the API server rejects, the
API being down) ends in ``failed_status``: a condition and an Event naming the cause, and the
error on the result, which the handler turns into the right Kopf retry. Nothing here talks to
Kopf, and nothing here reads the clock or the environment: ``now`` and ``ReconcileOptions``
come in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import API_GROUP, API_VERSION, builders
from . import conditions as cond
from .conditions import PoolPhase, Reason
from .errors import DependencyMissing, OperatorError, SpecError, TemporaryError
from .kube import KubeAPI
from .models import check_references
from .pod_health import PodProblem, pods_problem
from .rollout import state_machine as sm
from .rollout.checks import check_analysis
from .rollout.golden import GoldenResult, GoldenSpec, unavailable
from .rollout.metrics_provider import MetricsProvider, measure
from .rollout.promql import namespaced_selector
from .rollout.renderer import Renderer, render_and_judge
from .rollout.verdict import AnalysisConfig, AnalysisInputs, Verdict, decide
from .spec import ModelSpec, PoolSpec, model_revision, pool_revision

log = logging.getLogger("diffusion_operator.pools")

POOL_API = f"{API_GROUP}/{API_VERSION}"
ACTION_ANNOTATION = f"{API_GROUP}/action"
GATEWAY_API = "gateway.networking.k8s.io/v1"
MONITORING_API = "monitoring.coreos.com/v1"

ProviderFactory = Callable[[dict, PoolSpec], MetricsProvider | None]
#: (type, reason, message) of a Kubernetes Event.
Event = tuple[str, str, str]


@dataclass(frozen=True)
class ReconcileOptions:
    """What the operator's settings decide for every pool."""

    sampler_image: str = builders.DEFAULT_SAMPLER_IMAGE
    allow_file_sources: bool = False
    allow_fault_injection: bool = False


@dataclass
class PoolResult:
    status: dict
    events: list[Event] = field(default_factory=list)
    error: OperatorError | None = None
    #: The analysis this pass ran, if one was due (for the operator's logs and metrics).
    verdict: Verdict | None = None
    #: The golden renders this pass judged, if any (for the operator's logs).
    golden: GoldenResult | None = None


@dataclass(frozen=True)
class Resolved:
    pool: PoolSpec
    model: ModelSpec
    image: str
    model_revision: str
    desired: str
    #: The model's golden renders (``spec.goldenRenders``): the canary's gate before traffic.
    golden: GoldenSpec | None = None


@dataclass(frozen=True)
class Applied:
    stable_deployment: dict | None
    traffic: tuple[bool, str, str]
    monitoring: tuple[bool, str, str] | None


# --------------------------------------------------------------------------- the pass


def reconcile_pool(kube: KubeAPI, pool_obj: dict, *, now: dt.datetime | None = None,
                   options: ReconcileOptions = ReconcileOptions(),
                   provider_factory: ProviderFactory | None = None, renderer: Renderer | None = None) -> PoolResult:
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        resolved = resolve(kube, pool_obj, options)
        ro, rspec, events, verdict, golden = advance_rollout(kube, pool_obj, resolved, now, provider_factory,
                                                             renderer)
        applied = apply_children(kube, pool_obj, resolved, ro)
        pods = kube.select("v1", "Pod", pool_obj["metadata"]["namespace"],
                           {builders.LABEL_POOL: pool_obj["metadata"]["name"]})
        status, more = pool_status(pool_obj, resolved, ro, applied, unschedulable_gpu(pods, resolved.pool),
                                   pods_problem(pods))
        return PoolResult(status=status, events=events + more, verdict=verdict, golden=golden)
    except OperatorError as exc:
        return failed_status(pool_obj, exc)


def resolve(kube: KubeAPI, pool_obj: dict, options: ReconcileOptions) -> Resolved:
    """The typed spec, the model it serves, and the revision that should be running."""
    ns = pool_obj["metadata"]["namespace"]
    try:
        pool = PoolSpec.from_body(pool_obj.get("spec") or {})
    except (KeyError, ValueError, TypeError) as exc:
        raise SpecError(f"spec could not be read: {exc}") from exc
    dm = kube.get(POOL_API, "DiffusionModel", pool.model_name, ns)
    if dm is None:
        raise DependencyMissing(f"DiffusionModel {ns}/{pool.model_name} (spec.modelRef.name) not found",
                                reason=Reason.MODEL_NOT_FOUND, delay=15)
    model = ModelSpec.from_body(pool.model_name, dm.get("spec") or {})
    check_references(kube, ns, model, allow_file_sources=options.allow_file_sources,
                     allow_fault_injection=options.allow_fault_injection)
    try:
        golden = GoldenSpec.from_spec((dm.get("spec") or {}).get("goldenRenders"))
    except (KeyError, ValueError, TypeError) as exc:
        raise SpecError(f"DiffusionModel {ns}/{pool.model_name} spec.goldenRenders could not be read: {exc}") from exc
    image = pool.image or options.sampler_image
    mrev = model_revision(model)
    return Resolved(pool=pool, model=model, image=image, model_revision=mrev, desired=pool_revision(mrev, image),
                    golden=golden)


def advance_rollout(kube: KubeAPI, pool_obj: dict, r: Resolved, now: dt.datetime,
                    provider_factory: ProviderFactory | None, renderer: Renderer | None = None,
                    ) -> tuple[sm.RolloutStatus, sm.RolloutSpec, list[Event], Verdict | None, GoldenResult | None]:
    """Judge the canary if an analysis is due (or its golden renders, while it waits for
    traffic), then take the state machine's next step."""
    meta = pool_obj["metadata"]
    name, ns = meta["name"], meta["namespace"]
    rspec = r.pool.rollout
    rstatus = sm.RolloutStatus.from_dict((pool_obj.get("status") or {}).get("rollout"))
    canary_ready = False
    if rstatus.canary_revision:
        dep = kube.get("apps/v1", "Deployment", builders.revision_name(name, rstatus.canary_revision), ns)
        canary_ready = deployment_counts(dep)[2]
    verdict = None
    if sm.analysis_due(rstatus, rspec, now):
        config = dataclasses.replace(r.pool.analysis,
                                     extra_selector=namespaced_selector(ns, r.pool.analysis.extra_selector))
        verdict = decide(_measure(pool_obj, r, rstatus, config, now, provider_factory), config)
    golden = _golden_renders(pool_obj, r, rstatus, canary_ready, now, renderer)
    action = sm.SREAction.parse((meta.get("annotations") or {}).get(ACTION_ANNOTATION))
    decision = sm.transition(rstatus, rspec, sm.Observations(
        now=now, desired_revision=r.desired, canary_ready=canary_ready, verdict=verdict, verdict_at=now,
        action=action, golden_gate=r.golden is not None,
        golden=golden.to_status(sm.format_time(now)) if golden else None))
    events = [(a.event_type or "Normal", a.reason or "Rollout", a.message or "") for a in decision.events]
    return decision.status, rspec, events, verdict, golden


def golden_due(ro: sm.RolloutStatus, r: Resolved, canary_ready: bool, now: dt.datetime) -> bool:
    """Whether this pass should render: a Ready canary of the desired revision waits in Pending
    for a gate that has not passed, and a failed try is an analysis interval old."""
    if r.golden is None or not canary_ready or ro.phase != sm.Phase.PENDING or ro.canary_revision != r.desired:
        return False
    if (ro.golden_render or {}).get("revision") != ro.canary_revision:
        return True  # not tried yet for this canary
    retry = sm.golden_retry_at(ro, r.pool.rollout)
    if retry is None:
        return False
    tried = retry - dt.timedelta(seconds=r.pool.rollout.analysis_interval_s)
    return now >= retry or now < tried  # a clock that stepped back retries at once


def _golden_renders(pool_obj: dict, r: Resolved, ro: sm.RolloutStatus, canary_ready: bool, now: dt.datetime,
                    renderer: Renderer | None) -> GoldenResult | None:
    if not golden_due(ro, r, canary_ready, now):
        return None
    assert r.golden is not None and ro.canary_revision and ro.stable_revision
    if renderer is None:
        return unavailable(ro.canary_revision, "this operator has no renderer for golden renders")
    name = pool_obj["metadata"]["name"]
    return render_and_judge(renderer, r.golden, namespace=pool_obj["metadata"]["namespace"],
                            revision=ro.canary_revision,
                            stable_service=builders.revision_name(name, ro.stable_revision),
                            canary_service=builders.revision_name(name, ro.canary_revision),
                            port=r.pool.service_port)


def _measure(pool_obj: dict, r: Resolved, ro: sm.RolloutStatus, config: AnalysisConfig, now: dt.datetime,
             provider_factory: ProviderFactory | None) -> AnalysisInputs:
    provider = provider_factory(pool_obj, r.pool) if provider_factory else None
    assert ro.canary_revision, "an analysis is only due while a canary runs"
    if provider is None:
        return AnalysisInputs(error="no Prometheus configured: set spec.prometheus.url or start the operator "
                                    "with --prometheus-url")
    return measure(provider, pool_obj["metadata"]["name"], ro.canary_revision, ro.stable_revision, config,
                   canary_age_s=sm.canary_age_s(ro, now))


def apply_children(kube: KubeAPI, pool_obj: dict, r: Resolved, ro: sm.RolloutStatus) -> Applied:
    """Everything the pool owns, as the rollout status says it should be now."""
    meta = pool_obj["metadata"]
    name, ns = meta["name"], meta["namespace"]
    pool = r.pool
    active = sm.active_revisions(ro)
    runs = {rev: _revision_model(kube, pool_obj, r, rev) for rev in active}
    queue = {q["revision"]: q for q in ro.scale_down_queue}
    deployments: dict[str, dict] = {}
    for rev in active:
        rev_model, rev_image = runs[rev]
        deployments[rev] = kube.apply(builders.deployment(pool_obj, pool, rev_model, rev,
                                                          revision_replicas(pool, ro, rev, queue), image=rev_image))
    for rev in active:
        kube.apply(builders.revision_service(pool_obj, pool, rev))
    kube.apply(builders.pool_service(pool_obj, pool))
    _garbage_collect(kube, ns, name, set(active))
    traffic = _apply_traffic(kube, pool_obj, pool, sm.desired_weights(ro))
    if pool.autoscaling:
        kube.apply(builders.hpa(pool_obj, pool))
    elif kube.get("autoscaling/v2", "HorizontalPodAutoscaler", name, ns) is not None:
        kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", name, ns)  # autoscaling was switched off
    kube.apply(builders.pdb(pool_obj))
    kube.apply(builders.network_policy(pool_obj))
    monitoring = _apply_monitoring(kube, pool_obj, pool, ro) if pool.monitoring_enabled else None
    return Applied(stable_deployment=deployments.get(ro.stable_revision or ""), traffic=traffic,
                   monitoring=monitoring)


def revision_replicas(pool: PoolSpec, ro: sm.RolloutStatus, rev: str, queue: Mapping[str, Mapping]) -> int:
    """Stable: the pool's replicas. Canary: enough for its share of traffic, at least one to warm
    up. A revision waiting for its scale-down delay keeps what it had while its traffic drains:
    an old stable the pool's replicas, a rolled-back canary those of its last weight."""
    if rev == ro.stable_revision:
        return pool.replicas
    if rev == ro.canary_revision:
        return max(1, math.ceil(pool.replicas * ro.canary_weight / 100))
    if rev not in queue:
        return 0
    weight = queue[rev].get("weight")
    return pool.replicas if weight is None else max(1, math.ceil(pool.replicas * weight / 100))


def _revision_model(kube: KubeAPI, pool_obj: dict, r: Resolved, rev: str) -> tuple[ModelSpec, str]:
    """What ``rev`` runs. The desired revision is snapshotted in a ControllerRevision; an older
    one can only be rebuilt from its snapshot, since the DiffusionModel now says something else."""
    name, ns = pool_obj["metadata"]["name"], pool_obj["metadata"]["namespace"]
    existing = kube.get("apps/v1", "ControllerRevision", builders.revision_name(name, rev), ns)
    if rev == r.desired:
        number = int(existing.get("revision") or 1) if existing else _next_revision_number(kube, ns, name)
        kube.apply(builders.controller_revision(pool_obj, rev, number, r.model, r.image))
        return r.model, r.image
    data = (existing or {}).get("data") or {}
    if data.get("model") and data.get("image"):
        return ModelSpec.from_snapshot(data["model"]), data["image"]
    raise TemporaryError(f"no ControllerRevision snapshot for revision {rev}",
                         reason=Reason.REVISION_SNAPSHOT_MISSING, delay=30)


def _apply_traffic(kube: KubeAPI, pool_obj: dict, pool: PoolSpec, weights: dict[str, int]) -> tuple[bool, str, str]:
    if pool.traffic_provider != "gateway-api":
        return True, Reason.SERVICE_ROUTING, "pool Service selects every ready revision; weights follow replica counts"
    if not kube.has_kind(GATEWAY_API, "HTTPRoute"):
        return (False, Reason.GATEWAY_API_MISSING,
                "traffic.provider is gateway-api but the HTTPRoute CRD is not installed")
    kube.apply(builders.httproute(pool_obj, pool, weights))
    return True, Reason.HTTPROUTE_APPLIED, _weights_text(weights)


def _apply_monitoring(kube: KubeAPI, pool_obj: dict, pool: PoolSpec, ro: sm.RolloutStatus) -> tuple[bool, str, str]:
    if not kube.has_kind(MONITORING_API, pool.monitoring_kind):
        return (False, Reason.MONITORING_CRDS_MISSING,
                f"{pool.monitoring_kind} CRD (monitoring.coreos.com) not installed; "
                "install the Prometheus Operator or set spec.monitoring.enabled=false")
    kube.apply(builders.monitor(pool_obj, pool))
    made = [pool.monitoring_kind]
    if pool.prometheus_rule and kube.has_kind(MONITORING_API, "PrometheusRule"):
        from .rollout.rules import prometheus_rule

        kube.apply(prometheus_rule(pool_obj, pool, ro.stable_revision))
        made.append("PrometheusRule")
    return True, Reason.MONITOR_APPLIED, " and ".join(made) + " applied"


def _weights_text(weights: dict[str, int]) -> str:
    return ", ".join(f"{rev}={w}%" for rev, w in sorted(weights.items(), key=lambda kv: -kv[1])) or "no backends"


def _next_revision_number(kube: KubeAPI, ns: str, pool: str) -> int:
    existing = kube.list("apps/v1", "ControllerRevision", ns, label_selector=f"{builders.LABEL_POOL}={pool}")
    return max([int(cr.get("revision") or 0) for cr in existing] + [0]) + 1


def _garbage_collect(kube: KubeAPI, ns: str, pool: str, keep: set[str]) -> None:
    """Delete Deployments and Services of revisions that are neither stable, canary nor queued."""
    for api, kind in (("apps/v1", "Deployment"), ("v1", "Service")):
        for obj in kube.select(api, kind, ns, {builders.LABEL_POOL: pool, builders.LABEL_REVISION: None}):
            rev = obj["metadata"]["labels"].get(builders.LABEL_REVISION)
            if rev not in keep:
                log.info("deleting %s %s/%s: revision %s is no longer stable, canary or draining", kind, ns,
                         obj["metadata"]["name"], rev, extra={"namespace": ns, "pool": pool, "revision": rev})
                kube.delete(api, kind, obj["metadata"]["name"], ns)


# --------------------------------------------------------------------------- what the cluster says


def deployment_counts(dep: dict | None) -> tuple[int, int, bool]:
    """(replicas, readyReplicas, fully rolled out) as the Deployment controller reports them."""
    if not dep:
        return 0, 0, False
    st = dep.get("status") or {}
    want = (dep.get("spec") or {}).get("replicas", 1)
    ready = st.get("readyReplicas") or 0
    current = (st.get("observedGeneration") or 0) >= (dep["metadata"].get("generation") or 0)
    updated = st.get("updatedReplicas") or 0
    return st.get("replicas") or 0, ready, current and ready >= want and updated >= want


def _not_observed_yet(dep: dict | None) -> bool:
    if not dep:
        return False
    return ((dep.get("status") or {}).get("observedGeneration") or 0) < (dep["metadata"].get("generation") or 0)


def unschedulable_message(pod: dict) -> str | None:
    """The scheduler's message when ``pod`` is Pending because no node can take it, else None."""
    if (pod.get("status") or {}).get("phase") != "Pending":
        return None
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return c.get("message") or ""
    return None


def unschedulable_gpu(pods: list[dict], pool: PoolSpec) -> str | None:
    """A message naming the GPU request when a pod is Pending for lack of GPUs, else None."""
    for pod in pods:
        msg = unschedulable_message(pod)
        if msg is not None and pool.gpu.resource in msg:
            product = f" ({', '.join(pool.gpu.products)})" if pool.gpu.products else ""
            return (f"pod {pod['metadata']['name']} requests {pool.gpu.count} {pool.gpu.resource}{product} "
                    f"and no node can take it: {msg}")
    return None


# --------------------------------------------------------------------------- status (pure)


def pool_status(pool_obj: dict, r: Resolved, ro: sm.RolloutStatus, applied: Applied,
                no_gpu: str | None, pod_trouble: PodProblem | None = None) -> tuple[dict, list[Event]]:
    """The pool's whole new status, and the Events its changes deserve. No I/O."""
    meta = pool_obj["metadata"]
    gen = meta.get("generation")
    old = pool_obj.get("status") or {}
    pool = r.pool
    events: list[Event] = []
    conds = list(old.get("conditions") or [])
    conds = cond.set_condition(conds, cond.VALID, True, Reason.SPEC_VALID, "spec is valid", gen)
    conds = cond.set_condition(conds, cond.RESOLVED, True, Reason.REFERENCES_RESOLVED,
                               f"DiffusionModel {pool.model_name} and its Secrets exist", gen)
    conds = cond.set_condition(conds, cond.TRAFFIC, *applied.traffic, gen)
    if applied.monitoring is not None:
        conds = cond.set_condition(conds, cond.MONITORING, *applied.monitoring, gen)
    findings = check_analysis(pool.rollout, pool.analysis, pool.scrape_interval)
    if findings:
        text = "; ".join(f.message for f in findings)
        conds = cond.set_condition(conds, cond.ANALYSIS, False, findings[0].reason, text, gen)
        if (cond.get_condition(old.get("conditions"), cond.ANALYSIS) or {}).get("message") != text:
            events.append(("Warning", findings[0].reason, text))
    else:
        conds = cond.set_condition(conds, cond.ANALYSIS, True, Reason.ANALYSIS_WINDOWS_FIT,
                                   "every window holds at least two scrapes and every paging pair arms within "
                                   "the steps", gen)
    replicas, ready, rolled_out = deployment_counts(applied.stable_deployment)
    rolling = bool(ro.canary_revision)
    serving = f"{ready}/{pool.replicas} replicas of revision {ro.stable_revision} ready"
    lagging = _not_observed_yet(applied.stable_deployment) and bool(old.get("phase"))
    if lagging:
        # The Deployment controller has not looked at the Deployment's latest generation yet
        # (a hand edit, a scale, our own apply a moment ago): its counts are from before.
        # Keep what the pool said; the controller's next status update runs this again.
        replicas, ready = old.get("replicas", replicas), old.get("readyReplicas", ready)
        phase = PoolPhase(old["phase"]) if old["phase"] in set(PoolPhase) else PoolPhase.PROGRESSING
        rolled_out = (cond.get_condition(old.get("conditions"), cond.PROGRESSING) or {}).get("status") == "False"
    elif no_gpu:
        phase = PoolPhase.DEGRADED if ready else PoolPhase.PENDING
        conds = cond.set_condition(conds, cond.READY, bool(ready) and ready >= pool.replicas,
                                   Reason.INSUFFICIENT_GPU, no_gpu, gen)
        conds = cond.set_condition(conds, cond.DEGRADED, True, Reason.INSUFFICIENT_GPU, no_gpu, gen)
        if (cond.get_condition(old.get("conditions"), cond.DEGRADED) or {}).get("reason") != Reason.INSUFFICIENT_GPU:
            events.append(("Warning", Reason.INSUFFICIENT_GPU, no_gpu))
    elif pod_trouble and not (rolled_out and ready >= pool.replicas):
        # The kubelet says why pods do not start: that, not "0/2 ready", is what the SRE needs.
        phase = PoolPhase.DEGRADED
        conds = cond.set_condition(conds, cond.READY, False, pod_trouble.reason, pod_trouble.message, gen)
        conds = cond.set_condition(conds, cond.DEGRADED, True, pod_trouble.reason, pod_trouble.message, gen)
        if (cond.get_condition(old.get("conditions"), cond.DEGRADED) or {}).get("reason") != pod_trouble.reason:
            events.append(("Warning", pod_trouble.reason, pod_trouble.message))
    elif rolled_out and ready >= pool.replicas:
        phase = PoolPhase.READY
        conds = cond.set_condition(conds, cond.READY, True, Reason.READY, serving, gen)
        conds = cond.set_condition(conds, cond.DEGRADED, False, Reason.AS_EXPECTED, "no problems", gen)
    else:
        # Losing every ready replica after having had some is Degraded; starting up is Progressing.
        lost_all = ready < 1 and bool(old.get("readyReplicas"))
        phase = PoolPhase.DEGRADED if lost_all else PoolPhase.PROGRESSING
        conds = cond.set_condition(conds, cond.READY, False, Reason.REPLICAS_NOT_READY, serving, gen)
        conds = cond.set_condition(conds, cond.DEGRADED, lost_all,
                                   Reason.NO_READY_REPLICAS if ready < 1 else Reason.AS_EXPECTED,
                                   "no ready replicas" if ready < 1 else "no problems", gen)
    if ro.phase == sm.Phase.ROLLED_BACK:
        phase = PoolPhase.ROLLED_BACK
    elif ro.phase == sm.Phase.PAUSED:
        phase = PoolPhase.PAUSED
    elif rolling and phase == PoolPhase.READY:
        phase = PoolPhase.PROGRESSING
    conds = cond.set_condition(conds, cond.PROGRESSING, rolling or not rolled_out,
                               ro.reason or (Reason.ROLLOUT_IN_PROGRESS if rolling else Reason.STABLE),
                               ro.message or ("" if rolling else f"serving revision {ro.stable_revision}"), gen)
    status = {
        "observedGeneration": gen,
        "modelRevision": r.model_revision,
        "desiredRevision": r.desired,
        "replicas": replicas,
        "readyReplicas": ready,
        "selector": f"{builders.LABEL_POOL}={meta['name']}",
        "rollout": ro.to_dict(),
        "phase": str(phase),
        "conditions": conds,
    }
    return status, events


def failed_status(pool_obj: dict, exc: OperatorError) -> PoolResult:
    """The status and Event for a pass that stopped at ``exc``: Ready=False with its reason,
    everything the last good pass reported kept (the pool still serves what it served)."""
    gen = pool_obj["metadata"].get("generation")
    old = pool_obj.get("status") or {}
    conds = list(old.get("conditions") or [])
    if isinstance(exc, SpecError):  # the spec itself, or a child it yields, is refused
        conds = cond.set_condition(conds, cond.VALID, False, exc.reason, str(exc), gen)
    elif isinstance(exc, DependencyMissing):
        conds = cond.set_condition(conds, cond.RESOLVED, False, exc.reason, str(exc), gen)
    conds = cond.set_condition(conds, cond.READY, False, exc.reason, str(exc), gen)
    events: list[Event] = []
    was = cond.get_condition(old.get("conditions"), cond.READY)
    if not was or was.get("reason") != exc.reason or was.get("message") != str(exc):
        events.append(("Warning", str(exc.reason), str(exc)))
    keep = {k: old[k] for k in ("replicas", "readyReplicas", "selector", "rollout", "modelRevision",
                                "desiredRevision") if k in old}
    first_time = not old.get("rollout")
    waits_for_settings = exc.reason in (Reason.FILE_SOURCE_NOT_ALLOWED, Reason.FAULT_INJECTION_NOT_ALLOWED)
    phase = (PoolPhase.PENDING if isinstance(exc, DependencyMissing) or waits_for_settings
             else PoolPhase.DEGRADED) if first_time else old.get("phase")
    status = {**keep, "observedGeneration": gen, "phase": str(phase) if phase else None, "conditions": conds}
    return PoolResult(status=status, events=events, error=exc)
