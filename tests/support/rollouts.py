"""The vocabulary of a canary-rollout scenario on the local cluster: the pool and model every
scenario creates, the test-sized analysis timings, the revisions the operator will compute, and
:class:`Scenario`, which drives one pool in one namespace and reads back what happened.

What a scenario runs, all on this machine:

- the real local cluster of ``tests/conftest.py`` (kwok fakes the pods, which become Ready by
  themselves), with the operator in-process (:mod:`tests.support.operator_control`);
- real sampler processes (:mod:`tests.support.samplers`) on the tiny model, one per revision,
  labelled with the pool and revision the operator computes, registered with Prometheus by
  file-based discovery (:class:`tests.support.prometheus.TargetFile`);
- a load generator (:class:`tests.support.load.LoadGenerator`) that reads the weights the
  operator writes into the pool's HTTPRoute and splits its requests between the local samplers
  by those weights.

Every pool is called ``tiny`` and every scenario lives in its own namespace; the samplers'
series get a ``namespace`` target label and the pools set
``spec.rollout.analysis.extraSelector: namespace="<ns>"``, as a PodMonitor-scraped
production pool would. That keeps scenarios apart in the one shared Prometheus and lets the
samplers that do not inject faults (stable, healthy canary) be started once per session: a
target file registered under a new namespace label is a new series from its first scrape.

This module only drives and observes; the assertions belong to tests/e2e. Nothing here imports
torch; the samplers are separate processes.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import yaml

from tests.support.load import LoadGenerator
from tests.support.polling import wait_for
from tests.support.prometheus import TargetFile, wait_scraped
from tests.support.samplers import SamplerProcess

API = "diffusion.serving.dev/v1alpha1"
POOL = "tiny"
MODEL = "tiny"
#: Part of the pool revision (model revision + image); set explicitly so the operator's
#: sampler_image setting cannot change the revisions predicted here.
SAMPLER_IMAGE = "ghcr.io/diffusion-serving/diffusion-sampler:e2e"
LABEL_POOL = "diffusion.serving.dev/pool"
LABEL_REVISION = "diffusion.serving.dev/revision"

#: Test-sized analysis: 2 s interval, short window 4 intervals = 8 s (at least four 1 s
#: scrapes, docs/rollouts.md), so the scaled Workbook pairs are 14.4x 96s/8s, 6x 576s/48s,
#: 1x 6912s/576s. Only the 14.4x pair arms within these scenarios.
INTERVAL_S = 2
SHORT_WINDOW_INTERVALS = 4
SHORT_WINDOW_S = INTERVAL_S * SHORT_WINDOW_INTERVALS

DM_SPEC = {"precision": "fp32", "defaults": {"steps": 4, "width": 64, "height": 64}}
#: The change every scenario rolls out: a new default step count gives a new revision.
CANARY_PATCH = {"spec": {"defaults": {"steps": 8}}}

#: Sampler flavours: name -> (role, SAMPLER_* env). The fault-free ones are shared by every
#: scenario; each faulty canary serves one scenario.
FLAVOURS = {
    "stable": ("stable", {}),
    "canary": ("canary", {}),
    "canary-errors": ("canary", {"SAMPLER_FAULT_ERROR_RATE": "0.3"}),
    "canary-slow": ("canary", {"SAMPLER_FAULT_LATENCY_S": "1.5", "SAMPLER_MAX_BATCH_SIZE": "16"}),
}


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp as the operator writes it (``...Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def model_manifest(model_dir: Path, spec: dict | None = None) -> dict:
    """The DiffusionModel: file:// at the tiny model (part of the revision, like every
    output-defining field; kwok's pods never read it, the local samplers do)."""
    return {"apiVersion": API, "kind": "DiffusionModel", "metadata": {"name": MODEL},
            "spec": {"source": {"uri": f"file://{model_dir}"}, **(spec or DM_SPEC)}}


def predict_revisions(cluster, namespace: str, model_dir: Path) -> tuple[str, str]:
    """(stable, canary) pool revisions the operator will compute for DM_SPEC and DM_SPEC with
    CANARY_PATCH: the DiffusionModel as the apiserver stores it (server-side dry run, so CRD
    defaults are in), hashed the operator's way. The tests assert the prediction against the
    status, so a drift here fails loudly instead of routing to the wrong sampler."""
    from diffusion_operator.spec import ModelSpec, model_revision, pool_revision

    out = []
    for spec in (DM_SPEC, _merge(DM_SPEC, CANARY_PATCH["spec"])):
        obj = json.loads(cluster.kubectl("-n", namespace, "create", "--dry-run=server", "-o", "json", "-f", "-",
                                         input=yaml.safe_dump(model_manifest(model_dir, spec))).stdout)
        out.append(pool_revision(model_revision(ModelSpec.from_body(MODEL, obj["spec"])), SAMPLER_IMAGE))
    return out[0], out[1]


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
    """One pool ``tiny`` in one namespace, with its samplers, targets and load."""

    def __init__(self, cluster, namespace: str, revisions: tuple[str, str], model_dir: Path) -> None:
        self.cluster, self.ns, self.model_dir = cluster, namespace, model_dir
        self.stable_rev, self.canary_rev = revisions
        self.targets: list[TargetFile] = []
        self.load: LoadGenerator | None = None
        self.seen: list[dict] = []  # every rollout status read, in order (with "_at": time.time())

    # ---- cluster objects

    def kubectl(self, *args, **kw):
        return self.cluster.kubectl("-n", self.ns, *args, **kw)

    def get(self, kind: str, name: str | None = None, selector: str | None = None):
        args = ["get", kind] + ([name] if name else []) + (["-l", selector] if selector else []) + ["-o", "json"]
        res = self.kubectl(*args, check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None

    def create(self, rollout: dict, *, prometheus_url: str, slo: dict | None = None) -> None:
        pool = {"apiVersion": API, "kind": "InferencePool", "metadata": {"name": POOL},
                "spec": {"modelRef": {"name": MODEL}, "image": SAMPLER_IMAGE, "replicas": 1, "gpu": {"count": 1},
                         "traffic": {"provider": "gateway-api", "parentRefs": [{"name": "e2e-gateway"}]},
                         "prometheus": {"url": prometheus_url, "timeoutSeconds": 2},
                         "slo": slo or {"availability": {"objective": 0.99}},
                         "rollout": _merge(rollout, {"analysis": {"extraSelector": f'namespace="{self.ns}"'}})}}
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([model_manifest(self.model_dir), pool]))
        st = self.wait(lambda ro, p: ro.get("stableRevision") and p["status"].get("phase") == "Ready",
                       timeout=90, what="pool Ready on its first revision")
        assert st["stableRevision"] == self.stable_rev, "revision prediction drifted from the operator's"

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
            return f"rollout status: {json.dumps(shown, default=str)[:3000]}"

        (ro,) = wait_for(matched, timeout, interval, what, detail=status)
        return ro

    def wait_gone(self, kind: str, name: str, timeout: float = 30) -> None:
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

    def start_rollout(self) -> None:
        self.kubectl("patch", "diffusionmodel", MODEL, "--type=merge", "-p", json.dumps(CANARY_PATCH))
        self.wait(lambda ro, p: ro.get("canaryRevision") or ro.get("stableRevision") == self.canary_rev,
                  timeout=60, what="the canary revision in the status")
        assert self.rollout().get("canaryRevision") in (self.canary_rev, None)

    # ---- local processes

    def serve(self, prom_url: str, targets_dir: Path, stable: SamplerProcess | None, canary: SamplerProcess | None,
              rps: float = 10.0) -> None:
        """Register the samplers with Prometheus under this namespace, then send load by the
        HTTPRoute's weights."""
        backends = {}
        for role, s in (("stable", stable), ("canary", canary)):
            if s is None:
                continue
            self.targets.append(TargetFile(targets_dir, f"{self.ns}-{role}", s.port,
                                           {"namespace": self.ns, "role": role}))
            backends[s.revision] = s.url
        wait_scraped(prom_url, self.targets)
        self.load = LoadGenerator(self.route_weights, backends, rps=rps).start()

    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
        for t in self.targets:
            t.remove()
