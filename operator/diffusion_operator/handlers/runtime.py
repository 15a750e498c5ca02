"""What the running operator keeps between handler calls, in one object per process.

``OperatorState`` lives in Kopf's ``memo.state`` (built at startup, closed at cleanup): the
settings, the API client with its object cache, the golden-render client (the API server's
Service proxy), the Prometheus clients (one per URL and credential, reused across analyses),
and a ``PoolRuntime`` per InferencePool (its lock, the trigger-coalescing flag, the child
states already acted on, its phase for the metrics and when a failed pass should be retried).
A pool's runtime goes when the pool does.
"""

from __future__ import annotations

import base64
import threading
from collections import Counter
from dataclasses import dataclass, field

from .. import builders, metrics
from ..conditions import PoolPhase
from ..kube import Kube, ObjectCache
from ..pools import ReconcileOptions
from ..rollout.metrics_provider import PrometheusProvider
from ..rollout.renderer import ServiceProxyRenderer
from ..settings import Settings
from ..spec import PoolSpec

#: Kinds whose watch events feed the cache (so reads of them need no API request).
WATCHED_KINDS = frozenset({
    "InferencePool", "DiffusionModel", "Deployment", "Service", "ControllerRevision", "Pod",
    "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler", "HTTPRoute",
    "PodMonitor", "ServiceMonitor", "PrometheusRule",
})

PoolKey = tuple[str, str]


@dataclass
class PoolRuntime:
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: A reconcile is queued on the lock: further triggers add nothing (it reads the newest state).
    waiting: bool = False
    phase: str | None = None
    #: Monotonic time after which a failed pass is retried by the timer (None: nothing to retry).
    retry_at: float | None = None
    #: Per child Deployment: the status fields last acted on (equal ones are echoes).
    seen_deployments: dict[str, tuple] = field(default_factory=dict)


class OperatorState:
    def __init__(self, settings: Settings, kube: Kube | None = None) -> None:
        self.settings = settings
        self.kube = kube or Kube(cache=ObjectCache(WATCHED_KINDS), kubeconfig=settings.kubeconfig)
        self.renderer = ServiceProxyRenderer(self.kube)
        self.options = ReconcileOptions(sampler_image=settings.sampler_image,
                                        allow_file_sources=settings.allow_file_sources,
                                        allow_fault_injection=settings.allow_fault_injection)
        self._pools: dict[PoolKey, PoolRuntime] = {}
        self._lock = threading.Lock()
        self._providers: dict[tuple, PrometheusProvider] = {}

    # --- pools ---------------------------------------------------------------------------------
    def pool(self, key: PoolKey) -> PoolRuntime:
        with self._lock:
            rt = self._pools.get(key)
            if rt is None:
                rt = self._pools[key] = PoolRuntime()
            return rt

    def known_pool(self, key: PoolKey) -> PoolRuntime | None:
        with self._lock:
            return self._pools.get(key)

    def pool_gone(self, key: PoolKey) -> None:
        with self._lock:
            self._pools.pop(key, None)
        self._export_phases()

    def set_phase(self, key: PoolKey, phase: str | None) -> None:
        self.pool(key).phase = phase
        self._export_phases()

    def _export_phases(self) -> None:
        """Keep diffusion_operator_pools{phase} equal to the pools we know, by phase."""
        with self._lock:
            counts = Counter(rt.phase for rt in self._pools.values() if rt.phase)
        for p in PoolPhase:
            metrics.POOLS_BY_PHASE.labels(p.value).set(counts.get(p.value, 0))

    # --- Prometheus ----------------------------------------------------------------------------
    def provider_for(self, pool_obj: dict, pool: PoolSpec) -> PrometheusProvider | None:
        """The pool's Prometheus (spec.prometheus, else the operator's --prometheus-url), reused."""
        prom = (pool_obj.get("spec") or {}).get("prometheus") or {}
        url = prom.get("url") or self.settings.prometheus_url
        if not url:
            return None
        token = None
        ref = (prom.get("authSecretRef") or {}).get("name")
        if ref:
            secret = self.kube.get("v1", "Secret", ref, pool_obj["metadata"]["namespace"]) or {}
            raw = (secret.get("data") or {}).get("token")
            token = base64.b64decode(raw).decode() if raw else None
        timeout = float(prom.get("timeoutSeconds", 5))
        key = (url, token, timeout)
        with self._lock:
            provider = self._providers.get(key)
            if provider is None:
                provider = self._providers[key] = PrometheusProvider(url, timeout_s=timeout, bearer_token=token)
            return provider

    def close(self) -> None:
        with self._lock:
            providers, self._providers = list(self._providers.values()), {}
        for p in providers:
            p.close()
        self.kube.close()


def owner_pool_key(namespace: str, labels: dict | None) -> PoolKey | None:
    name = (labels or {}).get(builders.LABEL_POOL)
    return (namespace, name) if name else None
