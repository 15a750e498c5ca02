"""Operator start and stop: how to log in, Kopf's settings, and the shared state's lifetime.

The ``OperatorState`` (API client, object cache, Prometheus clients, per-pool runtime) is built
at startup from ``memo.settings`` and closed at cleanup, so nothing outlives the operator.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import kopf
from kubernetes import client, config

from .. import API_GROUP
from ..settings import Settings
from .runtime import OperatorState

log = logging.getLogger("diffusion_operator.lifecycle")


def login(memo: kopf.Memo, **kwargs):
    """In a pod: the ServiceAccount, at the address the kubelet gives every pod
    (``KUBERNETES_SERVICE_HOST``/``PORT``, as client-go's in-cluster config reads it; Kopf's own
    helper assumes ``kubernetes.default.svc`` resolves). Elsewhere: the settings' kubeconfig
    (or $KUBECONFIG)."""
    info = kopf.login_with_service_account(**kwargs)
    if info is not None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if host and port:
            info = dataclasses.replace(info, server=f"https://{f'[{host}]' if ':' in host else host}:{port}")
        return info
    settings: Settings = memo.settings
    if not settings.kubeconfig:
        return kopf.login_with_kubeconfig(**kwargs)
    cfg = client.Configuration()
    config.load_kube_config(config_file=settings.kubeconfig, client_configuration=cfg)
    keys = cfg.api_key or {}
    token = (keys.get("BearerToken") or keys.get("authorization") or "").removeprefix("Bearer ").strip() or None
    return kopf.ConnectionInfo(server=cfg.host, ca_path=cfg.ssl_ca_cert, insecure=not cfg.verify_ssl,
                               scheme="Bearer" if token else None, token=token,
                               certificate_path=cfg.cert_file, private_key_path=cfg.key_file)


def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    """Kopf bookkeeping in annotations with our prefix (never in our status schema), explicit
    API timeouts, and the shared state."""
    ours: Settings = memo.settings
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
    settings.execution.max_workers = ours.workers
    memo.state = OperatorState(ours)
    log.info("operator started", extra={"identity": ours.identity, "workers": ours.workers,
                                        "tick_seconds": ours.tick_seconds,
                                        "prometheus_url": ours.prometheus_url or "",
                                        "allow_file_sources": ours.allow_file_sources,
                                        "allow_fault_injection": ours.allow_fault_injection})


def cleanup(memo: kopf.Memo, **_) -> None:
    state: OperatorState | None = getattr(memo, "state", None)
    if state is not None:
        state.close()
    log.info("operator stopped")


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
