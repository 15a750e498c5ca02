"""An in-memory ``KubeAPI`` for the reconcilers' unit tests.

It keeps objects the way the API server does as far as the reconcilers can tell: server-side
apply replaces our fields and bumps ``generation`` only when the spec changes, every write
moves ``resourceVersion``, status patches merge. It is no API server: no admission, no
controllers (a test plays the Deployment controller with ``set_deployment_ready``). What it
can do that a real cluster makes hard is fail on purpose: ``reject`` makes applies of a kind
fail as the API server's 422 would, ``unavailable`` makes every call fail as a dead API would.
The real-cluster tests in tests/integration cover the real thing.
"""

from __future__ import annotations

import copy
import itertools
import uuid

from diffusion_operator.conditions import Reason
from diffusion_operator.errors import ApiUnavailable, SpecError

Key = tuple[str, str | None, str]


class FakeKube:
    def __init__(self, kinds: set[str] | None = None) -> None:
        self.objects: dict[Key, dict] = {}
        self.kinds = kinds  # None: every kind is served
        self.reject: dict[str, str] = {}  # kind -> the API server's message
        self.unavailable = False
        self.calls: list[tuple[str, str]] = []
        self._rv = itertools.count(1)

    # --- helpers for tests ---------------------------------------------------------------------
    def add(self, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "ns")
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._rv))
        self.objects[(obj["kind"], meta.get("namespace"), meta["name"])] = obj
        return obj

    def obj(self, kind: str, name: str, namespace: str = "ns") -> dict | None:
        return self.objects.get((kind, namespace, name))

    def of_kind(self, kind: str) -> list[dict]:
        return [o for (k, _, _), o in sorted(self.objects.items()) if k == kind]

    def set_deployment_ready(self, name: str, ready: int | None = None, namespace: str = "ns") -> None:
        dep = self.objects[("Deployment", namespace, name)]
        want = dep["spec"].get("replicas", 1)
        n = want if ready is None else ready
        dep["status"] = {"observedGeneration": dep["metadata"]["generation"], "replicas": want,
                         "readyReplicas": n, "updatedReplicas": want, "availableReplicas": n}
        dep["metadata"]["resourceVersion"] = str(next(self._rv))

    def _check(self, verb: str, kind: str) -> None:
        self.calls.append((verb, kind))
        if self.unavailable:
            raise ApiUnavailable(f"{verb} {kind}: connection refused", delay=10)

    # --- KubeAPI -------------------------------------------------------------------------------
    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        self._check("get", kind)
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict]:
        self._check("list", kind)
        want: dict[str, str | None] = {}
        for term in filter(None, (label_selector or "").split(",")):
            k, _, v = term.partition("=")
            want[k] = v or None
        return self.select(api_version, kind, namespace or "", want, _count=False)

    def select(self, api_version: str, kind: str, namespace: str, labels: dict[str, str | None],
               _count: bool = True) -> list[dict]:
        if _count:
            self._check("select", kind)
        out = []
        for (k, ns, _), o in sorted(self.objects.items()):
            have = o["metadata"].get("labels") or {}
            if k == kind and ns == namespace and all(
                    (key in have) if v is None else have.get(key) == v for key, v in labels.items()):
                out.append(copy.deepcopy(o))
        return out

    def apply(self, manifest: dict) -> dict:
        self._check("apply", manifest["kind"])
        if manifest["kind"] in self.reject:
            raise SpecError(f"{manifest['kind']} {manifest['metadata']['name']} rejected by the API server: "
                            f"{self.reject[manifest['kind']]}", reason=Reason.CHILD_REJECTED)
        meta = manifest["metadata"]
        key = (manifest["kind"], meta.get("namespace"), meta["name"])
        old = self.objects.get(key)
        new = copy.deepcopy(manifest)
        new["metadata"]["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        gen = (old or {}).get("metadata", {}).get("generation", 0)
        spec_changed = old is None or {k: v for k, v in old.items() if k not in ("metadata", "status")} != \
            {k: v for k, v in new.items() if k not in ("metadata", "status")}
        new["metadata"]["generation"] = gen + 1 if spec_changed else gen
        new["metadata"]["resourceVersion"] = str(next(self._rv))
        if old and "status" in old:
            new["status"] = old["status"]
        self.objects[key] = new
        return copy.deepcopy(new)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        self._check("delete", kind)
        return self.objects.pop((kind, namespace, name), None) is not None

    def patch_status(self, api_version: str, kind: str, name: str, namespace: str, status: dict) -> dict | None:
        self._check("patch_status", kind)
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            return None
        obj["status"] = _merge(obj.get("status") or {}, status)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(obj)

    def has_kind(self, api_version: str, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


def _merge(old: dict, patch: dict) -> dict:
    out = dict(old)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
