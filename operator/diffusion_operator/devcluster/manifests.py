"""Pure builders for what the local cluster writes: simulated nodes, kubeconfig, configs.

No I/O here, so the shapes are unit tested without starting anything.
"""

from __future__ import annotations

import base64
from pathlib import Path

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


SIMULATED_TAINT = {"key": KWOK_ANNOTATION, "value": "fake", "effect": "NoSchedule"}


def simulated_node(name: str, *, gpus: int = 0, gpu_resource: str = "nvidia.com/gpu",
                   gpu_product: str = DEFAULT_GPU_PRODUCT, cpu: str = "64", memory: str = "512Gi",
                   opt_in: bool = False) -> dict:
    """A Node object that kwok manages (by annotation) and the real scheduler places pods on.

    GPU nodes carry the GPU resource, the product label that NVIDIA's GPU feature discovery
    sets, and the conventional ``nvidia.com/gpu:NoSchedule`` taint, so only pods that
    tolerate it land there. CPU-only nodes (``gpus=0``) are untainted. ``opt_in`` adds the
    ``kwok.x-k8s.io/node=fake:NoSchedule`` taint: beside a real node, only pods that tolerate it
    (scale benchmarks) land on a simulated one.
    """
    capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "1Ti"}
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "node.diffusion.serving.dev/simulated": "true",
    }
    spec: dict = {}
    if gpus:
        capacity[gpu_resource] = str(gpus)
        labels[GPU_PRODUCT_LABEL] = gpu_product
        labels["nvidia.com/gpu.count"] = str(gpus)
        spec["taints"] = [{"key": GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"}]
    if opt_in:
        spec["taints"] = [*spec.get("taints", []), dict(SIMULATED_TAINT)]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": spec,
        "status": {
            "capacity": dict(capacity),
            "allocatable": dict(capacity),
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake",
                         "containerRuntimeVersion": "kwok"},
        },
    }


def cluster_nodes(gpu_nodes: int, gpus_per_node: int, *, cpu_nodes: int = 1,
                  gpu_product: str = DEFAULT_GPU_PRODUCT, opt_in: bool = False) -> list[dict]:
    nodes = [simulated_node(f"gpu-node-{i}", gpus=gpus_per_node, gpu_product=gpu_product, opt_in=opt_in)
             for i in range(gpu_nodes)]
    nodes += [simulated_node(f"cpu-node-{i}", opt_in=opt_in) for i in range(cpu_nodes)]
    return nodes


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def admin_kubeconfig(server: str, ca_cert: Path, client_cert: Path, client_key: Path, name: str) -> dict:
    ctx = f"diffusion-{name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": ctx, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": f"{ctx}-admin", "user": {"client-certificate-data": _b64(client_cert),
                                                    "client-key-data": _b64(client_key)}}],
        "contexts": [{"name": ctx, "context": {"cluster": ctx, "user": f"{ctx}-admin"}}],
        "current-context": ctx,
        "preferences": {},
    }


def token_kubeconfig(server: str, ca_cert: Path, token: str, name: str, namespace: str = "default") -> dict:
    """A kubeconfig that authenticates with a bearer token (a ServiceAccount's, in tests)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
        "current-context": name,
    }


def prometheus_config(scrape_interval: str, self_port: int, *, kubeconfig: Path | None = None,
                      targets_dir: Path | None = None) -> dict:
    """Prometheus scrapes itself and, with ``kubeconfig``, the sampler pods the way a cluster's
    Prometheus Operator would for the pools' PodMonitors (:func:`sampler_pod_scrape`).

    ``targets_dir`` adds file-based discovery, for a Prometheus of a test or benchmark that
    scrapes processes outside any cluster; the local cluster's own Prometheus has none.
    """
    jobs: list[dict] = [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self_port}"]}]}]
    if kubeconfig is not None:
        jobs.append(sampler_pod_scrape(kubeconfig))
    if targets_dir is not None:
        jobs.append({"job_name": "local",
                     "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "1s"}]})
    return {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": jobs}


#: What the operator's PodMonitor selects (``builders.monitor``): pods with the pool label, the
#: container port named ``http``, path /metrics.
POOL_LABEL = "diffusion.serving.dev/pool"
SAMPLER_PORT_NAME = "http"


def _meta_label(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label)


def sampler_pod_scrape(kubeconfig: Path) -> dict:
    """One scrape job discovering pods through the API server (``kubernetes_sd_configs``, role
    pod, authenticated by ``kubeconfig``) and relabelled as the Prometheus Operator relabels a
    PodMonitor's targets: ``namespace``, ``pod``, ``container`` and ``endpoint`` labels, honouring
    the sampler's own labels as the PodMonitor asks (``builders.monitor``). Pods that are not
    running (pending, finished) are dropped, as their addresses are not reachable."""
    pool = _meta_label(POOL_LABEL)
    return {
        "job_name": "diffusion-sampler-pods",
        "metrics_path": "/metrics",
        "honor_labels": True,  # as the PodMonitor says: the sampler's own `endpoint` label wins
        "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig)}],
        "relabel_configs": [
            {"source_labels": [f"__meta_kubernetes_pod_labelpresent_{pool}"], "regex": "true", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": SAMPLER_PORT_NAME,
             "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "target_label": "endpoint"},
        ],
    }


def service_account_access(name: str, namespace: str, rules: list[dict]) -> list[dict]:
    """A ServiceAccount bound to exactly ``rules`` (a ClusterRole of its own) and a long-lived
    token Secret for it: how a local process (Traefik, Prometheus, the operator) reaches the API
    server with least privilege instead of the admin certificate."""
    role = f"diffusion-dev:{namespace}:{name}"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
         "metadata": {"name": f"{name}-token", "namespace": namespace,
                      "annotations": {"kubernetes.io/service-account.name": name}}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
    ]


#: Prometheus' pod discovery: read pods, nothing else.
PROMETHEUS_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]

# --- the Gateway API data plane (Traefik) ---------------------------------------------------------
GATEWAY_NAMESPACE = "diffusion-gateway"
GATEWAY_NAME = "dev"
GATEWAY_CLASS = "traefik"
TRAEFIK_CONTROLLER = "traefik.io/gateway-controller"
#: Traefik's Gateway provider (its documented ClusterRole, less TCPRoutes of the experimental
#: channel and pod names in OpenTelemetry attributes). Secrets and
#: ConfigMaps: Traefik watches them for listener certificates and CA bundles and does not start
#: its informers without them.
TRAEFIK_RULES = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["services", "secrets", "configmaps"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    {"apiGroups": ["gateway.networking.k8s.io"],
     "resources": ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "tlsroutes", "referencegrants",
                   "backendtlspolicies"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["gateway.networking.k8s.io"],
     "resources": ["gatewayclasses/status", "gateways/status", "httproutes/status", "grpcroutes/status",
                   "tlsroutes/status", "backendtlspolicies/status"],
     "verbs": ["update"]},
]


def traefik_static_config(*, port: int, admin_port: int) -> dict:
    """Traefik's static configuration: one HTTP entry point on 127.0.0.1 that the Gateway's
    listener binds to (Traefik matches a listener to the entry point with its port), ping and
    its own metrics on a second loopback port, and the Kubernetes Gateway provider (its client
    comes from $KUBECONFIG). Routes go straight to pod addresses from EndpointSlices, so a
    weighted HTTPRoute is split by Traefik's weighted round robin, not by kube-proxy."""
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {
            "web": {"address": f"127.0.0.1:{port}",
                    # image generation takes seconds to minutes; the sampler enforces its own timeout
                    "transport": {"respondingTimeouts": {"readTimeout": "600s", "writeTimeout": "600s"}}},
            "traefik": {"address": f"127.0.0.1:{admin_port}"},
        },
        "ping": {"entryPoint": "traefik"},
        "metrics": {"prometheus": {"entryPoint": "traefik"}},
        "providers": {"kubernetesGateway": {"statusAddress": {"ip": "127.0.0.1"}, "throttleDuration": "0s"}},
        "log": {"level": "INFO", "noColor": True},
    }


def gateway_objects(port: int) -> list[dict]:
    """The GatewayClass Traefik controls and the Gateway pools attach to
    (``spec.traffic.parentRefs: [{name: dev, namespace: diffusion-gateway}]``), admitting
    HTTPRoutes from every namespace."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": GATEWAY_CLASS},
         "spec": {"controllerName": TRAEFIK_CONTROLLER}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
         "spec": {"gatewayClassName": GATEWAY_CLASS,
                  "listeners": [{"name": "http", "protocol": "HTTP", "port": port,
                                 "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
    ]


# --- the real worker node ----------------------------------------------------------------------
# Pod addresses of the real node: a bridge on this machine holds the gateway, so pod IPs are
# reachable from here (curl, the ClusterIP through kube-proxy) and from nowhere else.
NODE_BRIDGE = "dfn0"
NODE_POD_SUBNET = "10.89.0.0/24"
NODE_BRIDGE_IP = "10.89.0.1"
NODE_CNI_NETWORK = "diffusion-node"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def containerd_config(*, root: Path, state: Path, socket: Path, runc: Path, runc_root: Path, cni_bin_dir: Path,
                      cni_conf_dir: Path) -> str:
    """containerd 1.6's config (version 2): every path under the node's own directories, the
    CRI streaming server (port-forward, exec) on 127.0.0.1, cgroupfs (cgroup v1, no systemd),
    and the pause image we build locally, since no registry is reachable."""
    return f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  restrict_oom_score_adj = true
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1
"""


def cni_config(ipam_dir: Path) -> dict:
    """A bridge network with host-local addresses; no masquerade and no port mapping, so the
    plugins add no iptables rules (nothing to clean up but the bridge and its veths)."""
    return {
        "cniVersion": "1.0.0",
        "name": NODE_CNI_NETWORK,
        "plugins": [{
            "type": "bridge", "bridge": NODE_BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                     "ranges": [[{"subnet": NODE_POD_SUBNET, "gateway": NODE_BRIDGE_IP}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    }


def kubelet_config(*, port: int, healthz_port: int, runtime_socket: Path, ca_cert: Path, root_dir: Path,
                   taints: list[dict], max_pods: int = 32) -> dict:
    """KubeletConfiguration for the real node: loopback listeners, x509 authentication against
    the cluster CA (only the apiserver's client certificate reaches it), cgroup v1 by opt-in,
    no image garbage collection (our images cannot be pulled back) and eviction thresholds
    that a developer's nearly-full disk does not trip."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(ca_cert)}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "clusterDomain": "cluster.local",
        "registerWithTaints": taints,
        "maxPods": max_pods,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusReportFrequency": "30s",
        "shutdownGracePeriod": "0s",
        "localStorageCapacityIsolation": True,
        "resolvConf": "/etc/resolv.conf",
        "volumePluginDir": str(root_dir / "volume-plugins"),
    }
