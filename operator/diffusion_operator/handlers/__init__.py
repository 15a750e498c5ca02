"""The operator's Kopf handlers, one module per kind, registered for one set of settings.

- :mod:`.lifecycle`: login, startup (Kopf settings, the shared ``OperatorState``), cleanup;
- :mod:`.diffusionmodel`: DiffusionModel -> ``models.reconcile_model``, then its pools;
- :mod:`.inferencepool`: InferencePool -> ``pools.reconcile_pool``, the rollout timer, retries;
- :mod:`.children`: watches of what pools own: the object cache and drift;
- :mod:`.runtime` and :mod:`.outcome`: the state between calls, and the one path from a
  result to status, Events, logs, metrics and Kopf's retry.

Handlers are thin: parse, call the pure core, write once. ``build_registry`` makes a fresh
registry for the given settings (the timer interval is one of them), so nothing is registered
at import time and two operators in one process (tests) never share handlers.
"""

from __future__ import annotations

import kopf

from ..settings import Settings
from . import children, diffusionmodel, inferencepool, lifecycle


def build_registry(settings: Settings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    lifecycle.register(registry)
    diffusionmodel.register(registry)
    inferencepool.register(registry, tick_seconds=settings.tick_seconds)
    children.register(registry)
    return registry
