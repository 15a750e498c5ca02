"""Start, check and stop one local cluster: real control-plane processes on 127.0.0.1.

A cluster lives in a state directory (``state.json``, PKI, kubeconfig, etcd data, logs).
Every component is a child process started in its own session; its pid and kernel start
time are recorded so ``down`` stops exactly the processes this cluster started and never a
recycled pid. Ports are chosen free at start, so a test cluster and a ``dev up`` cluster run
side by side without colliding.

Start order: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, then the
simulated nodes and CRDs are applied, the real node (containerd, kubelet, kube-proxy) if asked
for, Prometheus (discovering pods through the API server), Traefik with the Gateway ``dev`` if
asked for, and the operator as a process if asked for. Prometheus, Traefik and the operator
each authenticate as a ServiceAccount of their own, bound to what they need. A component that
does not become healthy raises ``ComponentStartError`` naming it with the tail of its log,
after the ones already started are stopped again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import manifests, node, pki, toolchain

Progress = Callable[[str], None]
REPO_CRDS = Path(__file__).resolve().parents[3] / "crds"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", *node.NODE_COMPONENTS,
              "prometheus", "traefik", "operator")


class ClusterError(RuntimeError):
    """The local cluster could not be brought up or used."""


class ComponentStartError(ClusterError):
    def __init__(self, component: str, reason: str, log_tail: str):
        self.component = component
        super().__init__(f"{component} failed to start: {reason}\n--- last lines of its log ---\n{log_tail}")


@dataclass
class ClusterConfig:
    name: str = "dev"
    state_dir: Path = field(default_factory=lambda: toolchain.cache_root() / "clusters" / "dev")
    gpu_nodes: int = 2
    gpus_per_node: int = 8
    cpu_nodes: int = 1
    gpu_product: str = manifests.DEFAULT_GPU_PRODUCT
    prometheus: bool = True
    scrape_interval: str = "5s"
    project_crds: Path | None = REPO_CRDS
    # A real worker node (containerd, kubelet, kube-proxy) beside the kwok nodes: 0 or 1.
    real_nodes: int = 0
    node_gpus: int = 4
    # Load the sampler and operator images into the real node (the pause image always goes).
    node_images: tuple[Path, ...] = ()
    # Traefik as the Gateway API data plane, with the Gateway ``dev`` pools attach to (useful
    # with a real node: the simulated nodes' pod addresses lead nowhere).
    gateway: bool = False
    gateway_port: int = 0  # preferred listener port (0 or taken: any free one)
    # The operator as a process of this cluster (``diffusion-operator run`` with a ServiceAccount
    # of its own, told the local Prometheus); extra ``run`` arguments in ``operator_args``.
    operator: bool = False
    operator_args: tuple[str, ...] = ()


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    detail: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) comes after the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int | None, start_time: str | None) -> bool:
    if not pid:
        return False
    current = _proc_start_time(pid)
    if current is None or current != start_time:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalCluster:
    """One local cluster, addressed by its state directory."""

    def __init__(self, config: ClusterConfig, tools: toolchain.Toolchain | None = None):
        self.config = config
        self.dir = Path(config.state_dir)
        self._tools = tools

    # --- paths and state -------------------------------------------------------------------
    @property
    def tools(self) -> toolchain.Toolchain:
        if self._tools is None:
            self._tools = toolchain.ensure_toolchain()
        return self._tools

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    @property
    def server(self) -> str:
        return self.state()["server"]

    @property
    def prometheus_url(self) -> str | None:
        return self.state().get("prometheus_url")

    @property
    def gateway_url(self) -> str | None:
        """The Gateway ``dev``'s listener (Traefik's entry point) on 127.0.0.1."""
        return self.state().get("gateway_url")

    @property
    def gateway_ref(self) -> dict:
        """What a pool puts in ``spec.traffic.parentRefs`` to attach to the Gateway ``dev``."""
        return {"name": manifests.GATEWAY_NAME, "namespace": manifests.GATEWAY_NAMESPACE}

    # --- kubectl ---------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.tools.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
        return proc

    def token_kubeconfig(self, token: str, path: Path, namespace: str = "default") -> Path:
        """Write a kubeconfig that authenticates with ``token`` only (no admin certificate)."""
        path.write_text(yaml.safe_dump(manifests.token_kubeconfig(
            self.server, self.dir / "pki" / "ca.crt", token, f"{self.config.name}-token", namespace)))
        path.chmod(0o600)
        return path

    # --- health ----------------------------------------------------------------------------
    def _ssl_admin(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.dir / "pki" / "ca.crt"))
        ctx.load_cert_chain(str(self.dir / "pki" / "admin.crt"), str(self.dir / "pki" / "admin.key"))
        return ctx

    def _probe(self, name: str, comp: dict) -> tuple[bool, str]:
        url = comp.get("health")
        if not url:
            return True, "no health endpoint"
        if name == "kube-apiserver":
            ctx: ssl.SSLContext | None = self._ssl_admin()
        elif url.startswith("https"):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # component self-signed serving certs; loopback only
        else:
            ctx = None
        try:
            with urllib.request.urlopen(url, timeout=3, context=ctx) as resp:
                body = resp.read(200).decode(errors="replace").strip()
                return resp.status == 200, f"{url} -> {resp.status} {body[:60]}"
        except urllib.error.HTTPError as exc:
            return False, f"{url} -> {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            return False, f"{url} -> {getattr(exc, 'reason', exc)}"

    def status(self) -> list[ComponentStatus]:
        state = self.state()
        out = []
        for name in COMPONENTS:
            comp = state.get("components", {}).get(name)
            if comp is None:
                continue
            alive = _alive(comp.get("pid"), comp.get("start_time"))
            healthy, detail = self._probe(name, comp) if alive else (False, "process not running")
            out.append(ComponentStatus(name, comp.get("pid"), alive, healthy, detail))
        return out

    def is_running(self) -> bool:
        st = self.status()
        return bool(st) and all(c.healthy for c in st)

    # --- start -----------------------------------------------------------------------------
    def _spawn(self, state: dict, name: str, cmd: list[str], health: str | None, env: dict | None = None) -> None:
        logs = self.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with open(log, "ab") as fh:
            fh.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env, cwd=self.dir)
        state.setdefault("components", {})[name] = {
            "pid": proc.pid, "start_time": _proc_start_time(proc.pid), "cmd": cmd, "log": str(log), "health": health,
        }
        self._save(state)

    def _wait_healthy(self, state: dict, name: str, timeout: float) -> None:
        comp = state["components"][name]
        deadline = time.monotonic() + timeout
        detail = ""
        while time.monotonic() < deadline:
            if not _alive(comp["pid"], comp["start_time"]):
                raise ComponentStartError(name, "process exited", _tail(Path(comp["log"])))
            ok, detail = self._probe(name, comp)
            if ok:
                return
            time.sleep(0.3)
        raise ComponentStartError(name, f"not healthy after {timeout:.0f} s ({detail})", _tail(Path(comp["log"])))

    def up(self, progress: Progress | None = None) -> dict:
        """Start the cluster, or report the running one. Returns the state."""
        say = progress or (lambda _m: None)
        if self.is_running():
            say(f"Cluster '{self.config.name}' is already running ({self.server}).")
            return self.state()
        if self.state().get("components"):
            say("Found a partly running cluster; stopping its leftovers before starting again.")
            self.down()
        tools = self.tools
        self.dir.mkdir(parents=True, exist_ok=True)
        keys = pki.ensure_pki(self.dir / "pki")
        names = ["etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok", "prometheus"]
        names += ["gateway", "gateway-admin"] if self.config.gateway else []
        names += ["operator-health", "operator-metrics"] if self.config.operator else []
        ports = {n: free_port() for n in names}
        if self.config.gateway and self.config.gateway_port and _port_free(self.config.gateway_port):
            ports["gateway"] = self.config.gateway_port
        server = f"https://127.0.0.1:{ports['apiserver']}"
        state: dict = {"name": self.config.name, "server": server, "ports": ports, "components": {},
                       "config": {"gpu_nodes": self.config.gpu_nodes, "gpus_per_node": self.config.gpus_per_node}}
        self._save(state)
        self.kubeconfig.write_text(yaml.safe_dump(manifests.admin_kubeconfig(
            server, keys.ca_cert, keys.admin_cert, keys.admin_key, self.config.name)))
        self.kubeconfig.chmod(0o600)
        try:
            self._start_all(state, tools, keys, ports, say)
        except BaseException:
            self.down()
            raise
        return self.state()

    def _start_all(self, state: dict, tools: toolchain.Toolchain, keys: pki.ClusterPKI, ports: dict,
                   say: Progress) -> None:
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        say("starting etcd")
        self._spawn(state, "etcd", [
            str(tools.etcd), "--name=default", f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
            "--quota-backend-bytes=4294967296",
        ], f"{etcd_url}/health")
        self._wait_healthy(state, "etcd", 30)

        say("starting kube-apiserver")
        self._spawn(state, "kube-apiserver", [
            str(tools.kube_apiserver), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--cert-dir={self.dir / 'pki' / 'apiserver-generated'}",
            f"--tls-cert-file={keys.serving_cert}", f"--tls-private-key-file={keys.serving_key}",
            f"--client-ca-file={keys.ca_cert}", "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={keys.sa_pub}", f"--service-account-signing-key-file={keys.sa_key}",
            "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true",
            "--enable-admission-plugins=NodeRestriction",
            # logs, exec and port-forward: the apiserver dials the kubelet by the node's Hostname
            # (the real node is named localhost; its kubelet listens on 127.0.0.1 only).
            f"--kubelet-client-certificate={keys.admin_cert}", f"--kubelet-client-key={keys.admin_key}",
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            "--profiling=false", "--event-ttl=1h", "--v=0",
        ], f"{state['server']}/readyz")
        self._wait_healthy(state, "kube-apiserver", 120)

        say("starting kube-controller-manager and kube-scheduler")
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
                  "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
                  f"--authentication-kubeconfig={self.kubeconfig}", f"--authorization-kubeconfig={self.kubeconfig}",
                  "--profiling=false"]
        self._spawn(state, "kube-controller-manager", [
            str(tools.kube_controller_manager), *common, f"--secure-port={ports['kcm']}",
            f"--cert-dir={self.dir / 'pki' / 'kcm-generated'}",
            f"--service-account-private-key-file={keys.sa_key}", f"--root-ca-file={keys.ca_cert}",
            "--use-service-account-credentials=false", "--controllers=*,-nodeipam,-cloud-node-lifecycle",
            "--concurrent-gc-syncs=10", "--node-monitor-grace-period=60s",
        ], f"https://127.0.0.1:{ports['kcm']}/healthz")
        self._spawn(state, "kube-scheduler", [
            str(tools.kube_scheduler), *common, f"--secure-port={ports['scheduler']}",
            f"--cert-dir={self.dir / 'pki' / 'scheduler-generated'}",
        ], f"https://127.0.0.1:{ports['scheduler']}/healthz")
        self._wait_healthy(state, "kube-controller-manager", 60)
        self._wait_healthy(state, "kube-scheduler", 60)

        say("starting kwok (simulated nodes)")
        stages = self.dir / "kwok-stages.yaml"
        stages.write_text("\n---\n".join(p.read_text() for p in tools.kwok_stages))
        self._spawn(state, "kwok", [
            str(tools.kwok), f"--kubeconfig={self.kubeconfig}", f"--config={stages}",
            "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={manifests.KWOK_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{ports['kwok']}", "--node-ip=10.244.0.1", "--cidr=10.244.0.0/16",
            # Renew node Leases: without them kwok's status heartbeat is too rare for the node
            # lifecycle controller, nodes go NotReady after a minute and every pod turns unready.
            "--node-lease-duration-seconds=40",
        ], f"http://127.0.0.1:{ports['kwok']}/healthz")
        self._wait_healthy(state, "kwok", 60)

        say(f"adding {self.config.gpu_nodes} simulated GPU node(s) with {self.config.gpus_per_node} GPU(s) each")
        nodes = manifests.cluster_nodes(self.config.gpu_nodes, self.config.gpus_per_node,
                                        cpu_nodes=self.config.cpu_nodes, gpu_product=self.config.gpu_product,
                                        opt_in=self.config.real_nodes > 0)
        if nodes:
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(nodes))

        say("installing Gateway API and Prometheus Operator CRDs")
        crd_files = [*tools.gateway_api_crds, *tools.monitoring_crds]
        if self.config.project_crds and Path(self.config.project_crds).is_dir():
            crd_files += sorted(Path(self.config.project_crds).glob("*.yaml"))
        args = ["apply", "--server-side", "--force-conflicts", "--field-manager=diffusion-dev"]
        for f in crd_files:
            args += ["-f", str(f)]
        self.kubectl(*args)
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        if nodes:
            self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")

        if self.config.real_nodes:
            self._start_node(state, keys, say)

        if self.config.prometheus:
            say("starting Prometheus (discovers sampler pods through the API server)")
            pdir = self.dir / "prometheus"
            pdir.mkdir(parents=True, exist_ok=True)
            cfg = pdir / "prometheus.yml"
            access = self.service_account_kubeconfig("prometheus", "diffusion-monitoring",
                                                     manifests.PROMETHEUS_RULES, pdir / "kubeconfig")
            cfg.write_text(yaml.safe_dump(manifests.prometheus_config(
                self.config.scrape_interval, ports["prometheus"], kubeconfig=access)))
            self._spawn(state, "prometheus", [
                str(tools.prometheus), f"--config.file={cfg}", f"--storage.tsdb.path={pdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=30d",
            ], f"http://127.0.0.1:{ports['prometheus']}/-/ready")
            self._wait_healthy(state, "prometheus", 60)
            state["prometheus_url"] = f"http://127.0.0.1:{ports['prometheus']}"
            self._save(state)

        if self.config.gateway:
            self._start_gateway(state, ports, say)
        if self.config.operator:
            self._start_operator(state, ports, say)

    def service_account_kubeconfig(self, name: str, namespace: str, rules: list[dict], path: Path,
                                   timeout: float = 60) -> Path:
        """A kubeconfig for ServiceAccount ``namespace/name`` bound to ``rules`` only, with the
        long-lived token the controller manager writes into its token Secret."""
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests.service_account_access(
            name, namespace, rules)))
        deadline = time.monotonic() + timeout
        while True:
            token = self.kubectl("-n", namespace, "get", "secret", f"{name}-token", "-o",
                                 "jsonpath={.data.token}", check=False).stdout.strip()
            if token:
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"no token in Secret {namespace}/{name}-token after {timeout:.0f} s "
                                   "(is kube-controller-manager's token controller running?)")
            time.sleep(0.3)
        import base64

        path.parent.mkdir(parents=True, exist_ok=True)
        return self.token_kubeconfig(base64.b64decode(token).decode(), path, namespace)

    def _start_gateway(self, state: dict, ports: dict, say: Progress) -> None:
        say("starting Traefik (Gateway API) and the Gateway 'dev'")
        traefik = toolchain.ensure_traefik()
        gdir = self.dir / "traefik"
        access = self.service_account_kubeconfig("traefik", manifests.GATEWAY_NAMESPACE, manifests.TRAEFIK_RULES,
                                                 gdir / "kubeconfig")
        cfg = gdir / "traefik.yml"
        cfg.write_text(yaml.safe_dump(manifests.traefik_static_config(port=ports["gateway"],
                                                                      admin_port=ports["gateway-admin"])))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
        env["KUBECONFIG"] = str(access)
        self._spawn(state, "traefik", [str(traefik), f"--configFile={cfg}"],
                    f"http://127.0.0.1:{ports['gateway-admin']}/ping", env=env)
        self._wait_healthy(state, "traefik", 60)
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests.gateway_objects(ports["gateway"])))
        try:
            self.kubectl("-n", manifests.GATEWAY_NAMESPACE, "wait", "--for=condition=Programmed",
                         f"gateway/{manifests.GATEWAY_NAME}", "--timeout=60s", timeout=90)
        except ClusterError as exc:
            raise ComponentStartError("traefik", f"the Gateway was not programmed: {exc}",
                                      _tail(Path(state["components"]["traefik"]["log"]))) from None
        state["gateway_url"] = f"http://127.0.0.1:{ports['gateway']}"
        self._save(state)

    def _start_operator(self, state: dict, ports: dict, say: Progress) -> None:
        say("starting the operator (diffusion-operator run, as its ServiceAccount)")
        import sys

        rules = yaml.safe_load((REPO_CRDS.parent / "charts/diffusion-operator/files/rbac-rules.yaml").read_text())
        access = self.service_account_kubeconfig("diffusion-operator", "diffusion-system",
                                                 rules["framework"] + rules["application"],
                                                 self.dir / "operator" / "kubeconfig")
        cmd = [sys.executable, "-m", "diffusion_operator.cli", "run", f"--kubeconfig={access}",
               "--lease-namespace=diffusion-system", f"--liveness-port={ports['operator-health']}",
               f"--metrics-port={ports['operator-metrics']}"]
        if state.get("prometheus_url"):
            cmd.append(f"--prometheus-url={state['prometheus_url']}")
        cmd += list(self.config.operator_args)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
        env["POD_NAMESPACE"] = "diffusion-system"
        self._spawn(state, "operator", cmd, f"http://127.0.0.1:{ports['operator-health']}/healthz", env=env)
        self._wait_healthy(state, "operator", 90)

    @property
    def node_paths(self) -> node.NodePaths:
        return node.NodePaths(self.dir / "node", toolchain.cache_root() / "node" / "containerd")

    def _start_node(self, state: dict, keys: pki.ClusterPKI, say: Progress) -> None:
        say("starting the real node (containerd, kubelet, kube-proxy)")
        ntools = toolchain.ensure_node_tools()
        node.preflight(ntools)
        paths = self.node_paths
        ports = {n: free_port() for n in ("kubelet", "kubelet-healthz", "proxy-healthz", "proxy-metrics")}
        state["node"] = {"name": node.NODE_NAME, "dir": str(paths.base), "ports": ports,
                         "created_bridge": node.ensure_bridge(ntools),
                         # the stop path reads these back instead of resolving (maybe building) them
                         "tools": {k: str(v) for k, v in dataclasses.asdict(ntools).items()}}
        self._save(state)
        files = node.write_configs(paths, ntools, cluster_dir=self.dir, server=state["server"],
                                   kubelet_port=ports["kubelet"], kubelet_healthz_port=ports["kubelet-healthz"],
                                   gpus=self.config.node_gpus, gpu_product=self.config.gpu_product)
        env = dict(os.environ, PATH=f"{ntools.runc.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self._spawn(state, "containerd", [str(ntools.containerd), f"--config={files['containerd']}"], None, env=env)
        comp = state["components"]["containerd"]
        try:
            node.wait_containerd(ntools, paths, lambda: _alive(comp["pid"], comp["start_time"]))
        except node.NodeUnavailable as exc:
            raise ComponentStartError("containerd", str(exc), _tail(Path(comp["log"]))) from None
        from . import images  # buildah is only needed when a real node runs

        archives = [images.ensure_pause_image(say).archive, *self.config.node_images]
        for archive in archives:
            started = time.monotonic()
            if node.import_image(ntools, paths, archive):
                say(f"loaded {archive.name} into the node ({archive.stat().st_size / 2**20:.0f} MiB, "
                    f"{time.monotonic() - started:.0f} s)")
        self._spawn(state, "kubelet", node.kubelet_command(ntools, files, paths, self.config.node_gpus,
                                                           self.config.gpu_product),
                    f"http://127.0.0.1:{ports['kubelet-healthz']}/healthz", env=env)
        self._wait_healthy(state, "kubelet", 60)
        try:
            deadline = time.monotonic() + 60  # `kubectl wait` fails at once on a node not registered yet
            while self.kubectl("get", "node", node.NODE_NAME, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise ClusterError(f"node {node.NODE_NAME} did not register within 60 s")
                time.sleep(0.5)
            self.kubectl("wait", "--for=condition=Ready", f"node/{node.NODE_NAME}", "--timeout=120s", timeout=150)
        except ClusterError as exc:
            raise ComponentStartError("kubelet", f"node {node.NODE_NAME} not Ready: {exc}",
                                      _tail(Path(state["components"]["kubelet"]["log"]))) from None
        node.advertise_gpus(self.kubectl, self.config.node_gpus)
        if self.config.node_gpus:
            # the kubelet derives allocatable from capacity at its next status update
            deadline = time.monotonic() + 90
            while self.kubectl("get", "node", node.NODE_NAME, "-o",
                               "jsonpath={.status.allocatable.nvidia\\.com/gpu}").stdout.strip() != str(
                                   self.config.node_gpus):
                if time.monotonic() > deadline:
                    raise ComponentStartError("kubelet", "the node's allocatable never showed nvidia.com/gpu",
                                              _tail(Path(state["components"]["kubelet"]["log"])))
                time.sleep(1)
        self._spawn(state, "kube-proxy", node.kube_proxy_command(ntools, files, ports["proxy-healthz"],
                                                                 ports["proxy-metrics"]),
                    f"http://127.0.0.1:{ports['proxy-healthz']}/healthz", env=env)
        self._wait_healthy(state, "kube-proxy", 60)

    def node_summary(self) -> str:
        """One line on the real node: Ready or why not, and the GPUs it advertises."""
        proc = self.kubectl("get", "node", node.NODE_NAME, "-o", "json", check=False, timeout=15)
        if proc.returncode != 0:
            return f"not registered ({proc.stderr.strip()[:120]})"
        obj = json.loads(proc.stdout)
        ready: dict = next((c for c in obj["status"].get("conditions", []) if c["type"] == "Ready"), {})
        gpus = obj["status"].get("allocatable", {}).get("nvidia.com/gpu", "0")
        head = "Ready" if ready.get("status") == "True" else f"NotReady ({ready.get('reason', 'no status yet')})"
        info = obj["status"].get("nodeInfo", {})
        return (f"{head}; nvidia.com/gpu {gpus}; kubelet {info.get('kubeletVersion')}, "
                f"{info.get('containerRuntimeVersion')}")

    def node_tools(self, state: dict | None = None) -> node.NodeTools | None:
        """The real node's tools as recorded when it started (``None`` without a real node):
        stopping or inspecting a node never installs or builds anything."""
        recorded = (state or self.state()).get("node")
        if not recorded:
            return None
        if "tools" not in recorded:  # a node started before the paths were recorded
            return toolchain.ensure_node_tools(progress=None)
        return node.NodeTools(**{k: Path(v) for k, v in recorded["tools"].items()})

    def node_footprint(self, tools: node.NodeTools) -> node.Footprint:
        """What the real node has on this machine now (processes, mounts, links, netns, chains)."""
        return node.footprint(tools, self.node_paths.base)

    # --- stop ------------------------------------------------------------------------------
    def down(self, timeout: float = 15) -> list[str]:
        """Stop exactly the processes this cluster started (recorded pid and start time)."""
        state = self.state()
        stopped = []
        ntools = self.node_tools(state)
        for name in reversed(COMPONENTS):
            comp = state.get("components", {}).get(name)
            if name == "containerd" and ntools and comp and _alive(comp.get("pid"), comp.get("start_time")):
                # kubelet is stopped by now: remove every pod through the CRI so CNI tears down
                # its veth and network namespace before containerd goes.
                node.remove_pods(ntools, self.node_paths)
            if not comp or not _alive(comp.get("pid"), comp.get("start_time")):
                continue
            pid = comp["pid"]
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid, comp["start_time"]):
                _reap(pid)
                time.sleep(0.1)
            if _alive(pid, comp["start_time"]):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                for _ in range(50):
                    _reap(pid)
                    if not _alive(pid, comp["start_time"]):
                        break
                    time.sleep(0.1)
            stopped.append(name)
        if ntools:
            node.cleanup(ntools, self.node_paths, created_bridge=state["node"].get("created_bridge", False))
        if state:
            state["components"] = {}
            state.pop("node", None)
            self._save(state)
        return stopped


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
