"""The vocabulary of a canary-rollout scenario on the local cluster: the pool and model every
scenario creates, the test-sized analysis timings, and :class:`Scenario`, which drives one
pool in one namespace and reads back what happened.

What a scenario runs, all on this machine and all through Kubernetes:

- the local cluster of ``tests/conftest.py``'s ``node_cluster``: its real node runs the
  operator's sampler Deployments (our image, the tiny model from a hostPath), Traefik is the
  Gateway API data plane, and the cluster's Prometheus discovers the pods through the API
  server (``kubernetes_sd_configs``, as the pool's PodMonitor selects them);
- the operator in-process (:mod:`tests.support.operator_control`), as its ServiceAccount;
- load through the Gateway (:class:`diffusion_operator.demo.traffic.GatewayLoad`), which Traefik splits by
  the HTTPRoute's weights; each answer names its revision (``x-diffusion-revision``).

Faults are a property of the revision: the canary's DiffusionModel change adds the test-only
``spec.faultInjection`` (the operator runs with ``allow_fault_injection``), so the canary pods
inject them and nothing outside the cluster does.

Every pool is called ``tiny``, every scenario lives in its own namespace and routes by the
hostname ``<namespace>.e2e.local`` on the one Gateway; the pools set
``spec.rollout.analysis.extraSelector: namespace="<ns>"``, as a production pool sharing a
Prometheus would. This module only drives and observes; the assertions belong to tests/e2e.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import yaml

from diffusion_operator.demo.traffic import GatewayLoad
from tests.support.polling import wait_for
from tests.support.prometheus import wait_pods_scraped

API = "diffusion.serving.dev/v1alpha1"
POOL = "tiny"
MODEL = "tiny"
LABEL_POOL = "diffusion.serving.dev/pool"
LABEL_REVISION = "diffusion.serving.dev/revision"

#: Test-sized analysis: 2 s interval, short window 4 intervals = 8 s (at least four 1 s
#: scrapes, docs/rollouts.md), so the scaled Workbook pairs are 14.4x 96s/8s, 6x 576s/48s,
#: 1x 6912s/576s. Only the 14.4x pair arms within these scenarios.
INTERVAL_S = 2
SHORT_WINDOW_INTERVALS = 4
SHORT_WINDOW_S = INTERVAL_S * SHORT_WINDOW_INTERVALS

#: The tiny model on the real node's disk (``dev up`` writes it; the node_cluster fixture too).
DM_SPEC = {"precision": "fp32", "defaults": {"steps": 4, "width": 64, "height": 64},
           "safety": {"checker": "off"}}
#: The change every scenario rolls out: a new default step count gives a new revision.
CANARY_PATCH = {"spec": {"defaults": {"steps": 8}}}
#: Faulty canaries: the same change plus the sampler's test-only fault injection.
ERRORS_PATCH = {"spec": {"defaults": {"steps": 8}, "faultInjection": {"errorRate": 0.3}}}
SLOW_PATCH = {"spec": {"defaults": {"steps": 8}, "faultInjection": {"latencySeconds": 1.5}}}
#: Requests small enough for two sampler pods on two shared cores; the memory limit is what
#: the tiny model needs with torch, with room.
POOL_RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "3Gi"}}


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp as the operator writes it (``...Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def model_manifest(model_uri: str, spec: dict | None = None) -> dict:
    """The DiffusionModel: ``model_uri`` (file:// on the real node) and DM_SPEC."""
    return {"apiVersion": API, "kind": "DiffusionModel", "metadata": {"name": MODEL},
            "spec": {"source": {"uri": model_uri}, **(spec or DM_SPEC)}}


def rollout_spec(steps, *, deadline: int = 120, error_policy: str = "Rollback", error_limit: int = 4,
                 min_requests: int = 5, scale_down_delay: int = 2) -> dict:
    """``spec.rollout`` of the pool: ``steps`` as ``[(weight, pauseSeconds)]``, test-sized analysis."""
    return {
        "steps": [{"weight": w, "pauseSeconds": p} for w, p in steps],
        "progressDeadlineSeconds": deadline,
        "errorPolicy": error_policy,
        "scaleDownDelaySeconds": scale_down_delay,
        "analysis": {"intervalSeconds": INTERVAL_S, "shortWindowIntervals": SHORT_WINDOW_INTERVALS,
                     "minRequests": min_requests, "consecutiveErrorLimit": error_limit},
    }


class Scenario:
    """One pool ``tiny`` in one namespace, its revisions' pods on the real node, load through
    the Gateway."""

    def __init__(self, cluster, namespace: str, model_uri: str) -> None:
        self.cluster, self.ns, self.model_uri = cluster, namespace, model_uri
        self.host = f"{namespace}.e2e.local"
        self.stable_rev: str | None = None
        self.canary_rev: str | None = None
        self.load: GatewayLoad | None = None
        self.seen: list[dict] = []  # every rollout status read, in order (with "_at": time.time())

    # ---- cluster objects

    def kubectl(self, *args, **kw):
        return self.cluster.kubectl("-n", self.ns, *args, **kw)

    def get(self, kind: str, name: str | None = None, selector: str | None = None):
        args = ["get", kind] + ([name] if name else []) + (["-l", selector] if selector else []) + ["-o", "json"]
        res = self.kubectl(*args, check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None

    def create(self, rollout: dict, *, prometheus_url: str, slo: dict | None = None,
               batching: dict | None = None, model_spec: dict | None = None) -> None:
        pool = {"apiVersion": API, "kind": "InferencePool", "metadata": {"name": POOL},
                "spec": {"modelRef": {"name": MODEL}, "replicas": 1, "gpu": {"count": 1},
                         "resources": POOL_RESOURCES,
                         "batching": batching or {"maxBatchSize": 8, "maxWaitMs": 20},
                         "traffic": {"provider": "gateway-api", "parentRefs": [self.cluster.gateway_ref],
                                     "hostnames": [self.host]},
                         "prometheus": {"url": prometheus_url, "timeoutSeconds": 2},
                         "monitoring": {"scrapeIntervalSeconds": 1},
                         "slo": slo or {"availability": {"objective": 0.99}},
                         "rollout": _merge(rollout, {"analysis": {"extraSelector": f'namespace="{self.ns}"'}})}}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([model_manifest(self.model_uri, model_spec), pool]))
        ro = self.wait(lambda ro, p: ro.get("stableRevision") and p["status"].get("phase") == "Ready"
                       and p["status"].get("readyReplicas", 0) >= 1,
                       timeout=240, what="pool Ready on its first revision (a real pod)")
        self.stable_rev = ro["stableRevision"]

    def pool(self) -> dict:
        p = self.get("inferencepool", POOL)
        ro = dict(((p or {}).get("status") or {}).get("rollout") or {})
        ro["_at"] = time.time()
        self.seen.append(ro)
        return p

    def rollout(self) -> dict:
        return (self.pool().get("status") or {}).get("rollout") or {}

    def wait(self, predicate, timeout: float = 120, what: str = "rollout state", interval: float = 0.5) -> dict:
        """Poll the pool until ``predicate(status.rollout, pool)`` is truthy; returns the rollout."""
        last: dict = {}

        def matched():
            nonlocal last
            p = self.pool()
            last = (p.get("status") or {}).get("rollout") or {}
            # A 1-tuple is truthy even when the rollout that matched is an empty dict.
            return (last,) if predicate(last, p) else None

        def status() -> str:
            shown = {k: v for k, v in last.items() if k != "history"}
            pods = self.kubectl("get", "pods", "-o", "wide", check=False).stdout
            return f"rollout status: {json.dumps(shown, default=str)[:3000]}\npods:\n{pods}"

        (ro,) = wait_for(matched, timeout, interval, what, detail=status)
        return ro

    def wait_gone(self, kind: str, name: str, timeout: float = 60) -> None:
        """Until ``kind/name`` no longer exists in this namespace."""
        wait_for(lambda: self.get(kind, name) is None, timeout, 0.5, f"{kind} {name} to be gone")

    def route_weights(self) -> dict[str, int]:
        route = self.get("httproute", POOL)
        prefix = f"{POOL}-"
        out = {}
        for rule in (route or {}).get("spec", {}).get("rules", []):
            for ref in rule.get("backendRefs", []):
                out[ref["name"][len(prefix):]] = int(ref.get("weight", 1))
        return out

    def events(self, reason: str | None = None) -> list[dict]:
        items = json.loads(self.kubectl("get", "events", "--field-selector", f"involvedObject.name={POOL}",
                                        "-o", "json").stdout)["items"]
        return [e for e in items if reason is None or e["reason"] == reason]

    def start_rollout(self, patch: dict | None = None) -> str:
        """Change the model (``CANARY_PATCH`` by default); returns the canary revision."""
        before = self.rollout().get("canaryRevision")
        self.kubectl("patch", "diffusionmodel", MODEL, "--type=merge", "-p", json.dumps(patch or CANARY_PATCH))
        ro = self.wait(lambda ro, p: (ro.get("canaryRevision") or before) != before
                       or ro.get("stableRevision") != self.stable_rev,
                       timeout=60, what="the canary revision in the status")
        self.canary_rev = ro.get("canaryRevision") or ro.get("stableRevision")
        return self.canary_rev

    # ---- load through the Gateway

    def serve(self, prom_url: str, rps: float = 10.0) -> GatewayLoad:
        """Once Prometheus scrapes the stable's pod, send load through the Gateway."""
        wait_pods_scraped(prom_url, self.ns, 1)
        gateway = self.cluster.gateway_url
        assert gateway, "the cluster runs no Gateway"
        self.wait_routed()
        # A new route is not what the scenarios judge: the load starts once a sampler answers.
        self.load = GatewayLoad(gateway, self.host, rps=rps)
        assert self.load.wait_answering(30), f"no sampler answered through the Gateway for {self.host} in 30 s"
        self.load.start()
        return self.load

    def wait_routed(self, timeout: float = 60) -> None:
        """Until Traefik has accepted the pool's HTTPRoute at its current generation."""
        def accepted() -> bool:
            route = self.get("httproute", POOL) or {}
            gen = route.get("metadata", {}).get("generation")
            for parent in route.get("status", {}).get("parents", []):
                for c in parent.get("conditions", []):
                    if c["type"] == "Accepted" and c["status"] == "True" and c.get("observedGeneration") == gen:
                        return True
            return False

        wait_for(accepted, timeout, 0.3, "the Gateway to accept the pool's HTTPRoute",
                 detail=lambda: json.dumps((self.get("httproute", POOL) or {}).get("status"), default=str))

    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
