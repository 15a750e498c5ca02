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


def simulated_node(name: str, *, gpus: int = 0, gpu_resource: str = "nvidia.com/gpu",
                   gpu_product: str = DEFAULT_GPU_PRODUCT, cpu: str = "64", memory: str = "512Gi") -> dict:
    """A Node object that kwok manages (by annotation) and the real scheduler places pods on.

    GPU nodes carry the GPU resource, the product label that NVIDIA's GPU feature discovery
    sets, and the conventional ``nvidia.com/gpu:NoSchedule`` taint, so only pods that
    tolerate it land there. CPU-only nodes (``gpus=0``) are untainted.
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
                  gpu_product: str = DEFAULT_GPU_PRODUCT) -> list[dict]:
    nodes = [simulated_node(f"gpu-node-{i}", gpus=gpus_per_node, gpu_product=gpu_product) for i in range(gpu_nodes)]
    nodes += [simulated_node(f"cpu-node-{i}") for i in range(cpu_nodes)]
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


def prometheus_config(scrape_interval: str, targets_dir: Path, self_port: int) -> dict:
    """Prometheus scrapes itself and every target file dropped into ``targets_dir``.

    File-based discovery is how local processes (samplers, the operator) join scraping
    without a restart: write ``<name>.json`` with ``[{"targets": ["127.0.0.1:PORT"],
    "labels": {...}}]`` and it is picked up within a second or two.
    """
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self_port}"]}]},
            {"job_name": "local",
             "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "1s"}]},
        ],
    }
