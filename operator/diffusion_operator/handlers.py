"""Kopf handlers: thin wrappers that call the reconcilers and write status once.

- DiffusionModel create/update/resume -> ``models.reconcile_model``, then the pools using it.
- InferencePool create/update/resume -> ``pools.reconcile_pool``; missing references raise
  ``kopf.TemporaryError`` so Kopf retries with backoff (never a hot loop).
- Events on children (Deployments, Services, ...) and on Unschedulable pods re-run the owning
  pool's reconcile: drift is put back, readiness and GPU shortage reach the status.
- A timer ticks only pools with a rollout in flight (it reads the body, no API call, when idle).

Status is written with one merge patch per reconcile, and skipped when nothing changed.
Reconciles of one pool are serialised with a per-pool lock (child events and the pool's own
handlers may arrive together).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections import defaultdict

import kopf

from . import API_GROUP, API_VERSION, builders, metrics
from .errors import OperatorError, PermanentError, TemporaryError
from .kube import Kube
from .models import reconcile_model
from .pools import POOL_API, PoolResult, reconcile_pool
from .rollout import state_machine as sm

log = logging.getLogger("diffusion_operator.handlers")

TICK_SECONDS = float(os.environ.get("DIFFUSION_OPERATOR_TICK_SECONDS", "5"))
_locks: dict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_phases: dict[tuple[str, str], str] = {}
_phases_lock = threading.Lock()


def _track_phase(key: tuple[str, str], phase: str | None) -> None:
    """Keep diffusion_operator_pools{phase} equal to the pools we know, by phase."""
    with _phases_lock:
        if phase is None:
            _phases.pop(key, None)
        else:
            _phases[key] = phase
        counts: dict[str, int] = defaultdict(int)
        for p in _phases.values():
            counts[p] += 1
        for p in ("Pending", "Progressing", "Ready", "Degraded", "Paused", "RolledBack"):
            metrics.POOLS_BY_PHASE.labels(p).set(counts.get(p, 0))


def _pruned(value):
    """The status as the API server stores it: the schema prunes nulls, so compare without them."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _changed(old: dict, new: dict) -> dict:
    """JSON merge patch turning ``old`` into ``new``: recursive, because a merge patch leaves
    nested keys it does not mention in place; a key gone (or None) in ``new`` becomes null."""
    patch: dict = {}
    for k, v in new.items():
        if v is None:
            if old.get(k) is not None:
                patch[k] = None
        elif isinstance(v, dict) and isinstance(old.get(k), dict):
            sub = _changed(old[k], v)
            if sub:
                patch[k] = sub
        elif old.get(k) != _pruned(v):
            patch[k] = _pruned(v)
    for k in old:
        if k not in new:
            patch[k] = None
    return patch


def _write_status(kube: Kube, kind: str, body: dict, status: dict) -> None:
    patch = _changed(body.get("status") or {}, status)
    if not patch:
        return
    kube.patch_status(POOL_API, kind, body["metadata"]["name"], body["metadata"]["namespace"], patch)
    metrics.STATUS_WRITES.labels(kind).inc()


def _emit(body: dict, events: list[tuple[str, str, str]]) -> None:
    for type_, reason, message in events:
        kopf.event(body, type=type_, reason=reason, message=message[:1000])


@kopf.on.login()
def login(**kwargs):
    """In a pod: the ServiceAccount. Elsewhere: $KUBECONFIG as it is now (tests switch it)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
    """Kopf bookkeeping in annotations with our prefix (never in our status schema), explicit
    API timeouts, and one API client shared by all handlers."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.execution.max_workers = int(os.environ.get("DIFFUSION_OPERATOR_WORKERS", "24"))
    memo.kube = Kube()


# --- DiffusionModel -------------------------------------------------------------------------

@kopf.on.resume(API_GROUP, API_VERSION, "diffusionmodels")
@kopf.on.create(API_GROUP, API_VERSION, "diffusionmodels")
@kopf.on.update(API_GROUP, API_VERSION, "diffusionmodels")
def model_changed(body, memo, **_):
    kube: Kube = memo.kube
    started = time.monotonic()
    result = reconcile_model(kube, dict(body))
    _write_status(kube, "DiffusionModel", body, result.status)
    _emit(body, result.events)
    metrics.RECONCILE_SECONDS.labels("DiffusionModel").observe(time.monotonic() - started)
    metrics.RECONCILES.labels("DiffusionModel", "error" if result.error else "ok").inc()
    # Pools serving this model learn about a new revision now, not at their next event.
    for pool in kube.list(POOL_API, "InferencePool", body["metadata"]["namespace"]):
        if (pool.get("spec") or {}).get("modelRef", {}).get("name") == body["metadata"]["name"]:
            _reconcile_quietly(kube, pool, memo)
    if isinstance(result.error, TemporaryError):
        raise kopf.TemporaryError(str(result.error), delay=result.error.delay)
    if isinstance(result.error, PermanentError):
        raise kopf.PermanentError(str(result.error))


# --- InferencePool --------------------------------------------------------------------------

def _provider_factory(memo):
    def make(pool_obj: dict, pool):
        from .rollout.metrics_provider import PrometheusProvider

        prom = (pool_obj.get("spec") or {}).get("prometheus") or {}
        url = prom.get("url") or os.environ.get("DIFFUSION_OPERATOR_PROMETHEUS_URL")
        if not url:
            return None
        token = None
        ref = (prom.get("authSecretRef") or {}).get("name")
        if ref:
            secret = memo.kube.get("v1", "Secret", ref, pool_obj["metadata"]["namespace"]) or {}
            import base64

            raw = (secret.get("data") or {}).get("token")
            token = base64.b64decode(raw).decode() if raw else None
        return PrometheusProvider(url, timeout_s=float(prom.get("timeoutSeconds", 5)), bearer_token=token)

    return make


def run_pool(kube: Kube, body: dict, memo, on_lock=None) -> PoolResult:
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    with _locks[key]:
        if on_lock:
            on_lock()
        # Re-read under the lock: another reconcile may have just written the status.
        fresh = kube.get(POOL_API, "InferencePool", meta["name"], meta["namespace"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return PoolResult(status={})
        started = time.monotonic()
        try:
            result = reconcile_pool(kube, fresh, provider_factory=_provider_factory(memo))
        except OperatorError as exc:
            metrics.ERRORS.labels("InferencePool", exc.reason).inc()
            metrics.RECONCILES.labels("InferencePool", "error").inc()
            raise
        _write_status(kube, "InferencePool", fresh, result.status)
        _emit(fresh, result.events)
        metrics.RECONCILE_SECONDS.labels("InferencePool").observe(time.monotonic() - started)
        metrics.RECONCILES.labels("InferencePool", "error" if result.error else "ok").inc()
        if result.error:
            metrics.ERRORS.labels("InferencePool", result.error.reason).inc()
        _export_rollout_metrics(meta["namespace"], meta["name"], result.status)
        if result.status.get("phase"):
            _track_phase(key, result.status["phase"])
        return result


def _export_rollout_metrics(ns: str, name: str, status: dict) -> None:
    ro = status.get("rollout") or {}
    if not status:
        return
    metrics.CANARY_WEIGHT.labels(ns, name).set(ro.get("canaryWeight") or 0)
    for phase in ("Pending", "Progressing", "Ready", "Degraded", "Paused", "RolledBack"):
        metrics.ROLLOUT_PHASE.labels(ns, name, phase).set(1 if status.get("phase") == phase else 0)
    for br in (ro.get("lastAnalysis") or {}).get("burnRates") or []:
        for window_key, rate_key in (("shortWindowSeconds", "shortBurnRate"), ("longWindowSeconds", "longBurnRate")):
            if br.get(rate_key) is not None:
                metrics.BURN_RATE.labels(ns, name, br.get("sli", "?"), f"{br.get(window_key)}s").set(br[rate_key])


_waiting: set[tuple[str, str]] = set()
_waiting_lock = threading.Lock()


def _reconcile_quietly(kube: Kube, body: dict, memo) -> None:
    """For event-triggered reconciles: errors go to status/events, the pool's own handler retries.

    Triggers coalesce: when a reconcile of this pool is already waiting for the pool's lock, it
    will read the newest state anyway, so another one adds nothing. (A trigger that arrives
    while a reconcile is running, not waiting, still queues one: that reconcile may have read
    the state before the change.)
    """
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    with _waiting_lock:
        if key in _waiting:
            return
        _waiting.add(key)
    try:
        run_pool(kube, body, memo, on_lock=lambda: _discard_waiting(key))
    except OperatorError as exc:
        log.warning("reconcile of %s/%s: %s", key[0], key[1], exc)
    finally:
        _discard_waiting(key)


def _discard_waiting(key: tuple[str, str]) -> None:
    with _waiting_lock:
        _waiting.discard(key)


@kopf.on.resume(API_GROUP, API_VERSION, "inferencepools")
@kopf.on.create(API_GROUP, API_VERSION, "inferencepools")
@kopf.on.update(API_GROUP, API_VERSION, "inferencepools")
def pool_changed(body, memo, **_):
    kube: Kube = memo.kube
    result = run_pool(kube, dict(body), memo)
    if isinstance(result.error, TemporaryError):
        raise kopf.TemporaryError(str(result.error), delay=result.error.delay)
    if isinstance(result.error, PermanentError):
        raise kopf.PermanentError(str(result.error))


@kopf.on.event(API_GROUP, API_VERSION, "inferencepools", id="pool-gone")
def pool_event(body, type, **_):
    if type == "DELETED":
        _track_phase((body["metadata"]["namespace"], body["metadata"]["name"]), None)


@kopf.timer(API_GROUP, API_VERSION, "inferencepools", interval=TICK_SECONDS, initial_delay=TICK_SECONDS)
def pool_tick(body, memo, **_):
    """Drive time-based rollout steps. Idle pools cost nothing: the check reads the body only."""
    ro = sm.RolloutStatus.from_dict((body.get("status") or {}).get("rollout"))
    annotations = body["metadata"].get("annotations") or {}
    pending_action = annotations.get(f"{API_GROUP}/action") not in (None, ro.last_action)
    if not pending_action:
        rspec = sm.RolloutSpec.from_spec((body.get("spec") or {}).get("rollout"))
        wake = sm.next_wakeup_s(ro, rspec, dt.datetime.now(dt.timezone.utc))
        if wake is None or wake > TICK_SECONDS / 2:
            return
    _reconcile_quietly(memo.kube, dict(body), memo)


# --- children -------------------------------------------------------------------------------

def _owner_pool(memo, namespace: str, labels: dict) -> dict | None:
    pool_name = (labels or {}).get(builders.LABEL_POOL)
    if not pool_name:
        return None
    return memo.kube.get(POOL_API, "InferencePool", pool_name, namespace)


_CHILD_LABELS = {builders.LABEL_POOL: kopf.PRESENT, "app.kubernetes.io/managed-by": "diffusion-operator"}


_seen_rollout_state: dict[tuple[str, str], tuple] = {}


def _is_echo(kube: Kube, body: dict, type: str | None) -> bool:
    """True for events that cannot change anything: our own apply coming back, or a status
    update of a child the pool's status does not read. Deletions and hand edits are never
    echoes (the object is gone, or its generation/hash no longer matches what we applied)."""
    if type == "DELETED":
        return False
    meta = body["metadata"]
    kind = body.get("kind", "")
    if not kube.is_as_applied(kind, meta.get("namespace"), meta["name"], body):
        return False
    if kind != "Deployment":
        return True
    # Deployments: the pool's replicas, readiness and rollout gates read these fields.
    st = body.get("status") or {}
    state = (meta.get("generation"), st.get("observedGeneration"), st.get("replicas"), st.get("readyReplicas"),
             st.get("updatedReplicas"), st.get("availableReplicas"))
    key = (meta.get("namespace"), meta["name"])
    if _seen_rollout_state.get(key) == state:
        return True
    _seen_rollout_state[key] = state
    return False


def _child_event(body, memo, type, **_):
    if type is None:  # initial listing at startup: the pool's resume handler covers it
        return
    if _is_echo(memo.kube, body, type):
        return
    pool = _owner_pool(memo, body["metadata"]["namespace"], body["metadata"].get("labels"))
    if pool is not None and not pool["metadata"].get("deletionTimestamp"):
        _reconcile_quietly(memo.kube, pool, memo)


for _group, _version, _plural in (("apps", "v1", "deployments"), ("", "v1", "services"),
                                  ("policy", "v1", "poddisruptionbudgets"),
                                  ("networking.k8s.io", "v1", "networkpolicies"),
                                  ("autoscaling", "v2", "horizontalpodautoscalers"),
                                  ("gateway.networking.k8s.io", "v1", "httproutes")):
    kopf.on.event(_group, _version, _plural, labels=_CHILD_LABELS, id=f"child-{_plural}")(_child_event)


def _pod_unschedulable(body, **_) -> bool:
    for c in (body.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
            return True
    return False


@kopf.on.event("", "v1", "pods", labels=_CHILD_LABELS, when=_pod_unschedulable)
def pod_unschedulable(body, memo, type, **kw):
    _child_event(body, memo, type, **kw)
