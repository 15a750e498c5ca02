"""Watches of what pools own (Deployments, Services, ..., Pods): the cache, and drift.

Every event of a labelled child goes into the object cache, so the reconciler reads children
without API requests. An event that can change something (a deletion, a hand edit, a
Deployment's replica counts moving, a pod turning unschedulable) re-runs the owning pool's
reconcile; our own applies coming back, and status churn the pool does not read, do not.
"""

from __future__ import annotations

from typing import Any

import kopf

from .. import builders
from ..pod_health import pod_problem
from ..pools import POOL_API, unschedulable_message
from . import inferencepool
from .runtime import OperatorState, owner_pool_key

CHILD_LABELS: dict[str, Any] = {builders.LABEL_POOL: kopf.PRESENT, "app.kubernetes.io/managed-by": "diffusion-operator"}

#: (group, version, plural, kind) of every kind a pool owns, watched with CHILD_LABELS.
CHILD_KINDS = (
    ("apps", "v1", "deployments", "Deployment"),
    ("apps", "v1", "controllerrevisions", "ControllerRevision"),
    ("", "v1", "services", "Service"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    ("monitoring.coreos.com", "v1", "podmonitors", "PodMonitor"),
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"),
    ("monitoring.coreos.com", "v1", "prometheusrules", "PrometheusRule"),
)


def _remember(state: OperatorState, body: dict, type: str | None, kind: str) -> None:
    cache = state.kube.cache
    if cache is None:
        return
    if type == "DELETED":
        cache.deleted({**body, "kind": kind})
    else:
        cache.put(body, kind=kind)


def _is_echo(state: OperatorState, body: dict, type: str | None, kind: str) -> bool:
    """True for events that cannot change anything: our own apply coming back, or a status
    update of a child the pool's status does not read. Deletions and hand edits are never
    echoes (the object is gone, or its generation/hash no longer matches what we applied)."""
    if type == "DELETED":
        return False
    meta = body["metadata"]
    if not state.kube.is_as_applied(kind, meta.get("namespace"), meta["name"], body):
        return False
    if kind != "Deployment":
        return True
    key = owner_pool_key(meta.get("namespace"), meta.get("labels"))
    if key is None:
        return True
    # Deployments: the pool's replicas, readiness and rollout gates read these fields.
    st = body.get("status") or {}
    seen = (meta.get("generation"), st.get("observedGeneration"), st.get("replicas"), st.get("readyReplicas"),
            st.get("updatedReplicas"), st.get("availableReplicas"))
    rt = state.pool(key)
    if rt.seen_deployments.get(meta["name"]) == seen:
        return True
    rt.seen_deployments[meta["name"]] = seen
    return False


def _reconcile_owner(state: OperatorState, body: dict) -> None:
    key = owner_pool_key(body["metadata"].get("namespace"), body["metadata"].get("labels"))
    if key is None:
        return
    pool = state.kube.get(POOL_API, "InferencePool", key[1], key[0])
    if pool is not None and not pool["metadata"].get("deletionTimestamp"):
        inferencepool.reconcile_quietly(state, pool)


def _child_handler(kind: str):
    def child_event(body, memo: kopf.Memo, type, **_) -> None:
        state: OperatorState = memo.state
        body = dict(body)
        _remember(state, body, type, kind)
        if type is None:  # the initial listing: the pools' resume handlers cover it
            return
        if not _is_echo(state, body, type, kind):
            _reconcile_owner(state, body)

    child_event.__name__ = f"child_{kind.lower()}"
    return child_event


def pod_event(body, memo: kopf.Memo, type, **_) -> None:
    """Pods are cached for the GPU-shortage and pod-health checks; a pod turning unschedulable,
    or its containers failing for a new reason (or recovering), re-runs its pool."""
    state: OperatorState = memo.state
    body = dict(body)
    meta = body["metadata"]
    before = state.kube.cache.get("Pod", meta.get("namespace"), meta["name"]) if state.kube.cache else None
    _remember(state, body, type, "Pod")
    if type is None:
        return
    was = before is not None and unschedulable_message(before) is not None
    now = type != "DELETED" and unschedulable_message(body) is not None
    trouble_was = _problem_reason(before)
    trouble_now = _problem_reason(body) if type != "DELETED" else None
    if was != now or trouble_was != trouble_now:
        _reconcile_owner(state, body)


def _problem_reason(pod: dict | None) -> str | None:
    problem = pod_problem(pod) if pod is not None else None
    return problem.reason if problem else None


def register(registry: kopf.OperatorRegistry) -> None:
    for group, version, plural, kind in CHILD_KINDS:
        kopf.on.event(group, version, plural, labels=CHILD_LABELS, id=f"child-{plural}",
                      registry=registry)(_child_handler(kind))
    kopf.on.event("", "v1", "pods", labels=CHILD_LABELS, id="pods", registry=registry)(pod_event)
