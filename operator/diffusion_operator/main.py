"""Start the Kopf operator: logging, liveness, metrics, peering.

``run_operator`` is what ``diffusion-operator run`` calls. Importing ``handlers`` registers
every handler and the startup settings, so ``kopf run -m diffusion_operator.handlers`` (and
the tests' ``KopfRunner``) get the same operator.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import kopf

log = logging.getLogger("diffusion_operator")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to ship to Loki/Elastic, easy to grep."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        for key in ("namespace", "pool", "model", "revision", "reason"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


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


def run_operator(*, namespaces: list[str] | None, liveness_port: int, metrics_port: int, peering: str,
                 standalone: bool, verbose: bool, bind: str | None = None) -> int:
    from prometheus_client import start_http_server

    from . import handlers  # noqa: F401  (registers the handlers)

    configure_logging(verbose)
    bind = bind or os.environ.get("DIFFUSION_OPERATOR_BIND", "127.0.0.1")
    if metrics_port:
        start_http_server(metrics_port, addr=bind)
    log.info("starting: namespaces=%s peering=%s", namespaces or "all", "standalone" if standalone else peering)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces or (),
        standalone=standalone,
        peering_name=None if standalone else peering,
        liveness_endpoint=f"http://{bind}:{liveness_port}/healthz" if liveness_port else None,
    )
    return 0
