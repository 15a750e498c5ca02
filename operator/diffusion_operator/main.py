"""Start the operator: JSON logs, metrics, leader election, then Kopf.

``run_operator(settings)`` is what ``diffusion-operator run`` calls: it serves the metrics,
waits for the Lease when leader election is on (``leader``), then runs Kopf with a handler
registry built for these settings (``handlers.build_registry``) and the settings in ``memo``.
Tests call ``run_kopf`` on a thread with a ``stop_flag``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any, cast

import kopf

from .settings import Settings

log = logging.getLogger("diffusion_operator")


#: Attributes every LogRecord has; anything else was passed with ``extra=`` and is a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to ship to Loki/Elastic, easy to grep."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith(("_", "k8s_")) and key != "settings":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("kubernetes.client.rest", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # Kopf logs every handler success at INFO; our own loggers say what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def run_operator(settings: Settings, *, stop_flag: threading.Event | None = None,
                 ready_flag: threading.Event | None = None) -> int:
    """Run until stopped (signal or ``stop_flag``). With leader election (the default), Kopf
    starts only once this process holds the Lease, and exits when it loses it (``leader``)."""
    from prometheus_client import start_http_server

    configure_logging(settings.verbose)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.bind)
    log.info("starting", extra={"namespaces": ",".join(settings.namespaces) or "all",
                                "leader_election": settings.leader_election, "identity": settings.identity})
    if settings.leader_election:
        from .leader import run_as_leader

        return run_as_leader(settings, lambda stop: run_kopf(settings, stop_flag=stop, ready_flag=ready_flag),
                             stop_flag=stop_flag)
    return run_kopf(settings, stop_flag=stop_flag, ready_flag=ready_flag)


def run_kopf(settings: Settings, *, stop_flag: threading.Event | None = None,
             ready_flag: threading.Event | None = None) -> int:
    """Kopf itself, standalone (one active process is the Lease's job, not Kopf peering's),
    with a registry built for these settings and the settings in ``memo``."""
    from .handlers import build_registry

    kopf.run(
        registry=build_registry(settings),
        memo=kopf.Memo(settings=settings),
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=True,
        # Kopf would otherwise derive one from getpass.getuser(), which raises in an image whose
        # uid has no passwd entry (ours runs as 65532, as the chart's securityContext says).
        identity=cast(Any, settings.identity),  # typed as Kopf's private NewType Identity(str)
        liveness_endpoint=(f"http://{settings.bind}:{settings.liveness_port}/healthz"
                           if settings.liveness_port else None),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
    return 0
