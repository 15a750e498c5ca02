"""The operator's narrow door to the Kubernetes API.

Everything the reconcilers do to the cluster goes through a ``KubeAPI``: server-side apply with
one field manager, get/list/delete, status patches, and "is this kind installed?" checks
cached for a minute. ``Kube`` is the real one; ``tests/unit/fakekube.py`` is an in-memory one
for the reconcilers' unit tests.

Reads are served from an ``ObjectCache`` when the watch streams have delivered the object
(the handlers feed it from Kopf's events, and every write's response goes in too), so a
reconcile that changes nothing costs no API request. Requests go out as raw JSON: building
the client's model objects cost more CPU than the request itself.

``kubernetes.client.ApiException`` and urllib3 errors never leave this module: ``_api_errors``
turns them into ``ChildRejected``/``SpecError`` (400/422: permanent), ``ApiUnavailable``
(anything else: retry) or ``None``/``False`` (not found).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ApiException as DynApiException
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from .conditions import Reason
from .errors import ApiUnavailable, SpecError

log = logging.getLogger("diffusion_operator.kube")

FIELD_MANAGER = "diffusion-operator"
APPLIED_HASH = "diffusion.serving.dev/applied-hash"
REQUEST_TIMEOUT = (5, 30)  # connect, read seconds: never hang a handler on a stuck API call


class KubeAPI(Protocol):
    """What the reconcilers need from the cluster."""

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None: ...

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict]: ...

    def select(self, api_version: str, kind: str, namespace: str,
               labels: dict[str, str | None]) -> builtins.list[dict]: ...

    def apply(self, manifest: dict) -> dict: ...

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool: ...

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str,
                     status: dict) -> dict | None: ...

    def has_kind(self, api_version: str, kind: str) -> bool: ...


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster config when running in a pod, else ``kubeconfig`` (or $KUBECONFIG, ~/.kube/config)."""
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        # Pass the path explicitly: the client library captures $KUBECONFIG once, at import time.
        config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=cfg)
    cfg.connection_pool_maxsize = 32  # >= the handler thread pool
    return client.ApiClient(cfg)


def _rv(obj: dict) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class ObjectCache:
    """The newest version seen of each object of the watched kinds, from watch events and our
    own writes' responses.

    Keyed by (kind, namespace, name). A newer resourceVersion wins, so a late watch event never
    hides our own write, and a deletion leaves a tombstone so a late event cannot bring the
    object back. Only kinds the operator watches are cached (``watched``): for any other kind
    a cached copy could silently go stale (nobody would tell us it changed).
    """

    def __init__(self, watched: frozenset[str] | set[str] = frozenset()) -> None:
        self.watched = frozenset(watched)
        self._objs: dict[tuple[str, str | None, str], dict] = {}
        self._gone: dict[tuple[str, str | None, str], int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(obj: dict) -> tuple[str, str | None, str]:
        meta = obj.get("metadata") or {}
        return obj.get("kind", ""), meta.get("namespace"), meta.get("name", "")

    def put(self, obj: dict, *, kind: str | None = None) -> None:
        obj = dict(obj)
        if kind:
            obj.setdefault("kind", kind)
        k = self.key(obj)
        if k[0] not in self.watched:
            return
        rv = _rv(obj)
        with self._lock:
            if rv and rv <= self._gone.get(k, 0):
                return
            old = self._objs.get(k)
            if old is None or rv >= _rv(old):
                self._objs[k] = obj

    def deleted(self, obj: dict) -> None:
        k = self.key(obj)
        with self._lock:
            old = self._objs.pop(k, None)
            self._gone[k] = max(_rv(obj), _rv(old or {}), self._gone.get(k, 0))

    def forget(self, kind: str, namespace: str | None, name: str) -> None:
        with self._lock:
            old = self._objs.pop((kind, namespace, name), None)
            if old is not None:
                self._gone[(kind, namespace, name)] = _rv(old)

    def get(self, kind: str, namespace: str | None, name: str) -> dict | None:
        with self._lock:
            return self._objs.get((kind, namespace, name))

    def select(self, kind: str, namespace: str | None, labels: dict[str, str | None]) -> list[dict]:
        """Cached objects of a kind whose labels match (a None value: the label exists)."""
        with self._lock:
            objs = [o for (k, ns, _), o in self._objs.items() if k == kind and ns == namespace]
        out = []
        for o in objs:
            have = (o.get("metadata") or {}).get("labels") or {}
            if all((key in have) if want is None else have.get(key) == want for key, want in labels.items()):
                out.append(o)
        return out


@contextlib.contextmanager
def _api_errors(what: str, *, rejected_is_spec_error: bool = False) -> Iterator[None]:
    """The one place client exceptions become our typed errors (see the module docstring)."""
    try:
        yield
    except (ApiException, DynApiException) as exc:
        status = getattr(exc, "status", None)
        if rejected_is_spec_error and status in (400, 422):
            raise SpecError(f"{what} rejected by the API server: {_message(exc)}",
                            reason=Reason.CHILD_REJECTED) from exc
        raise ApiUnavailable(f"{what}: {status} {_message(exc)}", delay=10) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ApiUnavailable(f"{what}: {exc}", delay=10) from exc


class NotFound(Exception):
    """Internal: a 404 from a read, delete or status patch."""


class Kube:
    """The real ``KubeAPI``: raw JSON requests through one ``ApiClient``, reads via ``cache``."""

    def __init__(self, api_client: client.ApiClient | None = None, *, cache: ObjectCache | None = None,
                 kubeconfig: str | None = None):
        self.api_client = api_client or load_api_client(kubeconfig)
        self.dyn = DynamicClient(self.api_client)
        self.cache = cache
        self._kinds: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()
        # (kind, namespace, name) -> (hash of what we applied, the object's version marker then)
        self._applied: dict[tuple[str, str | None, str], tuple[str, str]] = {}

    def close(self) -> None:
        self.api_client.close()

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

    def _path(self, api_version: str, kind: str, name: str | None, namespace: str | None) -> str:
        res = self.resource(api_version, kind)
        if res is None:
            raise ApiUnavailable(f"{kind}.{api_version} is not served by this cluster", delay=60)
        return res.path(name=name, namespace=namespace if res.namespaced else None)

    def _call(self, method: str, path: str, *, body: Any = None, query: builtins.list[tuple[str, str]] | None = None,
              content_type: str = "application/json") -> dict:
        request = self.api_client.param_serialize(
            method, path, query_params=query or [], body=body, auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": content_type})
        resp = self.api_client.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
        data = resp.read()
        if resp.status == 404:
            raise NotFound(path)
        if not 200 <= resp.status <= 299:
            self.api_client.response_deserialize(resp, {})  # raises the ApiException for the status
        return json.loads(data or b"{}")

    # --- reads -------------------------------------------------------------------------------
    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        if self.cache is not None and kind in self.cache.watched:
            hit = self.cache.get(kind, namespace, name)
            if hit is not None:
                return hit
        with _api_errors(f"get {kind} {namespace}/{name}"):
            try:
                obj = self._call("GET", self._path(api_version, kind, name, namespace))
            except NotFound:
                return None
        obj.setdefault("kind", kind)
        if self.cache is not None:
            self.cache.put(obj)
        return obj

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        with _api_errors(f"list {kind} in {namespace}"):
            try:
                out = self._call("GET", self._path(api_version, kind, None, namespace), query=query)
            except NotFound:
                return []
        items = out.get("items") or []
        for item in items:
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", api_version)
        return items

    def select(self, api_version: str, kind: str, namespace: str,
               labels: dict[str, str | None]) -> builtins.list[dict]:
        """Objects of a namespace with these labels (None: the label exists): from the cache
        for watched kinds (what the watch has delivered so far; anything it delivers later
        triggers another reconcile), else one list request."""
        if self.cache is not None and kind in self.cache.watched:
            return self.cache.select(kind, namespace, labels)
        selector = ",".join(k if v is None else f"{k}={v}" for k, v in labels.items())
        return self.list(api_version, kind, namespace, label_selector=selector)

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
        after: if the live object (from the cache, else a GET) still carries both, neither we
        nor anyone else changed it and the PATCH is skipped. Drift (a hand edit, a deletion)
        changes the generation or removes the object, and the apply goes through.
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
        path = self._path(manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace"))
        with _api_errors(f"{manifest['kind']} {meta['name']}", rejected_is_spec_error=True):
            obj = self._call("PATCH", path, body=manifest, content_type="application/apply-patch+yaml",
                             query=[("fieldManager", FIELD_MANAGER), ("force", "true")])
        self._applied[key] = (digest, self._marker(obj))
        if self.cache is not None:
            self.cache.put(obj)
        return obj

    def is_as_applied(self, kind: str, namespace: str | None, name: str, live: dict) -> bool:
        """Whether ``live`` is still exactly what our last apply left (same hash, same marker)."""
        cached = self._applied.get((kind, namespace, name))
        if cached is None:
            return False
        digest, marker = cached
        return self._marker(live) == marker \
            and ((live.get("metadata") or {}).get("annotations") or {}).get(APPLIED_HASH) == digest

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        self._applied.pop((kind, namespace, name), None)
        if self.cache is not None:
            self.cache.forget(kind, namespace, name)
        with _api_errors(f"delete {kind} {namespace}/{name}"):
            try:
                self._call("DELETE", self._path(api_version, kind, name, namespace),
                           body={"propagationPolicy": "Background"})
            except NotFound:
                return False
        return True

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str, status: dict) -> dict | None:
        """Merge-patch the status subresource; None when the object is gone."""
        path = self._path(api_version, kind, name, namespace) + "/status"
        with _api_errors(f"status of {kind} {namespace}/{name}"):
            try:
                obj = self._call("PATCH", path, body={"status": status},
                                 content_type="application/merge-patch+json")
            except NotFound:
                return None
        if self.cache is not None:
            self.cache.put(obj)
        return obj

    # --- the Service proxy (golden renders) ------------------------------------------------
    def service_proxy_post(self, namespace: str, service: str, port: int, path: str, body: dict,
                           headers: dict[str, str], timeout_s: float) -> tuple[int, bytes]:
        """POST ``body`` to ``path`` of a Service through the API server's proxy; returns the
        status and body as answered (the backend's, or the proxy's own 503 when the Service has
        no ready endpoint). Connection errors and timeouts raise ``ConnectionError``."""
        url = f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/{path.lstrip('/')}"
        request = self.api_client.param_serialize(
            "POST", url, body=body, auth_settings=["BearerToken"],
            header_params={"Accept": "application/json", "Content-Type": "application/json", **headers})
        try:
            resp = self.api_client.call_api(*request, _request_timeout=(5, timeout_s))
            return resp.status, resp.read()
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionError(f"{url}: {exc}") from exc


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            return json.loads(body).get("message", str(body))
        except (ValueError, AttributeError):
            return str(body)[:500]
    return str(exc)
