"""The operator's narrow door to the Kubernetes API.

Everything the reconcilers do to the cluster goes through ``Kube``: server-side apply with one
field manager, get/list/delete, status patches, and "is this kind installed?" checks cached
for a minute (so a cluster without the Gateway API or Prometheus Operator CRDs does not cost
a discovery round-trip per reconcile). ``kubernetes.client.ApiException`` never leaves this
module: it becomes ``ApiUnavailable`` (retry) or ``None``/``False`` (not found).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ApiException as DynApiException, ResourceNotFoundError

from .errors import ApiUnavailable, SpecError

log = logging.getLogger("diffusion_operator.kube")

FIELD_MANAGER = "diffusion-operator"
APPLIED_HASH = "diffusion.serving.dev/applied-hash"
REQUEST_TIMEOUT = (5, 30)  # connect, read seconds: never hang a handler on a stuck API call


def load_api_client() -> client.ApiClient:
    """In-cluster config when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # Read $KUBECONFIG now: the client library captures it once, at import time.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = 32  # >= the handler thread pool
    return client.ApiClient(cfg)


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 404


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None):
        self.api_client = api_client or load_api_client()
        self.dyn = DynamicClient(self.api_client)
        self._kinds: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()
        # (kind, namespace, name) -> (hash of what we applied, the object's version marker then)
        self._applied: dict[tuple[str, str | None, str], tuple[str, str]] = {}

    # --- discovery ---------------------------------------------------------------------------
    def resource(self, api_version: str, kind: str):
        """The dynamic resource for a kind, or None when the kind is not served (cached 60 s)."""
        key = (api_version, kind)
        with self._lock:
            hit = self._kinds.get(key)
            if hit and (hit[1] is not None or time.monotonic() - hit[0] < 60):
                return hit[1]
        try:
            res = self.dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            res = None
        except (DynApiException, urllib3.exceptions.HTTPError) as exc:
            raise ApiUnavailable(f"discovery of {kind}.{api_version} failed: {exc}", delay=10) from exc
        with self._lock:
            self._kinds[key] = (time.monotonic(), res)
        return res

    def has_kind(self, api_version: str, kind: str) -> bool:
        return self.resource(api_version, kind) is not None

    def _res(self, api_version: str, kind: str):
        res = self.resource(api_version, kind)
        if res is None:
            raise ApiUnavailable(f"{kind}.{api_version} is not served by this cluster", delay=60)
        return res

    # --- reads -------------------------------------------------------------------------------
    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            obj = self._res(api_version, kind).get(name=name, namespace=namespace, _request_timeout=REQUEST_TIMEOUT)
        except (ApiException, DynApiException) as exc:
            if _is_not_found(exc):
                return None
            raise ApiUnavailable(f"get {kind} {namespace}/{name}: {exc}", delay=10) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApiUnavailable(f"get {kind} {namespace}/{name}: {exc}", delay=10) from exc
        return obj.to_dict()

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict]:
        try:
            out = self._res(api_version, kind).get(namespace=namespace, label_selector=label_selector,
                                                    _request_timeout=REQUEST_TIMEOUT)
        except (ApiException, DynApiException, urllib3.exceptions.HTTPError) as exc:
            raise ApiUnavailable(f"list {kind} in {namespace}: {exc}", delay=10) from exc
        return [i for i in out.to_dict().get("items", [])]

    # --- writes ------------------------------------------------------------------------------
    @staticmethod
    def _marker(obj: dict) -> str:
        """What moves when someone else changes the object: generation where the kind keeps one
        (spec edits bump it, status updates do not), else the resourceVersion."""
        meta = obj.get("metadata") or {}
        gen = meta.get("generation")
        return f"g{gen}" if gen else f"rv{meta.get('resourceVersion')}"

    def apply(self, manifest: dict) -> dict:
        """Server-side apply, skipped when nothing would change.

        A no-op apply is still a PATCH request; reconciles triggered by status churn would send
        one per child. So we remember the hash we applied and the object's generation right
        after: if the live object still carries both, neither we nor anyone else changed it and
        a GET (served from the apiserver's watch cache) replaces the PATCH. Drift (a hand edit,
        a deletion) changes the generation or removes the object, and the apply goes through.
        """
        meta = manifest["metadata"]
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]
        key = (manifest["kind"], meta.get("namespace"), meta["name"])
        cached = self._applied.get(key)
        if cached and cached[0] == digest:
            live = self.get(manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace"))
            if live is not None and self.is_as_applied(manifest["kind"], meta.get("namespace"), meta["name"], live):
                return live
        manifest = {**manifest, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}),
                                                                      APPLIED_HASH: digest}}}
        obj = self._server_side_apply(manifest)
        self._applied[key] = (digest, self._marker(obj))
        return obj

    def is_as_applied(self, kind: str, namespace: str | None, name: str, live: dict) -> bool:
        """Whether ``live`` is still exactly what our last apply left (same hash, same marker)."""
        cached = self._applied.get((kind, namespace, name))
        return bool(cached) and self._marker(live) == cached[1] \
            and ((live.get("metadata") or {}).get("annotations") or {}).get(APPLIED_HASH) == cached[0]

    def _server_side_apply(self, manifest: dict) -> dict:
        """Server-side apply with our field manager; conflicts are forced (we own these fields)."""
        meta = manifest["metadata"]
        res = self._res(manifest["apiVersion"], manifest["kind"])
        try:
            obj = res.server_side_apply(body=manifest, name=meta["name"], namespace=meta.get("namespace"),
                                        field_manager=FIELD_MANAGER, force_conflicts=True,
                                        _request_timeout=REQUEST_TIMEOUT)
        except (ApiException, DynApiException) as exc:
            if getattr(exc, "status", None) in (400, 422):
                raise SpecError(f"{manifest['kind']} {meta['name']} rejected by the API server: "
                                f"{_message(exc)}", reason="ChildRejected") from exc
            raise ApiUnavailable(f"apply {manifest['kind']} {meta['name']}: {_message(exc)}", delay=10) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ApiUnavailable(f"apply {manifest['kind']} {meta['name']}: {exc}", delay=10) from exc
        return obj.to_dict()

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        try:
            self._res(api_version, kind).delete(name=name, namespace=namespace,
                                                body={"propagationPolicy": "Background"},
                                                _request_timeout=REQUEST_TIMEOUT)
        except (ApiException, DynApiException) as exc:
            if _is_not_found(exc):
                return False
            raise ApiUnavailable(f"delete {kind} {namespace}/{name}: {_message(exc)}", delay=10) from exc
        return True

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str, status: dict) -> dict | None:
        """Merge-patch the status subresource; None when the object is gone."""
        res = self._res(api_version, kind)
        try:
            obj = res.status.patch(name=name, namespace=namespace, body={"status": status},
                                   content_type="application/merge-patch+json", _request_timeout=REQUEST_TIMEOUT)
        except (ApiException, DynApiException) as exc:
            if _is_not_found(exc):
                return None
            raise ApiUnavailable(f"status of {kind} {namespace}/{name}: {_message(exc)}", delay=10) from exc
        return obj.to_dict()


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            return json.loads(body).get("message", str(body))
        except (ValueError, AttributeError):
            return str(body)[:500]
    return str(exc)
