"""Golden renders from the revisions' samplers: the I/O half of the golden-render gate.

:class:`Renderer` is the small door the reconciler needs: one image for one request from one
revision. :class:`ServiceProxyRenderer` is the real one: ``POST /v1/generate`` through the API
server's proxy to the revision's Service (``services/<name>:<port>/proxy``), so it works the
same for an operator in the cluster and one run as a process with a kubeconfig, and needs one
RBAC rule (``create`` on ``services/proxy``) instead of a network path to every pod.

Every request carries ``X-Diffusion-Probe: golden-render``: the sampler counts it under the
``golden-render`` endpoint, which the canary analysis does not read, so the gate's requests
never dilute or inflate the SLIs it judges afterwards.

:func:`render_and_judge` renders every golden prompt on the stable, then on the canary, and
hands the images to :func:`.golden.judge`; a revision that cannot render (not answering, an
error status) gives a ``Pending`` result that names it and why.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Protocol

from .golden import GoldenResult, GoldenSpec, Render, judge, unavailable

__all__ = ["PROBE_HEADER", "PROBE_VALUE", "RenderUnavailable", "Renderer", "ServiceProxyRenderer",
           "render_and_judge"]

PROBE_HEADER = "X-Diffusion-Probe"
PROBE_VALUE = "golden-render"


class RenderUnavailable(Exception):
    """A revision did not render: the message says what answered (or did not)."""


class Renderer(Protocol):
    def render(self, namespace: str, service: str, port: int, body: dict[str, Any], timeout_s: float) -> Render:
        """One image for ``body`` (the sampler's native request) from ``service``; raises
        :class:`RenderUnavailable`."""
        ...


class ProxyCaller(Protocol):
    def service_proxy_post(self, namespace: str, service: str, port: int, path: str, body: dict[str, Any],
                           headers: dict[str, str], timeout_s: float) -> tuple[int, bytes]: ...


class ServiceProxyRenderer:
    """Renders through the Kubernetes API server's Service proxy (``kube.Kube`` provides it)."""

    def __init__(self, kube: ProxyCaller) -> None:
        self.kube = kube

    def render(self, namespace: str, service: str, port: int, body: dict[str, Any], timeout_s: float) -> Render:
        try:
            status, data = self.kube.service_proxy_post(namespace, service, port, "v1/generate", body,
                                                        {PROBE_HEADER: PROBE_VALUE}, timeout_s)
        except OSError as exc:  # connection refused, timeout, reset: through the proxy or to it
            raise RenderUnavailable(f"no answer from Service {service}: {exc}") from exc
        if status != 200:
            raise RenderUnavailable(f"Service {service} answered {status}: {_error_text(data)}")
        try:
            image = json.loads(data)["images"][0]
            return Render(png=base64.b64decode(image["image"], validate=True), quality=image.get("quality", "ok"))
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error) as exc:
            raise RenderUnavailable(f"Service {service} answered 200 without an image: {exc}") from exc


def _error_text(data: bytes) -> str:
    try:
        obj = json.loads(data)
        err = obj.get("error") if isinstance(obj.get("error"), dict) else obj  # sampler's shape, or a Status
        text = str(err.get("message") or err)
    except (ValueError, AttributeError):
        text = data[:200].decode("utf-8", "replace")
    return text[:300]


def render_and_judge(renderer: Renderer, spec: GoldenSpec, *, namespace: str, revision: str,
                     stable_service: str, canary_service: str, port: int) -> GoldenResult:
    """Every golden prompt on both revisions, then :func:`.golden.judge`."""
    stable: list[Render] = []
    canary: list[Render] = []
    for who, service, out in (("stable", stable_service, stable), ("canary", canary_service, canary)):
        for i in range(len(spec.prompts)):
            try:
                out.append(renderer.render(namespace, service, port, spec.request(i), spec.timeout_s))
            except RenderUnavailable as exc:
                return unavailable(revision, f"the {who} could not render golden render {i} "
                                             f"(seed {spec.prompts[i].seed}): {exc}")
    return judge(spec, revision, stable, canary)
