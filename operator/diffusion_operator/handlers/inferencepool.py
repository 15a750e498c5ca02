"""Kopf handlers of InferencePool: reconcile it, tick its rollout, retry its failures.

- create/update/resume -> ``run_pool``; a failed pass raises the Kopf error its cause asks
  for (``outcome.kopf_error``), so Kopf retries with the error's delay or waits for a spec change.
- Reconciles triggered by anything else (a child's event, the model, the timer) go through
  ``reconcile_quietly``: same pass, same status and Events, and a failure schedules its own
  retry (``PoolRuntime.retry_at``) that the timer honours.
- The timer ticks every ``settings.tick_seconds``; for a pool with nothing due it reads the
  body only (no API call).

Passes over one pool are serialised with its lock and read the pool from the cache under it,
so each sees what the previous one wrote.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import kopf

from .. import API_GROUP, API_VERSION, metrics
from ..conditions import PoolPhase
from ..pools import ACTION_ANNOTATION, POOL_API, PoolResult, reconcile_pool
from ..rollout import state_machine as sm
from ..rollout.verdict import Verdict
from .outcome import conclude, kopf_error
from .runtime import OperatorState, PoolKey

log = logging.getLogger("diffusion_operator.reconcile")


def run_pool(state: OperatorState, body: dict, *, on_lock=None) -> PoolResult | None:
    """One pass over a pool, under its lock; None when the pool is gone or going."""
    meta = body["metadata"]
    key: PoolKey = (meta["namespace"], meta["name"])
    rt = state.pool(key)
    with rt.lock:
        if on_lock:
            on_lock()
        fresh = state.kube.get(POOL_API, "InferencePool", meta["name"], meta["namespace"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return None
        started = time.monotonic()
        result = reconcile_pool(state.kube, fresh, options=state.options, provider_factory=state.provider_for,
                                renderer=state.renderer)
        conclude(state.kube, "InferencePool", fresh, result.status, result.events, result.error,
                 time.monotonic() - started)
        delay = getattr(result.error, "delay", None)
        rt.retry_at = time.monotonic() + delay if delay is not None else None
        if result.verdict is not None:
            _log_verdict(key, result.verdict)
        if result.golden is not None:
            g = result.golden
            log.info("golden renders of %s: %s (%s): %s", g.revision, g.outcome, g.reason, g.message,
                     extra={"namespace": key[0], "pool": key[1], "revision": g.revision, "outcome": g.outcome,
                            "reason": g.reason})
        _export_rollout_metrics(key, result.status)
        if result.status.get("phase"):
            state.set_phase(key, result.status["phase"])
        return result


def _log_verdict(key: PoolKey, v: Verdict) -> None:
    metrics.VERDICTS.labels(key[0], key[1], str(v.outcome)).inc()
    log.info("canary analysis: %s (%s): %s", v.outcome, v.reason, v.message,
             extra={"namespace": key[0], "pool": key[1], "outcome": str(v.outcome), "reason": v.reason})


def _export_rollout_metrics(key: PoolKey, status: dict) -> None:
    if not status:
        return
    ns, name = key
    ro = status.get("rollout") or {}
    metrics.CANARY_WEIGHT.labels(ns, name).set(ro.get("canaryWeight") or 0)
    for phase in PoolPhase:
        metrics.ROLLOUT_PHASE.labels(ns, name, phase.value).set(1 if status.get("phase") == phase else 0)
    for br in (ro.get("lastAnalysis") or {}).get("burnRates") or []:
        for window_key, rate_key in (("shortWindowSeconds", "shortBurnRate"), ("longWindowSeconds", "longBurnRate")):
            if br.get(rate_key) is not None:
                metrics.BURN_RATE.labels(ns, name, br.get("sli", "?"), f"{br.get(window_key)}s").set(br[rate_key])


def reconcile_quietly(state: OperatorState, body: dict) -> None:
    """For reconciles Kopf did not ask for: the result goes to status and Events, a failure is
    retried by the timer after its delay.

    Triggers coalesce: when a pass over this pool is already waiting for the pool's lock, it
    will read the newest state anyway, so another one adds nothing. (A trigger that arrives
    while a pass is running, not waiting, still queues one: that pass may have read the state
    before the change.)
    """
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    rt = state.pool(key)
    if rt.waiting:
        return
    rt.waiting = True

    def got_lock() -> None:
        rt.waiting = False

    try:
        run_pool(state, body, on_lock=got_lock)
    finally:
        rt.waiting = False


def pool_changed(body, memo: kopf.Memo, **_) -> None:
    result = run_pool(memo.state, dict(body))
    error = kopf_error(result.error) if result else None
    if error is not None:
        raise error


def pool_event(body, type, memo: kopf.Memo, **_) -> None:
    """Feed the cache; forget everything about a pool once it is deleted."""
    state: OperatorState = memo.state
    body = dict(body)
    if state.kube.cache is not None:
        if type == "DELETED":
            state.kube.cache.deleted(body)
        else:
            state.kube.cache.put(body, kind="InferencePool")
    if type == "DELETED":
        state.pool_gone((body["metadata"]["namespace"], body["metadata"]["name"]))


def pool_tick(body, memo: kopf.Memo, **_) -> None:
    """Drive time-based rollout steps, SRE actions and retries of failed passes."""
    state: OperatorState = memo.state
    meta = body["metadata"]
    rt = state.known_pool((meta["namespace"], meta["name"]))
    retry_due = rt is not None and rt.retry_at is not None and time.monotonic() >= rt.retry_at
    if not retry_due and not _rollout_due(body, state.settings.tick_seconds):
        return
    reconcile_quietly(state, dict(body))


def _rollout_due(body: dict, tick_s: float) -> bool:
    ro = sm.RolloutStatus.from_dict((body.get("status") or {}).get("rollout"))
    annotations = body["metadata"].get("annotations") or {}
    if annotations.get(ACTION_ANNOTATION) not in (None, ro.last_action):
        return True
    rspec = sm.RolloutSpec.from_spec((body.get("spec") or {}).get("rollout"))
    wake = sm.next_wakeup_s(ro, rspec, dt.datetime.now(dt.timezone.utc))
    return wake is not None and wake <= tick_s / 2


def register(registry: kopf.OperatorRegistry, tick_seconds: float) -> None:
    resource = (API_GROUP, API_VERSION, "inferencepools")
    kopf.on.event(*resource, id="pool-cache", registry=registry)(pool_event)
    for decorator in (kopf.on.resume, kopf.on.create, kopf.on.update):
        decorator(*resource, registry=registry)(pool_changed)
    kopf.timer(*resource, interval=tick_seconds, initial_delay=tick_seconds, registry=registry)(pool_tick)
