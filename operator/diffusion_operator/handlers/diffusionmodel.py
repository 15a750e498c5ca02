"""Kopf handlers of DiffusionModel: validate it, set its status, and tell its pools.

A change of a model is a new revision for every pool that serves it: those pools are
reconciled now, not at their next event.
"""

from __future__ import annotations

import time

import kopf

from .. import API_GROUP, API_VERSION
from ..models import reconcile_model
from . import inferencepool
from .outcome import conclude, kopf_error
from .runtime import OperatorState


def model_changed(body, memo: kopf.Memo, **_) -> None:
    state: OperatorState = memo.state
    body = dict(body)
    started = time.monotonic()
    result = reconcile_model(state.kube, body, allow_file_sources=state.settings.allow_file_sources,
                             allow_fault_injection=state.settings.allow_fault_injection)
    conclude(state.kube, "DiffusionModel", body, result.status, result.events, result.error,
             time.monotonic() - started)
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    for pool in state.kube.cache.select("InferencePool", ns, {}) if state.kube.cache else ():
        if ((pool.get("spec") or {}).get("modelRef") or {}).get("name") == name:
            inferencepool.reconcile_quietly(state, pool)
    error = kopf_error(result.error)
    if error is not None:
        raise error


def model_event(body, type, memo: kopf.Memo, **_) -> None:
    """Feed the cache: pools read their model from it."""
    cache = memo.state.kube.cache
    if cache is None:
        return
    if type == "DELETED":
        cache.deleted(dict(body))
    else:
        cache.put(dict(body), kind="DiffusionModel")


def register(registry: kopf.OperatorRegistry) -> None:
    resource = (API_GROUP, API_VERSION, "diffusionmodels")
    kopf.on.event(*resource, id="model-cache", registry=registry)(model_event)
    for decorator in (kopf.on.resume, kopf.on.create, kopf.on.update):
        decorator(*resource, registry=registry)(model_changed)
