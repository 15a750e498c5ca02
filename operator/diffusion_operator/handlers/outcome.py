"""The one path from a reconcile's result to the cluster and to Kopf.

``conclude`` writes the status once (a JSON merge patch of what changed, nothing when nothing
did), posts the Events, logs every decision with structured fields, counts the reconcile in the
operator's metrics, and returns the Kopf error that makes Kopf retry as the error says
(``TemporaryError`` with its delay, ``PermanentError`` for a spec that must change first).
"""

from __future__ import annotations

import logging

import kopf

from .. import metrics
from ..errors import OperatorError, PermanentError, TemporaryError
from ..kube import KubeAPI
from ..pools import POOL_API

log = logging.getLogger("diffusion_operator.reconcile")


def pruned(value):
    """The status as the API server stores it: the schema prunes nulls, so compare without them."""
    if isinstance(value, dict):
        return {k: pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def merge_patch(old: dict, new: dict) -> dict:
    """JSON merge patch turning ``old`` into ``new``: recursive, because a merge patch leaves
    nested keys it does not mention in place; a key gone (or None) in ``new`` becomes null."""
    patch: dict = {}
    for k, v in new.items():
        if v is None:
            if old.get(k) is not None:
                patch[k] = None
        elif isinstance(v, dict) and isinstance(old.get(k), dict):
            sub = merge_patch(old[k], v)
            if sub:
                patch[k] = sub
        elif old.get(k) != pruned(v):
            patch[k] = pruned(v)
    for k in old:
        if k not in new:
            patch[k] = None
    return patch


def kopf_error(error: OperatorError | None) -> Exception | None:
    """How Kopf should retry: after the error's delay, or not until the object changes."""
    if isinstance(error, TemporaryError):
        return kopf.TemporaryError(str(error), delay=error.delay)
    if isinstance(error, PermanentError):
        return kopf.PermanentError(str(error))
    if error is not None:
        return kopf.TemporaryError(str(error), delay=30)
    return None


def conclude(kube: KubeAPI, kind: str, body: dict, status: dict, events: list[tuple[str, str, str]],
             error: OperatorError | None, seconds: float) -> dict | None:
    """Write status and Events, log and count; returns the object as written (None: no write)."""
    meta = body["metadata"]
    fields = {"namespace": meta.get("namespace"), "pool" if kind == "InferencePool" else "model": meta["name"]}
    written = None
    patch = merge_patch(body.get("status") or {}, status)
    if patch:
        written = kube.patch_status(POOL_API, kind, meta["name"], meta["namespace"], patch)
        metrics.STATUS_WRITES.labels(kind).inc()
    for type_, reason, message in events:
        kopf.event(body, type=type_, reason=str(reason), message=message[:1000])
        level = logging.WARNING if type_ == "Warning" else logging.INFO
        log.log(level, "%s", message, extra={**fields, "reason": str(reason)})
    metrics.RECONCILE_SECONDS.labels(kind).observe(seconds)
    metrics.RECONCILES.labels(kind, "error" if error else "ok").inc()
    if error is not None:
        metrics.ERRORS.labels(kind, str(error.reason)).inc()
        retry = f"retry in {error.delay:g}s" if isinstance(error, TemporaryError) else "no retry until the spec changes"
        log.warning("reconcile failed: %s (%s)", error, retry,
                    extra={**fields, "reason": str(error.reason),
                           "retry_delay_s": getattr(error, "delay", None)})
    return written
