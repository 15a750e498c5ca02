#!/usr/bin/env python3
"""Operator scale benchmark: N InferencePools on the local cluster, against plain Deployments.

What it does (one run, everything started and stopped by this script):

1. Starts its own local cluster (``LocalCluster``, the code behind ``diffusion-operator dev up``)
   in a temporary state directory on free ports: enough simulated GPU nodes for the pools *and*
   the plain baseline side by side, Prometheus off.
2. Creates a ServiceAccount bound to exactly the chart's RBAC rules (as ``tests/conftest.py``
   does) and a kubeconfig with its token; the operator runs as that ServiceAccount, not as
   cluster admin. FlowSchemas that match only that ServiceAccount, one per verb, route its
   requests to the same priority level they would use anyway (``workload-low``); the
   apiserver's ``apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`` then counts
   the operator's requests exactly, per verb (see "How requests are counted" below).
3. Starts the operator as a separate process,
   ``python -m diffusion_operator.cli run --standalone --allow-file-sources ...``, so its peak
   RSS is the kernel's ``VmHWM`` of that process.
4. Applies 1 DiffusionModel and N InferencePools (1 replica, 1 GPU each) with one
   ``kubectl apply`` of a multi-document YAML, and watches InferencePools and Deployments:
   per pool, the moment its InferencePool appeared in the watch (its apply) and the moment its
   Deployment appeared (apply-to-Deployment latency), and when ``status.phase`` became Ready.
5. Once all pools are Ready: a settle window (default 10 s), then ``--idle-seconds`` of idle,
   counting the operator's writes (create/update/patch/delete, Events included).
6. Stops the operator and applies the very same N Deployments (copied from the operator's
   namespace, ownerReferences stripped) into a second namespace with one ``kubectl apply``:
   the plain alternative, timed to all Deployments Ready.
7. Prints a markdown table (and optionally writes JSON), stops the cluster, removes the state.

With ``--replicas 2`` (high availability) two operator processes run with leader election
(``--identity op-a`` / ``op-b``, the Lease ``diffusion-system/diffusion-operator``): op-a starts
first and leads, op-b waits as a standby. Halfway through the idle window the active one (the
Lease's ``holderIdentity``) is SIGKILLed and a new InferencePool ``pool-failover`` is applied at
once; the table then reports the takeover: kill to the Lease's new holder, kill to the new
pool's Deployment (the new leader's first reconcile visible) and to its Ready, and the new
leader's requests for the rest of the window. The idle rows cover the first half only, and a
FlowSchema of its own counts the Lease traffic of both replicas (``lease``, not a write verb).
The default, ``--replicas 1``, is the single ``--standalone`` operator, unchanged.

How requests are counted. The apiserver's ``apiserver_request_total`` has no user label, and
the controller-manager, scheduler and kwok are busy in the same window, so diffing it only
gives cluster-wide totals. Instead, the operator authenticates as its own ServiceAccount and
per-verb FlowSchemas (``matchingPrecedence`` 800, ahead of the built-in ``service-accounts``
one at 9000) match only that subject; no other client in this cluster uses a ServiceAccount
(the controller-manager runs with ``--use-service-account-credentials=false``; scheduler, kwok
and kubectl use the admin certificate), so each FlowSchema's dispatched counter is exactly the
operator's requests of that verb. Caveats: a WATCH counts once when it is opened (its events
are not requests); requests rejected by API Priority and Fairness are counted separately (in
``rejected``) and were zero in our runs; Events are ``create`` requests and count as writes.
The cluster-wide ``apiserver_request_total`` by verb is reported alongside for context.

Usage:  .venv/bin/python benchmarks/operator_scale.py [--pools 100] [--idle-seconds 60] [--replicas 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from diffusion_operator.devcluster import toolchain  # noqa: E402
from diffusion_operator.devcluster.cluster import ClusterConfig, LocalCluster, free_port  # noqa: E402

API_GROUP = "diffusion.serving.dev"
LABEL_POOL = f"{API_GROUP}/pool"
OPERATOR_NS = "diffusion-system"
OPERATOR_SA = "diffusion-operator"
POOL_NS = "bench-operator"
PLAIN_NS = "bench-plain"
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
FS_PREFIX = "bench-op-"
LEASE_NAME = "diffusion-operator"  # --replicas 2: the leader-election Lease, in OPERATOR_NS
FAILOVER_POOL = "pool-failover"    # --replicas 2: applied right after the leader is killed

TARGETS = {
    "ready_s": 60.0,          # all Ready within 60 s of the last apply
    "median_apply_to_dep_s": 1.0,
    "peak_rss_mb": 250.0,
    "idle_writes": 0,
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


# --- manifests ----------------------------------------------------------------------------------

def model_manifest(namespace: str) -> dict:
    doc = yaml.safe_load((REPO / "examples/dev/diffusionmodel-tiny.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    return doc


def pool_manifest(namespace: str, i: int, name: str | None = None) -> dict:
    return {"apiVersion": f"{API_GROUP}/v1alpha1", "kind": "InferencePool",
            "metadata": {"name": name or f"pool-{i:03d}", "namespace": namespace},
            "spec": {"modelRef": {"name": "tiny"}, "replicas": 1, "gpu": {"count": 1}}}


def rbac_objects() -> list[dict]:
    """The ServiceAccount bound to exactly the chart's rules (same as tests/conftest.py)."""
    rules = yaml.safe_load((REPO / "charts/diffusion-operator/files/rbac-rules.yaml").read_text())
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "diffusion-operator-bench"}, "rules": rules["framework"] + rules["application"]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "diffusion-operator-bench"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "diffusion-operator-bench"},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]},
    ]


def flow_schemas(lease: bool = False) -> list[dict]:
    """One FlowSchema per verb (plus one for non-resource URLs such as discovery), matching only
    the operator's ServiceAccount, all on the priority level its requests use by default.
    ``lease``: one more, ahead of the others, for every request on Leases (leader election), so
    the replicas' renewals and polls are counted apart as ``lease`` and not as writes."""
    subject = [{"kind": "ServiceAccount", "serviceAccount": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}}]
    out = []

    def fs(name: str, precedence: int, rule: dict) -> dict:
        return {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
                "metadata": {"name": FS_PREFIX + name},
                "spec": {"priorityLevelConfiguration": {"name": "workload-low"}, "matchingPrecedence": precedence,
                         "distinguisherMethod": {"type": "ByUser"}, "rules": [{"subjects": subject, **rule}]}}

    for verb in VERBS:
        out.append(fs(verb, 800, {"resourceRules": [{"verbs": [verb], "apiGroups": ["*"], "resources": ["*"],
                                                      "clusterScope": True, "namespaces": ["*"]}]}))
    out.append(fs("nonresource", 800, {"nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}))
    out.append(fs("other", 850, {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                     "clusterScope": True, "namespaces": ["*"]}]}))
    if lease:
        out.append(fs("lease", 700, {"resourceRules": [{"verbs": ["*"], "apiGroups": ["coordination.k8s.io"],
                                                         "resources": ["leases"], "namespaces": ["*"]}]}))
    return out


def plain_copy(dep: dict, namespace: str) -> dict:
    """The operator's Deployment as a user would apply it by hand: same spec, no owner."""
    meta = dep["metadata"]
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": meta["name"], "namespace": namespace, "labels": meta.get("labels") or {},
                         "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                                         if not k.startswith("deployment.kubernetes.io/")}},
            "spec": dep["spec"]}


# --- metrics ------------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+\-]+|NaN|\+Inf)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prom(text: str, names: set[str]) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in names:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


class ApiserverMetrics:
    def __init__(self, cluster: LocalCluster):
        self.url = f"{cluster.server}/metrics"
        self.ctx = cluster._ssl_admin()

    def scrape(self) -> dict:
        with urllib.request.urlopen(self.url, timeout=30, context=self.ctx) as resp:
            text = resp.read().decode()
        samples = parse_prom(text, {"apiserver_flowcontrol_dispatched_requests_total",
                                    "apiserver_flowcontrol_rejected_requests_total", "apiserver_request_total"})
        op: dict[str, float] = {}
        rejected = 0.0
        cluster_verbs: dict[str, float] = {}
        for name, labels, value in samples:
            fs = labels.get("flow_schema", "")
            if name == "apiserver_flowcontrol_dispatched_requests_total" and fs.startswith(FS_PREFIX):
                op[fs[len(FS_PREFIX):]] = op.get(fs[len(FS_PREFIX):], 0) + value
            elif name == "apiserver_flowcontrol_rejected_requests_total" and fs.startswith(FS_PREFIX):
                rejected += value
            elif name == "apiserver_request_total":
                verb = labels.get("verb", "?")
                cluster_verbs[verb] = cluster_verbs.get(verb, 0) + value
        return {"t": time.monotonic(), "operator": op, "rejected": rejected, "cluster": cluster_verbs}


def diff(a: dict, b: dict) -> dict:
    keys = set(a) | set(b)
    return {k: b.get(k, 0) - a.get(k, 0) for k in sorted(keys) if b.get(k, 0) - a.get(k, 0)}


def op_delta(before: dict, after: dict) -> dict:
    d = diff(before["operator"], after["operator"])
    d = {k: int(v) for k, v in d.items()}
    return {"by_verb": d, "total": sum(d.values()), "writes": sum(d.get(v, 0) for v in WRITE_VERBS),
            "rejected": int(after["rejected"] - before["rejected"]),
            "cluster_by_verb": {k.lower(): int(v) for k, v in diff(before["cluster"], after["cluster"]).items()}}


def operator_metrics(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for name, labels, value in parse_prom(text, {"diffusion_operator_reconciles_total",
                                                 "diffusion_operator_status_writes_total",
                                                 "diffusion_operator_reconcile_duration_seconds_sum",
                                                 "diffusion_operator_reconcile_duration_seconds_count",
                                                 "diffusion_operator_errors_total"}):
        label_text = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        key = name.replace("diffusion_operator_", "") + "{" + label_text + "}"
        out[key] = value
    return out


def _reconcile_count(operator: Operator) -> float:
    m = operator_metrics(operator.metrics_port)
    return sum(v for k, v in m.items() if k.startswith("reconciles_total"))


# --- the operator process -----------------------------------------------------------------------

def proc_status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) / 1024  # kB -> MiB
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return out


class Operator:
    def __init__(self, kubeconfig: Path, log_path: Path, src: Path | None = None, identity: str | None = None):
        """``identity``: run with leader election under that name (``--replicas 2``); without
        it, ``--standalone`` as always."""
        self.src = src or REPO / "operator"
        self.identity = identity
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.peak_rss = 0.0

    def start(self, timeout: float = 90) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "DIFFUSION_OPERATOR_ALLOW_FILE_SOURCES": "1",
               "PYTHONPATH": str(self.src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, "-m", "diffusion_operator.cli", "run", "--standalone", "--allow-file-sources",
               "--metrics-port", str(self.metrics_port), "--liveness-port", str(self.liveness_port)]
        if self.identity:
            cmd[cmd.index("--standalone"):cmd.index("--standalone") + 1] = [
                "--identity", self.identity, "--lease-namespace", OPERATOR_NS, "--lease-name", LEASE_NAME]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - the operator's stdout until stop() closes it
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"operator not live after {timeout:.0f} s:\n{self.tail()}")

    def sample(self) -> dict:
        st = proc_status(self.proc.pid) if self.proc and self.proc.poll() is None else {}
        self.peak_rss = max(self.peak_rss, st.get("VmHWM", 0.0))
        return st

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release (a node dying, the OOM killer)."""
        self.sample()
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        self.sample()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


# --- watches ------------------------------------------------------------------------------------

class Watcher(threading.Thread):
    """Records, per object name, when it first appeared and when ``ready(obj)`` first held.

    Times are ``time.monotonic()`` on this process as the watch event arrives, so the apply
    of a pool and the creation of its Deployment are seen by the same clock and path."""

    def __init__(self, list_fn, namespace: str, key, ready, label_selector: str | None = None):
        super().__init__(daemon=True)
        self.list_fn, self.namespace, self.key, self.ready = list_fn, namespace, key, ready
        self.label_selector = label_selector
        self.seen: dict[str, float] = {}
        self.ready_at: dict[str, float] = {}
        self.stop_event = threading.Event()
        self.started = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        kw = {"namespace": self.namespace}
        if self.label_selector:
            kw["label_selector"] = self.label_selector
        rv = None
        while not self.stop_event.is_set():
            try:
                if rv is None:
                    listing = self.list_fn(**kw)
                    listing = listing if isinstance(listing, dict) else listing.to_dict()
                    now = time.monotonic()
                    for obj in listing.get("items") or []:
                        self._record(obj, now)
                    rv = listing["metadata"]["resource_version" if "resource_version" in listing["metadata"]
                                             else "resourceVersion"]
                    self.started.set()
                w = watch.Watch()
                for ev in w.stream(self.list_fn, resource_version=rv, timeout_seconds=20,
                                   allow_watch_bookmarks=True, **kw):
                    now = time.monotonic()
                    obj = ev["object"]
                    obj = obj if isinstance(obj, dict) else obj.to_dict()
                    meta = obj.get("metadata") or {}
                    rv = meta.get("resourceVersion") or meta.get("resource_version") or rv
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._record(obj, now)
                    if self.stop_event.is_set():
                        w.stop()
                        break
            except ApiException as exc:
                if exc.status == 410:
                    rv = None
                    continue
                self.error = exc
                time.sleep(1)
            except Exception as exc:  # keep watching; a dropped connection is not a failure
                self.error = exc
                time.sleep(0.5)

    def _record(self, obj: dict, now: float) -> None:
        name = self.key(obj)
        if not name:
            return
        self.seen.setdefault(name, now)
        if name not in self.ready_at and self.ready(obj):
            self.ready_at[name] = now


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def dep_ready(obj: dict) -> bool:
    spec, st, meta = obj.get("spec") or {}, obj.get("status") or {}, obj.get("metadata") or {}
    want = spec.get("replicas", 1)
    return ((st.get("observed_generation") or st.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
            and (st.get("ready_replicas") or st.get("readyReplicas") or 0) >= want
            and (st.get("updated_replicas") or st.get("updatedReplicas") or 0) >= want)


class LeaseRenewer(threading.Thread):
    """Renews a Lease in kube-node-lease for every simulated node every few seconds.

    Works around the local cluster's kwok setup: kwok runs without node leases
    (``--node-lease-duration-seconds`` unset) and its status heartbeat stage fires only every
    10-20 minutes, so after the controller-manager's 60 s node-monitor grace period every node
    turns NotReady, every pod's Ready condition is set to False, and kwok never sets it back.
    Any run longer than a minute would measure that, not the operator. These requests use the
    admin identity, so they are not counted as the operator's."""

    def __init__(self, coord, nodes: list[str], every: float = 10):
        super().__init__(daemon=True)
        self.coord, self.nodes, self.every = coord, nodes, every
        self.stop_event = threading.Event()

    def run(self) -> None:
        from datetime import datetime, timezone

        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        while not self.stop_event.is_set():
            now = datetime.now(timezone.utc)
            for node in self.nodes:
                body = client.V1Lease(metadata=client.V1ObjectMeta(name=node, namespace="kube-node-lease"),
                                      spec=client.V1LeaseSpec(holder_identity=node, lease_duration_seconds=40,
                                                              renew_time=now))
                try:
                    try:
                        cur = self.coord.read_namespaced_lease(node, "kube-node-lease")
                        cur.spec.renew_time = now
                        self.coord.replace_namespaced_lease(node, "kube-node-lease", cur)
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
                        self.coord.create_namespaced_lease("kube-node-lease", body)
                except Exception as exc:  # keep renewing the others
                    say(f"lease {node}: {exc}")
            self.stop_event.wait(self.every)


def wait_for(pred, timeout: float, what: str, poll: float = 0.2) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def lease_holder(coord) -> str | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return coord.read_namespaced_lease(LEASE_NAME, OPERATOR_NS).spec.holder_identity
    except ApiException:
        return None


def failover(replicas: list[Operator], coord, custom, pools_w: Watcher, deps_w: Watcher, apiserver: ApiserverMetrics,
             window_s: float, timeout: float) -> tuple[dict, Operator]:
    """SIGKILL the replica holding the Lease, apply a new pool at once, and time the takeover.
    Returns the measurements and the new leader."""
    holder = lease_holder(coord)
    leader = next((o for o in replicas if o.identity == holder), None)
    if leader is None:
        raise RuntimeError(f"the Lease names {holder!r}, none of {[o.identity for o in replicas]}")
    standby = next(o for o in replicas if o is not leader)
    m0 = apiserver.scrape()
    say(f"SIGKILL the leader {leader.identity}; applying {FAILOVER_POOL}")
    t_kill = time.monotonic()
    leader.kill()
    custom.create_namespaced_custom_object(API_GROUP, "v1alpha1", POOL_NS, "inferencepools",
                                           pool_manifest(POOL_NS, 0, FAILOVER_POOL))
    t_lease = wait_for(lambda: lease_holder(coord) == standby.identity, timeout,
                       f"{standby.identity} to hold the Lease")
    wait_for(lambda: FAILOVER_POOL in deps_w.seen, timeout, f"the Deployment of {FAILOVER_POOL}")
    wait_for(lambda: FAILOVER_POOL in pools_w.ready_at, timeout, f"{FAILOVER_POOL} Ready")
    say(f"{standby.identity} took over: Lease after {t_lease - t_kill:.1f} s, "
        f"{FAILOVER_POOL}'s Deployment after {deps_w.seen[FAILOVER_POOL] - t_kill:.1f} s")
    rest = window_s - (time.monotonic() - t_kill)
    if rest > 0:
        time.sleep(rest)
    m1 = apiserver.scrape()
    requests = op_delta(m0, m1)
    requests["seconds"] = round(m1["t"] - m0["t"], 1)
    return {"killed": leader.identity, "new_leader": standby.identity,
            "lease_s": round(t_lease - t_kill, 2),
            "deployment_s": round(deps_w.seen[FAILOVER_POOL] - t_kill, 2),
            "ready_s": round(pools_w.ready_at[FAILOVER_POOL] - t_kill, 2),
            "killed_peak_rss_mb": round(leader.peak_rss, 1),
            "requests": requests}, standby


# --- the run ------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict:
    from kubernetes import client, config

    n = args.pools
    gpu_nodes = args.gpu_nodes or math.ceil(2 * n * 1 / args.gpus_per_node) + 1
    state = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    cluster = LocalCluster(ClusterConfig(name=f"bench-{os.getpid()}", state_dir=state, gpu_nodes=gpu_nodes,
                                         gpus_per_node=args.gpus_per_node, prometheus=False,
                                         project_crds=REPO / "crds"), toolchain.ensure_toolchain())
    operator: Operator | None = None
    replicas: list[Operator] = []  # --replicas 2: both processes (operator is the one measured)
    watchers: list = []
    result: dict = {"pools": n, "gpu_nodes": gpu_nodes, "gpus_per_node": args.gpus_per_node,
                    "replicas": args.replicas}
    t0 = time.monotonic()
    try:
        cluster.up(progress=lambda m: say(f"cluster: {m}"))
        result["cluster_up_s"] = round(time.monotonic() - t0, 1)
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        api.configuration.connection_pool_maxsize = 8
        core, apps, custom = client.CoreV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)

        node_names = [nd.metadata.name for nd in core.list_node().items]
        coord = client.CoordinationV1Api(api)
        renewer = LeaseRenewer(coord, node_names)
        renewer.start()
        watchers.append(renewer)
        cluster.kubectl("apply", "-f", "-",
                        input=yaml.safe_dump_all(rbac_objects() + flow_schemas(lease=args.replicas > 1)))
        for ns in (POOL_NS, PLAIN_NS):
            cluster.kubectl("create", "namespace", ns)
        token = cluster.kubectl("-n", OPERATOR_NS, "create", "token", OPERATOR_SA, "--duration=6h").stdout.strip()
        sa_kubeconfig = cluster.token_kubeconfig(token, state / "operator-kubeconfig", OPERATOR_NS)
        apiserver = ApiserverMetrics(cluster)

        # The operator, and the watches that time it.
        def list_pools(**kw):
            return custom.list_namespaced_custom_object(API_GROUP, "v1alpha1", plural="inferencepools", **kw)

        pools_w = Watcher(list_pools, POOL_NS, key=lambda o: o["metadata"]["name"]
                          if o.get("kind") == "InferencePool" else None,
                          ready=lambda o: (o.get("status") or {}).get("phase") == "Ready")
        deps_w = Watcher(apps.list_namespaced_deployment, POOL_NS, key=lambda o: _labels(o).get(LABEL_POOL),
                         ready=dep_ready, label_selector=LABEL_POOL)
        watchers += [pools_w, deps_w]
        for w in (pools_w, deps_w):
            w.start()
        for w in (pools_w, deps_w):
            w.started.wait(30)

        say("starting the operator (ServiceAccount token, separate process)")
        m_boot = apiserver.scrape()
        t_boot = time.monotonic()
        src = Path(args.operator_src).resolve() if args.operator_src else None
        if args.replicas == 1:
            operator = Operator(sa_kubeconfig, state / "operator.log", src)
            operator.start()
        else:
            # op-a first, so it is the leader; op-b then waits as a standby.
            operator = Operator(sa_kubeconfig, state / "operator-op-a.log", src, identity="op-a")
            replicas.append(operator)
            operator.start()
            wait_for(lambda: lease_holder(coord) == "op-a", 60, "op-a to hold the Lease")
            standby = Operator(sa_kubeconfig, state / "operator-op-b.log", src, identity="op-b")
            replicas.append(standby)
            standby.start()
        result["operator_live_s"] = round(time.monotonic() - t_boot, 2)
        time.sleep(args.warmup_seconds)  # watches established, initial listings handled
        operator.sample()
        m_before = apiserver.scrape()
        result["startup_requests"] = op_delta(m_boot, m_before)
        result["rss_before_apply_mb"] = round(operator.sample().get("VmRSS", 0), 1)
        cpu_before = operator.sample().get("cpu_s", 0.0)

        # Apply: 1 model + N pools, one kubectl apply.
        docs = [model_manifest(POOL_NS)] + [pool_manifest(POOL_NS, i) for i in range(n)]
        say(f"applying 1 DiffusionModel + {n} InferencePools (one kubectl apply)")
        stop_sampler = threading.Event()

        def sample_rss():
            while not stop_sampler.is_set():
                for o in replicas or [operator]:
                    o.sample()
                stop_sampler.wait(0.5)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        t_apply0 = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), timeout=300)
        t_apply1 = time.monotonic()
        result["apply_s"] = round(t_apply1 - t_apply0, 2)
        result["apply_per_pool_ms"] = round((t_apply1 - t_apply0) / n * 1000, 1)

        names = [f"pool-{i:03d}" for i in range(n)]
        try:
            t_all_ready = wait_for(lambda: all(x in pools_w.ready_at for x in names), args.ready_timeout,
                                   f"{n} pools Ready")
        except TimeoutError as exc:
            missing = [x for x in names if x not in pools_w.ready_at]
            phases = cluster.kubectl("-n", POOL_NS, "get", "inferencepools", "-o",
                                     "custom-columns=NAME:.metadata.name,PHASE:.status.phase", check=False).stdout
            raise TimeoutError(f"{len(missing)} pools not Ready after {args.ready_timeout} s: {missing[:10]}\n"
                               f"{phases[:3000]}\n--- operator log ---\n{operator.tail()}") from exc
        m_ready = apiserver.scrape()
        result["ready_after_last_apply_s"] = round(t_all_ready - t_apply1, 2)
        result["ready_after_first_apply_s"] = round(t_all_ready - t_apply0, 2)
        ready_lat = sorted(pools_w.ready_at[x] - pools_w.seen[x] for x in names)
        result["pool_apply_to_ready_s"] = {"median": round(statistics.median(ready_lat), 2),
                                           "p95": round(pct(ready_lat, 95), 2), "max": round(ready_lat[-1], 2)}
        dep_lat = sorted(deps_w.seen[x] - pools_w.seen[x] for x in names if x in deps_w.seen)
        result["apply_to_deployment_s"] = {"median": round(statistics.median(dep_lat), 3),
                                           "p95": round(pct(dep_lat, 95), 3), "max": round(dep_lat[-1], 3),
                                           "n": len(dep_lat)}
        create = op_delta(m_before, m_ready)
        create["per_pool"] = round(create["total"] / n, 1)
        create["writes_per_pool"] = round(create["writes"] / n, 1)
        result["create_requests"] = create
        result["operator_metrics_ready"] = operator_metrics(operator.metrics_port)
        result["cpu_create_s"] = round(operator.sample().get("cpu_s", 0.0) - cpu_before, 1)
        say(f"all {n} pools Ready {result['ready_after_last_apply_s']} s after the last apply; "
            f"{create['total']} operator requests ({create['per_pool']}/pool)")

        # Settle: the reconciles that child events queued up may still be running after the last
        # pool turned Ready. Wait until the operator has not reconciled for --quiet-seconds (at
        # least --settle-seconds, at most --settle-timeout), counting what it did meanwhile.
        t_settle0 = time.monotonic()
        last_count, last_change = _reconcile_count(operator), time.monotonic()
        while True:
            time.sleep(1)
            count = _reconcile_count(operator)
            now = time.monotonic()
            if count != last_count:
                last_count, last_change = count, now
            if now - t_settle0 >= args.settle_seconds and now - last_change >= args.quiet_seconds:
                break
            if now - t_settle0 >= args.settle_timeout:
                say(f"operator still reconciling after {args.settle_timeout:.0f} s; starting the idle window anyway")
                break
        m_idle0 = apiserver.scrape()
        settle = op_delta(m_ready, m_idle0)
        settle["seconds"] = round(m_idle0["t"] - t_all_ready, 1)
        settle["quiet_after_s"] = round(last_change - t_all_ready, 1)
        result["settle_requests"] = settle
        cpu_idle0 = operator.sample().get("cpu_s", 0.0)
        # With two replicas the leader is killed halfway: the idle rows cover the first half.
        idle_s = args.idle_seconds if args.replicas == 1 else args.idle_seconds / 2
        say(f"idle for {idle_s:g} s, counting the operator's writes")
        time.sleep(idle_s)
        m_idle1 = apiserver.scrape()
        idle = op_delta(m_idle0, m_idle1)
        idle["requests_per_s"] = round(idle["total"] / idle_s, 2)
        result["idle_requests"] = idle
        result["cpu_idle_s"] = round(operator.sample().get("cpu_s", 0.0) - cpu_idle0, 1)
        if args.replicas > 1:
            result["idle_measured_s"] = idle_s
            result["standby_rss_mb"] = round(standby.sample().get("VmRSS", 0), 1)
            result["standby_cpu_idle_s"] = round(standby.sample().get("cpu_s", 0.0), 1)
            result["leader_peak_rss_mb"] = round(operator.peak_rss, 1)
            result["failover"], operator = failover(replicas, coord, custom, pools_w, deps_w, apiserver,
                                                    args.idle_seconds - idle_s, args.ready_timeout)
        result["operator_metrics_end"] = operator_metrics(operator.metrics_port)
        stop_sampler.set()
        final = operator.sample()
        result["peak_rss_mb"] = round(operator.peak_rss, 1)
        result["rss_end_mb"] = round(final.get("VmRSS", 0), 1)
        result["operator_cpu_total_s"] = round(final.get("cpu_s", 0), 1)
        errors = [ln for o in replicas or [operator] for ln in o.tail(100000).splitlines()
                  if '"level": "ERROR"' in ln or '"level": "WARNING"' in ln]
        result["operator_warnings"] = len(errors)
        result["operator_warning_samples"] = errors[:5]
        operator.stop()
        say("operator stopped")

        # The plain alternative: the same Deployments, applied directly.
        deps = apps.list_namespaced_deployment(POOL_NS, label_selector=LABEL_POOL)
        deps = [d for d in api.sanitize_for_serialization(deps)["items"]
                if _labels(d).get(LABEL_POOL) != FAILOVER_POOL]  # the N pools only
        plain = [plain_copy(d, PLAIN_NS) for d in deps]
        plain_w = Watcher(apps.list_namespaced_deployment, PLAIN_NS, key=lambda o: o["metadata"]["name"],
                          ready=dep_ready)
        plain_w.start()
        plain_w.started.wait(30)
        watchers.append(plain_w)
        say(f"plain alternative: applying the same {len(plain)} Deployments with kubectl")
        t_p0 = time.monotonic()
        # JSON, not YAML: an all-digit-and-e hash annotation would read back as a number.
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": plain}),
                        timeout=300)
        t_p1 = time.monotonic()
        pnames = [d["metadata"]["name"] for d in plain]
        t_p_ready = wait_for(lambda: all(x in plain_w.ready_at for x in pnames), args.ready_timeout,
                             f"{len(pnames)} plain Deployments Ready")
        result["plain"] = {"deployments": len(pnames), "apply_s": round(t_p1 - t_p0, 2),
                           "ready_after_last_apply_s": round(t_p_ready - t_p1, 2),
                           "ready_after_first_apply_s": round(t_p_ready - t_p0, 2)}
        result["ok"] = True
        return result
    finally:
        for w in watchers:
            w.stop_event.set()
        for o in replicas or ([operator] if operator is not None else []):
            try:
                o.stop()
            except Exception as exc:  # never skip the cluster teardown
                say(f"stopping the operator: {exc}")
            if args.keep_logs:
                dest = Path(args.keep_logs)
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(o.log_path, dest / o.log_path.name)
        say("stopping the cluster")
        cluster.down()
        shutil.rmtree(state, ignore_errors=True)


def fmt_table(r: dict) -> str:
    c, idle = r["create_requests"], r["idle_requests"]
    idle_s = r.get("idle_measured_s", r["idle_seconds"])
    a2d = r["apply_to_deployment_s"]
    p = r["plain"]
    plain_last = p["ready_after_last_apply_s"]
    ratio = r["ready_after_last_apply_s"] / plain_last if plain_last else float("inf")
    ratio_first = r["ready_after_first_apply_s"] / p["ready_after_first_apply_s"]

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    rows = [
        ("Metric", "Operator", "Plain kubectl Deployments", "Target", ""),
        ("Pools (1 replica, 1 GPU each)", str(r["pools"]), str(p["deployments"]), "", ""),
        ("kubectl apply (one multi-doc YAML)", f"{r['apply_s']:.2f} s ({r['apply_per_pool_ms']:.0f} ms/pool)",
         f"{p['apply_s']:.2f} s", "", ""),
        ("All Ready, from the last apply", f"{r['ready_after_last_apply_s']:.1f} s",
         f"{p['ready_after_last_apply_s']:.1f} s (ratio {ratio:.1f}x)", "< 60 s",
         mark(r["ready_after_last_apply_s"] < TARGETS["ready_s"])),
        ("All Ready, from the first apply", f"{r['ready_after_first_apply_s']:.1f} s",
         f"{p['ready_after_first_apply_s']:.1f} s (ratio {ratio_first:.1f}x)", "", ""),
        ("Apply-to-Deployment, median / p95 / max",
         f"{a2d['median']:.3f} / {a2d['p95']:.3f} / {a2d['max']:.3f} s", "n/a (applied directly)", "median < 1 s",
         mark(a2d["median"] < TARGETS["median_apply_to_dep_s"])),
        ("Pool apply-to-Ready, median / p95",
         f"{r['pool_apply_to_ready_s']['median']:.1f} / {r['pool_apply_to_ready_s']['p95']:.1f} s", "", "", ""),
        ("Operator peak RSS (VmHWM)", f"{r['peak_rss_mb']:.0f} MiB (idle before apply {r['rss_before_apply_mb']:.0f})",
         "", "< 250 MB", mark(r["peak_rss_mb"] * 1.048576 < TARGETS["peak_rss_mb"])),
        ("Operator API requests per pool (create to all Ready)",
         f"{c['per_pool']:.1f} ({c['total']} total; {c['writes_per_pool']:.1f} writes/pool)", "", "", ""),
        ("  by verb", ", ".join(f"{k} {v}" for k, v in c["by_verb"].items()), "", "", ""),
        ("Operator CPU, create to all Ready", f"{r['cpu_create_s']:.1f} s", "", "", ""),
        ("After all Ready: operator busy for", f"{r['settle_requests']['quiet_after_s']:.1f} s more: "
         f"{r['settle_requests']['total']} requests, {r['settle_requests']['writes']} writes", "", "", ""),
        (f"Idle {idle_s:g} s (after that): operator writes", str(idle["writes"]), "", "0",
         mark(idle["writes"] <= TARGETS["idle_writes"])),
        (f"Idle {idle_s:g} s: operator requests",
         f"{idle['total']} ({idle['requests_per_s']:.2f}/s: "
         + (", ".join(f"{k} {v}" for k, v in idle["by_verb"].items()) or "none") + ")", "", "", ""),
        (f"Idle {idle_s:g} s: operator CPU", f"{r['cpu_idle_s']:.1f} s", "", "", ""),
    ]
    if "failover" in r:
        f, fr = r["failover"], r["failover"]["requests"]
        rows += [
            ("Replicas (leader election)", f"2: {f['killed']} led, {f['new_leader']} standby "
             f"(RSS {r['standby_rss_mb']:.0f} MiB, CPU {r['standby_cpu_idle_s']:.1f} s so far)", "", "", ""),
            ("Failover: SIGKILL the leader to the Lease's new holder", f"{f['lease_s']:.1f} s", "",
             "lease 15 s + retries", ""),
            (f"Failover: SIGKILL to {FAILOVER_POOL}'s Deployment (new leader's first reconcile)",
             f"{f['deployment_s']:.1f} s", "", "", ""),
            (f"Failover: SIGKILL to {FAILOVER_POOL} Ready", f"{f['ready_s']:.1f} s", "", "", ""),
            (f"Failover: requests in the {fr['seconds']:.0f} s after the kill (resume of {r['pools']} pools)",
             f"{fr['total']} ({fr['writes']} writes: "
             + (", ".join(f"{k} {v}" for k, v in fr["by_verb"].items()) or "none") + ")", "", "", ""),
        ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pools", type=int, default=100)
    p.add_argument("--idle-seconds", type=float, default=60)
    p.add_argument("--settle-seconds", type=float, default=10,
                   help="wait after all pools are Ready before the idle window starts")
    p.add_argument("--quiet-seconds", type=float, default=5,
                   help="the idle window starts once the operator has not reconciled for this long")
    p.add_argument("--settle-timeout", type=float, default=300)
    p.add_argument("--operator-src", help="run the operator from this source directory (a patched copy of "
                   "operator/) instead of the repository's")
    p.add_argument("--warmup-seconds", type=float, default=5,
                   help="wait after the operator is live before applying (its watches start)")
    p.add_argument("--gpu-nodes", type=int, default=None,
                   help="simulated GPU nodes (default: room for the pools and the plain baseline)")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--ready-timeout", type=float, default=600)
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--keep-logs", help="copy the operator's log into this directory")
    p.add_argument("--replicas", type=int, choices=(1, 2), default=1,
                   help="2: two operator processes with leader election; SIGKILL the leader halfway through "
                        "the idle window and report the takeover (default 1: one --standalone operator)")
    args = p.parse_args(argv)

    # SIGTERM (CI cancel, timeout) must still run the cleanup in `finally`.
    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        r = run(args)
    except KeyboardInterrupt:
        say("interrupted; cluster stopped")
        return 130
    r["idle_seconds"] = int(args.idle_seconds)
    r["machine"] = {"cpus": os.cpu_count(), "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    r["operator_src"] = args.operator_src or "operator/ (this checkout)"
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    r["git"] = git.stdout.strip()
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str))
    print(fmt_table(r))
    print()
    print(f"Operator source: {r['operator_src']} at {r['git']}; {r['machine']['cpus']} CPUs, load average at the end "
          f"{r['machine']['loadavg_end']}; cluster up in {r['cluster_up_s']} s; {r['gpu_nodes']} GPU nodes x "
          f"{r['gpus_per_node']} GPUs")
    print("Details: startup requests " + json.dumps(r["startup_requests"]["by_verb"])
          + "; settle window " + json.dumps(r["settle_requests"]["by_verb"])
          + "; cluster-wide requests during create " + json.dumps(r["create_requests"]["cluster_by_verb"])
          + "; cluster-wide during idle " + json.dumps(r["idle_requests"]["cluster_by_verb"]))
    print("Operator metrics at all Ready: " + json.dumps(r["operator_metrics_ready"]))
    print("Operator metrics at the end: " + json.dumps(r["operator_metrics_end"]))
    if r["operator_warnings"]:
        print(f"Operator warnings/errors logged: {r['operator_warnings']}, e.g. {r['operator_warning_samples'][:2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
