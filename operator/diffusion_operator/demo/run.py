"""``diffusion-operator dev demo``: the story an SRE cares about, played on the running dev
cluster with real pods, real traffic through the Gateway and the real operator.

1. A good new model revision: canary steps 25 -> 50 -> 100 %, each after a passing analysis,
   promoted.
2. A bad revision (the sampler's test-only fault injection answers half its requests with 500):
   the availability burn rate crosses the 14.4x threshold, automatic rollback; the reason is
   printed with value, threshold and windows.
3. A summary table of both rollouts and a picture (SVG) of canary weight and burn rates over
   time, written next to ``dev up``'s first image.

Everything lives in the namespace ``diffusion-demo`` (a DiffusionModel and an InferencePool
named ``demo``); a new run starts from scratch, ``dev demo --cleanup`` removes it. Load comes
from :mod:`.traffic`, sent to the Gateway like any client's (Host ``demo.localhost``), once a
sampler answers there. The presentation (live view, table, SVG) is :mod:`.view`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from ..devcluster.first_run import DEV_MODEL_DIR, pool_ready
from . import view
from .traffic import GatewayLoad

NAMESPACE = "diffusion-demo"
NAME = "demo"
HOST = "demo.localhost"
RPS = 6.0
#: Demo-sized analysis: every 5 s, short windows of 2 intervals (10 s: five 2 s scrapes), so the
#: paging pairs are 14.4x over 120 s / 10 s and 6x over 720 s / 60 s; the steps give the canary
#: 75 s, enough for both to arm (the pool's AnalysisValid condition checks).
ROLLOUT = {
    "steps": [{"weight": 25, "pauseSeconds": 30}, {"weight": 50, "pauseSeconds": 30},
              {"weight": 100, "pauseSeconds": 15}],
    "progressDeadlineSeconds": 120,
    "scaleDownDelaySeconds": 5,
    "analysis": {"intervalSeconds": 5, "shortWindowIntervals": 2, "minRequests": 5},
}
MODEL_SPEC = {"precision": "fp32", "defaults": {"steps": 4, "width": 64, "height": 64}, "safety": {"checker": "off"}}
GOOD_PATCH = {"spec": {"defaults": {"steps": 6}}}
BAD_PATCH = {"spec": {"defaults": {"steps": 8}, "faultInjection": {"errorRate": 0.5}}}
ROLLOUT_TIMEOUT_S = 300

Say = Callable[[str], None]


def manifests(gateway_ref: dict, prometheus_url: str | None) -> list[dict]:
    api = "diffusion.serving.dev/v1alpha1"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": api, "kind": "DiffusionModel", "metadata": {"name": NAME, "namespace": NAMESPACE},
         "spec": {"source": {"uri": f"file://{DEV_MODEL_DIR}"}, **MODEL_SPEC}},
        {"apiVersion": api, "kind": "InferencePool", "metadata": {"name": NAME, "namespace": NAMESPACE},
         "spec": {"modelRef": {"name": NAME}, "replicas": 1, "gpu": {"count": 1},
                  "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "3Gi"}},
                  "batching": {"maxBatchSize": 8, "maxWaitMs": 20},
                  "traffic": {"provider": "gateway-api", "parentRefs": [gateway_ref], "hostnames": [HOST]},
                  "monitoring": {"scrapeIntervalSeconds": 2},
                  # the cluster's own Prometheus, whatever the operator's default
                  **({"prometheus": {"url": prometheus_url}} if prometheus_url else {}),
                  "slo": {"availability": {"objective": 0.99}},
                  "rollout": ROLLOUT}},
    ]


def _pool(cluster) -> dict:
    return json.loads(cluster.kubectl("-n", NAMESPACE, "get", "inferencepool", NAME, "-o", "json").stdout)


def cleanup(cluster, say: Say, timeout: float = 180) -> None:
    """Remove the demo's namespace (its model, pool and everything the operator made for it)."""
    if cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        say(f"nothing to clean up: namespace {NAMESPACE} does not exist")
        return
    say(f"deleting namespace {NAMESPACE} (the demo's model, pool, pods and routes)")
    cluster.kubectl("delete", "namespace", NAMESPACE, f"--timeout={int(timeout)}s", timeout=timeout + 30)


def _rollout(cluster, title: str, patch: dict, live: view.LiveView, t0: float) -> view.RolloutRecord:
    """Patch the model, then follow the pool until the rollout of the new revision ends."""
    before = _pool(cluster)["status"].get("rollout") or {}
    history_len = len(before.get("history") or [])
    cluster.kubectl("-n", NAMESPACE, "patch", "diffusionmodel", NAME, "--type=merge", "-p", json.dumps(patch))
    started = time.monotonic()
    samples: list[view.Sample] = []
    canary = None
    while True:
        ro = _pool(cluster)["status"].get("rollout") or {}
        canary = ro.get("canaryRevision") or canary
        sample = view.sample_from_status(ro, time.monotonic() - started)
        samples.append(sample)
        live.update(f"{title}: revision {canary or '...'}", sample)
        history = ro.get("history") or []
        if len(history) > history_len and history[-1].get("canaryRevision") == canary:
            last = history[-1]
            break
        if time.monotonic() - started > ROLLOUT_TIMEOUT_S:
            live.finish(f"{title}: no outcome after {ROLLOUT_TIMEOUT_S} s (phase {ro.get('phase')})")
            raise TimeoutError(f"{title} did not finish within {ROLLOUT_TIMEOUT_S} s: {json.dumps(ro)[:500]}")
        time.sleep(1)
    finished = time.monotonic() - started
    outcome = last.get("outcome", "?")
    reason = last.get("reason") or ro.get("reason") or ""
    message = ro.get("message") or (ro.get("lastAnalysis") or {}).get("message") or ""
    live.finish(f"{title}: {outcome} after {finished:.0f} s" + (f" ({reason})" if reason else ""))
    return view.RolloutRecord(title=title, canary_revision=canary or "?", stable_revision=last.get("stableRevision")
                              or before.get("stableRevision") or "?", outcome=outcome, reason=reason,
                              message=message, started_t=started - t0, finished_t=started - t0 + finished,
                              max_weight=max((s.weight for s in samples), default=0), samples=samples)


def play(cluster, out_dir: Path, say: Say, stream=None) -> int:
    """Both rollouts; 0 when the good one was promoted and the bad one rolled back."""
    stream = stream or sys.stdout
    t0 = time.monotonic()
    if cluster.kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0:
        cleanup(cluster, say)  # a new run starts from scratch
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests(cluster.gateway_ref,
                                                                           cluster.prometheus_url)))
    say(f"created DiffusionModel and InferencePool '{NAME}' in namespace {NAMESPACE}; waiting for its first pod")
    deadline = time.monotonic() + 300
    while not (ready := pool_ready(cluster.kubectl, NAMESPACE, NAME))[0]:
        if time.monotonic() > deadline:
            say(f"error: the demo pool was not Ready after 300 s: {ready[1]}")
            return 1
        time.sleep(2)
    load = GatewayLoad(cluster.gateway_url, HOST, rps=RPS)
    if not load.wait_answering(60):
        say(f"error: no sampler answered through the Gateway {cluster.gateway_url} (Host {HOST}) within 60 s")
        return 1
    load.start()
    say(f"sending {RPS:.0f} requests/s through the Gateway {cluster.gateway_url} (Host {HOST})")
    live = view.LiveView(stream, tty=stream.isatty())
    records = []
    try:
        records.append(_rollout(cluster, "rollout 1/2, a good revision", GOOD_PATCH, live, t0))
        records.append(_rollout(cluster, "rollout 2/2, a bad revision (50% injected errors)", BAD_PATCH, live, t0))
    finally:
        load.stop()
    out_dir.mkdir(parents=True, exist_ok=True)
    svg = out_dir / "demo-rollouts.svg"
    view.write_svg(records, svg)
    print("", file=stream)
    print(view.summary_table(records), file=stream)
    bad = records[-1]
    if bad.message:
        print(f"\nwhy rollout 2 was rolled back: {bad.message}", file=stream)
    answered = ", ".join(f"{rev} {code}: {n}" for rev, codes in sorted(load.codes.items())
                         for code, n in sorted(codes.items()))
    print(f"answers through the Gateway: {answered}", file=stream)
    print(f"picture of both rollouts: {svg}", file=stream)
    print(f"demo wall time {time.monotonic() - t0:.0f} s; `diffusion-operator dev demo --cleanup` removes the "
          f"namespace {NAMESPACE}", file=stream)
    good_ok = records[0].outcome == "Promoted"
    bad_ok = bad.outcome == "RolledBack"
    return 0 if good_ok and bad_ok else 1
