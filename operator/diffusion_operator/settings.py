"""The operator's settings: one typed, frozen object built once at startup.

``diffusion-operator run`` builds it from its flags, whose defaults come from the environment
(``DIFFUSION_OPERATOR_*``, so the chart and a container can set them); tests build it directly.
Nothing in the operator reads ``os.environ`` after this: handlers find the settings in Kopf's
``memo.settings``.

| setting | flag | environment | default |
|---|---|---|---|
| namespaces | ``-n`` (repeatable) | - | all namespaces |
| liveness_port | ``--liveness-port`` | ``LIVENESS_PORT`` | 8080 (0: off) |
| metrics_port | ``--metrics-port`` | ``METRICS_PORT`` | 9090 (0: off) |
| bind | ``--bind`` | ``DIFFUSION_OPERATOR_BIND`` | 127.0.0.1 |
| leader_election | ``--no-leader-election`` / ``--standalone`` | ``DIFFUSION_OPERATOR_LEADER_ELECTION`` | on |
| lease_name | ``--lease-name`` | ``DIFFUSION_OPERATOR_LEASE_NAME`` | diffusion-operator |
| lease_namespace | ``--lease-namespace`` | ``POD_NAMESPACE`` | the pod's namespace, else ``default`` |
| identity | ``--identity`` | ``POD_NAME`` | ``<hostname>-<pid>`` |
| allow_file_sources | ``--allow-file-sources`` | ``DIFFUSION_OPERATOR_ALLOW_FILE_SOURCES`` | off |
| allow_fault_injection | ``--allow-fault-injection`` | ``DIFFUSION_OPERATOR_ALLOW_FAULT_INJECTION`` | off |
| prometheus_url | ``--prometheus-url`` | ``DIFFUSION_OPERATOR_PROMETHEUS_URL`` | none |
| sampler_image | ``--sampler-image`` | ``DIFFUSION_OPERATOR_SAMPLER_IMAGE`` | the released sampler |
| tick_seconds | ``--tick-seconds`` | ``DIFFUSION_OPERATOR_TICK_SECONDS`` | 5 |
| workers | ``--workers`` | ``DIFFUSION_OPERATOR_WORKERS`` | 24 |
| kubeconfig | ``--kubeconfig`` | ``KUBECONFIG`` | in-cluster, else ~/.kube/config |

``allow_file_sources`` is for local development and ``allow_fault_injection`` (DiffusionModel
``spec.faultInjection``) for tests and demos only; both stay off in production.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_SAMPLER_IMAGE = "ghcr.io/diffusion-serving/diffusion-sampler:0.1.0"
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_TRUE = ("1", "true", "yes", "on")


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    value = env.get(key)
    return default if value in (None, "") else value.strip().lower() in _TRUE


def _pod_namespace(env: Mapping[str, str]) -> str:
    if env.get("POD_NAMESPACE"):
        return env["POD_NAMESPACE"]
    try:
        return _SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()
    liveness_port: int = 8080
    metrics_port: int = 9090
    bind: str = "127.0.0.1"
    leader_election: bool = True
    lease_name: str = "diffusion-operator"
    lease_namespace: str = "default"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: Lease timings, as client-go's leader election names them.
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    allow_file_sources: bool = False
    #: Accept DiffusionModels with ``spec.faultInjection`` (tests and demos only).
    allow_fault_injection: bool = False
    prometheus_url: str | None = None
    sampler_image: str = DEFAULT_SAMPLER_IMAGE
    tick_seconds: float = 5.0
    workers: int = 24
    kubeconfig: str | None = None
    verbose: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults as the environment sets them (the chart sets these on the Deployment)."""
        env = os.environ if env is None else env
        base = cls()
        return cls(
            liveness_port=int(env.get("LIVENESS_PORT") or base.liveness_port),
            metrics_port=int(env.get("METRICS_PORT") or base.metrics_port),
            bind=env.get("DIFFUSION_OPERATOR_BIND") or base.bind,
            leader_election=_flag(env, "DIFFUSION_OPERATOR_LEADER_ELECTION", True),
            lease_name=env.get("DIFFUSION_OPERATOR_LEASE_NAME") or base.lease_name,
            lease_namespace=_pod_namespace(env),
            identity=env.get("POD_NAME") or base.identity,
            allow_file_sources=_flag(env, "DIFFUSION_OPERATOR_ALLOW_FILE_SOURCES", False),
            allow_fault_injection=_flag(env, "DIFFUSION_OPERATOR_ALLOW_FAULT_INJECTION", False),
            prometheus_url=env.get("DIFFUSION_OPERATOR_PROMETHEUS_URL") or None,
            sampler_image=env.get("DIFFUSION_OPERATOR_SAMPLER_IMAGE") or base.sampler_image,
            tick_seconds=float(env.get("DIFFUSION_OPERATOR_TICK_SECONDS") or base.tick_seconds),
            workers=int(env.get("DIFFUSION_OPERATOR_WORKERS") or base.workers),
            kubeconfig=env.get("KUBECONFIG") or None,
        )

    def but(self, **changes) -> Settings:
        """A copy with some settings changed (flags over environment, tests over defaults)."""
        return replace(self, **changes)
