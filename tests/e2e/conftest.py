"""Machinery for the end-to-end rollout tests (and ``benchmarks/rollout_timing.py``).

What a scenario runs, all on this machine:

- the real local cluster of ``tests/conftest.py`` (kwok fakes the pods, which become Ready by
  themselves), with the operator in-process (:class:`OperatorControl`, one per test: a scenario
  kills and restarts it, and two operators must never run on the same cluster at once);
- real sampler processes (``python -m diffusion_sampler``) on the tiny model, one per
  revision, labelled with the pool and revision the operator computes, registered with
  Prometheus by file-based discovery (:class:`TargetFile`);
- a load generator (:class:`LoadGenerator`) that reads the weights the operator writes into the
  pool's HTTPRoute and splits its requests between the local samplers by those weights.

Every pool is called ``tiny`` and every scenario lives in its own namespace; the samplers'
series get a ``namespace`` target label and the pools set
``spec.rollout.analysis.extraSelector: namespace="<ns>"``, as a PodMonitor-scraped
production pool would. That keeps scenarios apart in the one shared Prometheus and lets the
samplers that do not inject faults (stable, healthy canary) be started once per session: a
target file registered under a new namespace label is a new series from its first scrape.

Nothing in this module imports torch; the samplers are separate processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
import yaml

from tests.sampler_process import SamplerProcess, build_tiny_model, free_port

REPO = Path(__file__).resolve().parents[2]
API = "diffusion.serving.dev/v1alpha1"
POOL = "tiny"
MODEL = "tiny"
#: Part of the pool revision (model revision + image); set explicitly so the operator's
#: DIFFUSION_OPERATOR_SAMPLER_IMAGE cannot change the revisions predicted here.
SAMPLER_IMAGE = "ghcr.io/diffusion-serving/diffusion-sampler:e2e"
LABEL_POOL = "diffusion.serving.dev/pool"
LABEL_REVISION = "diffusion.serving.dev/revision"

#: Test-sized analysis: 2 s interval, short window 4 intervals = 8 s (at least four 1 s
#: scrapes, docs/rollouts.md), so the scaled Workbook pairs are 14.4x 96s/8s, 6x 576s/48s,
#: 1x 6912s/576s. Only the 14.4x pair arms within these scenarios.
INTERVAL_S = 2
SHORT_WINDOW_INTERVALS = 4
SHORT_WINDOW_S = INTERVAL_S * SHORT_WINDOW_INTERVALS
SCRAPE_S = 1
#: The operator's timer (DIFFUSION_OPERATOR_TICK_SECONDS, set to 1 by tests/conftest.py).
TICK_S = float(os.environ.get("DIFFUSION_OPERATOR_TICK_SECONDS", "1"))

DM_SPEC = {"precision": "fp32", "defaults": {"steps": 4, "width": 64, "height": 64}}
#: The change every scenario rolls out: a new default step count gives a new revision.
CANARY_PATCH = {"spec": {"defaults": {"steps": 8}}}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- tiny model


# --------------------------------------------------------------------------- samplers


#: What every rollout sampler runs: the tiny model at 32x32, one step, on the CPU, with a 1 s
#: latency SLO bucket, so ten requests a second fit on two busy cores.
E2E_SAMPLER_ENV = {
    "SAMPLER_DTYPE": "fp32",
    "SAMPLER_DEVICE": "cpu",
    "SAMPLER_SAFETY_CHECKER": "off",
    "SAMPLER_DEFAULT_WIDTH": "32",
    "SAMPLER_DEFAULT_HEIGHT": "32",
    "SAMPLER_DEFAULT_STEPS": "1",
    "SAMPLER_MAX_WAIT_MS": "20",
    "SAMPLER_SLO_LATENCY_THRESHOLDS_S": "1",
    "SAMPLER_LOG_LEVEL": "INFO",
}


def start_samplers(model_dir: Path, log_dir: Path, specs: dict[str, tuple[str, str, dict]]) -> dict[str, SamplerProcess]:
    """``{name: (pool, revision, env)}`` -> started and Ready samplers (loaded in parallel)."""
    procs: dict[str, SamplerProcess] = {}
    try:
        for name, (pool, revision, env) in specs.items():
            procs[name] = SamplerProcess(name, model_dir, log_dir, pool=pool, revision=revision,
                                         **{**E2E_SAMPLER_ENV, **env})
        for proc in procs.values():
            proc.wait_ready()
    except BaseException:
        for proc in procs.values():
            proc.stop()
        raise
    return procs


# --------------------------------------------------------------------------- Prometheus


class TargetFile:
    """A file-based-discovery target: ``<dir>/<name>.json``, written atomically."""

    def __init__(self, targets_dir: Path, name: str, port: int, labels: dict[str, str]) -> None:
        self.path = Path(targets_dir) / f"{name}.json"
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": labels}]))
        tmp.rename(self.path)
        self.port, self.labels = port, labels

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def prom_query(url: str, query: str, timeout: float = 5) -> list:
    resp = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=timeout)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def wait_scraped(url: str, targets: list[TargetFile], timeout: float = 60) -> None:
    """Until Prometheus has scraped every target successfully under its labels."""
    deadline = time.monotonic() + timeout
    pending = list(targets)
    while pending and time.monotonic() < deadline:
        t = pending[0]
        sel = ",".join([f'instance="127.0.0.1:{t.port}"'] + [f'{k}="{v}"' for k, v in t.labels.items()])
        try:
            if any(r["value"][1] == "1" for r in prom_query(url, f"up{{{sel}}}")):
                pending.pop(0)
                continue
        except requests.RequestException:
            pass
        time.sleep(0.5)
    if pending:
        raise AssertionError(f"Prometheus at {url} never scraped {[t.path.name for t in pending]}")


class PrometheusServer:
    """A Prometheus of our own (1 s scrapes, file-based discovery), for a scenario that kills it
    or a benchmark that runs without a cluster. Same config as the local cluster's."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        from diffusion_operator.devcluster import manifests

        self.binary, self.dir = Path(binary), Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_dir = self.dir / "targets"
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(manifests.prometheus_config(f"{SCRAPE_S}s", self.targets_dir, self.port)))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> PrometheusServer:
        self._log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen([str(self.binary), f"--config.file={self.config}",
                                      f"--storage.tsdb.path={self.dir / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise RuntimeError("prometheus not ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # as if the node died: no graceful shutdown
            self.proc.wait(10)
        if self.proc is not None:
            self._log.close()
            self.proc = None


# --------------------------------------------------------------------------- load


class LoadGenerator:
    """Sends ``rps`` requests per second, split over revisions by ``weights_fn()``
    (``{revision: weight}``, re-read every ``refresh_s`` in its own thread) with smooth
    weighted round robin, to ``backends[revision]`` (a sampler URL). A revision with weight but
    no backend counts as ``unrouted``. Requests run on a thread pool, so a slow canary does not
    slow the others down. Tiny requests: 32x32, one step."""

    def __init__(self, weights_fn, backends: dict[str, str], rps: float = 10.0, refresh_s: float = 1.0,
                 workers: int = 48) -> None:
        self.weights_fn, self.backends, self.rps, self.refresh_s = weights_fn, dict(backends), rps, refresh_s
        self.weights: dict[str, int] = {}
        self.sent: Counter = Counter()
        self.codes: dict[str, Counter] = defaultdict(Counter)
        self.first_sent: dict[str, float] = {}  # revision -> time.time() of its first request
        self.unrouted = 0
        self.weight_log: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="load")
        self._threads = [threading.Thread(target=self._refresh, daemon=True, name="load-weights"),
                         threading.Thread(target=self._send_loop, daemon=True, name="load-send")]
        self._session = threading.local()

    def start(self) -> LoadGenerator:
        self._refresh_once()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _refresh_once(self) -> None:
        try:
            w = self.weights_fn()
        except Exception:  # noqa: BLE001 - keep the last known weights, as a data plane would
            return
        if w != self.weights:
            self.weights = w
            self.weight_log.append((time.time(), dict(w)))

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self._refresh_once()

    def _send_loop(self) -> None:
        current: dict[str, float] = defaultdict(float)
        period = 1.0 / self.rps
        next_at = time.monotonic()
        while not self._stop.is_set():
            weights = {r: w for r, w in self.weights.items() if w > 0}
            if weights:
                total = sum(weights.values())
                for r, w in weights.items():
                    current[r] += w
                pick = max(weights, key=lambda r: current[r])
                current[pick] -= total
                url = self.backends.get(pick)
                if url is None:
                    self.unrouted += 1
                else:
                    with self._lock:
                        self.sent[pick] += 1
                        self.first_sent.setdefault(pick, time.time())
                    self._pool.submit(self._one, pick, url)
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()  # fell behind: do not burst to catch up

    def _one(self, revision: str, url: str) -> None:
        s = getattr(self._session, "s", None)
        if s is None:
            s = self._session.s = requests.Session()
        try:
            code = s.post(url + "/v1/generate", json={"prompt": "a lighthouse at dusk", "width": 32, "height": 32,
                                                      "steps": 1}, timeout=30).status_code
        except requests.RequestException:
            code = 0
        with self._lock:
            self.codes[revision][code] += 1


# --------------------------------------------------------------------------- operator


class OperatorControl:
    """The operator in-process (``tests.conftest.OperatorProcess``) that a test may stop and
    start again; stopped at teardown. Never two at once."""

    ENV = {"DIFFUSION_OPERATOR_ALLOW_FILE_SOURCES": "1", "DIFFUSION_OPERATOR_TICK_SECONDS": "1"}

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.proc = None
        self.starts = 0

    def start(self) -> None:
        from tests.conftest import OperatorProcess

        assert self.proc is None, "operator already running"
        self.proc = OperatorProcess(self.kubeconfig, dict(self.ENV)).start()
        self.starts += 1

    def stop(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.stop()


def _running_session_operator(request):
    """The session-scoped ``operator`` of tests/conftest.py, if an earlier test started it."""
    try:
        defs = request._fixturemanager.getfixturedefs("operator", request.node) or ()
    except Exception:  # noqa: BLE001 - pytest internals; without them we cannot check
        return None
    for fd in defs:
        cached = getattr(fd, "cached_result", None)
        value = cached[0] if cached else None
        if value is not None and getattr(value, "_runner", None) is not None:
            return value
    return None


@pytest.fixture
def operator_ctl(operator_kubeconfig, request):
    session_op = _running_session_operator(request)
    if session_op is not None:
        session_op.stop()  # two operators on one cluster would fight over every pool
    ctl = OperatorControl(operator_kubeconfig)
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop()
        if session_op is not None:
            session_op.start()


# --------------------------------------------------------------------------- revisions


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


# --------------------------------------------------------------------------- session samplers


@pytest.fixture(scope="session")
def e2e_tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("e2e-model") / "tiny-sd")


@pytest.fixture(scope="session")
def revisions(cluster, e2e_tiny_model) -> tuple[str, str]:
    ns = f"e2e-predict-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        return predict_revisions(cluster, ns, e2e_tiny_model)
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


#: Sampler flavours. The fault-free ones are shared by every scenario; each faulty canary
#: serves one scenario. All load at session start, in parallel.
FLAVOURS = {
    "stable": ("stable", {}),
    "canary": ("canary", {}),
    "canary-errors": ("canary", {"SAMPLER_FAULT_ERROR_RATE": "0.3"}),
    "canary-slow": ("canary", {"SAMPLER_FAULT_LATENCY_S": "1.5", "SAMPLER_MAX_BATCH_SIZE": "16"}),
}


@pytest.fixture(scope="session")
def samplers(e2e_tiny_model, revisions, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("e2e-sampler-logs")
    by_role = dict(zip(("stable", "canary"), revisions))
    specs = {name: (POOL, by_role[role], env) for name, (role, env) in FLAVOURS.items()}
    procs = start_samplers(e2e_tiny_model, log_dir, specs)
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


# --------------------------------------------------------------------------- one scenario


def rollout_spec(steps, *, deadline: int = 120, error_policy: str = "Rollback", error_limit: int = 4,
                 min_requests: int = 5, scale_down_delay: int = 2) -> dict:
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
        deadline = time.monotonic() + timeout
        ro: dict = {}
        while time.monotonic() < deadline:
            p = self.pool()
            ro = (p.get("status") or {}).get("rollout") or {}
            if predicate(ro, p):
                return ro
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; rollout status: "
                             f"{json.dumps({k: v for k, v in ro.items() if k != 'history'}, default=str)[:3000]}")

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


@pytest.fixture
def scenario(cluster, namespace, revisions, e2e_tiny_model):
    s = Scenario(cluster, namespace, revisions, e2e_tiny_model)
    try:
        yield s
    finally:
        s.close()
