"""The images we ship, started by a real kubelet: examples/dev served end to end on the real node.

What a user of the local cluster sees: the node is Ready and advertises GPUs, examples/dev's
two replicas pass their real readiness probes, and an image generated through
``kubectl port-forward`` to the pool's Service, and through the Service's ClusterIP from this
machine (kube-proxy's iptables rules), is a PNG of the requested size. The sampler runs as
uid 10001 on a read-only root filesystem, as the Deployment the operator writes says.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import time

import pytest
import requests
from PIL import Image

from diffusion_operator.devcluster import node
from tests.conftest import REPO
from tests.support.polling import wait_for

pytestmark = pytest.mark.node


def _json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def _pool_ready(cluster, ns: str, name: str) -> dict | None:
    pool = _json(cluster, "-n", ns, "get", "inferencepool", name)
    st = pool.get("status") or {}
    return pool if st.get("phase") == "Ready" and st.get("readyReplicas", 0) >= pool["spec"]["replicas"] else None


def _png_of(body: dict) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert img.format == "PNG"
    return img


def _generate(url: str, size: str = "64x64") -> requests.Response:
    return requests.post(f"{url}/v1/images/generations", timeout=120,
                         json={"prompt": "a lighthouse at dusk", "size": size, "n": 1, "steps": 2})


class PortForward:
    """``kubectl port-forward`` to a Service on a free local port (127.0.0.1)."""

    def __init__(self, cluster, ns: str, target: str, remote: int):
        self.proc = subprocess.Popen(
            [str(cluster.tools.kubectl), f"--kubeconfig={cluster.kubeconfig}", "-n", ns, "port-forward",
             "--address=127.0.0.1", target, f":{remote}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"port-forward did not start: {line!r} {err}")
        self.url = f"http://127.0.0.1:{m.group(1)}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_node_is_ready_advertises_gpus_and_runs_containerd(node_cluster):
    obj = _json(node_cluster, "get", "node", node.NODE_NAME)
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    assert obj["status"]["allocatable"]["nvidia.com/gpu"] == str(node_cluster.config.node_gpus)
    assert obj["metadata"]["labels"]["nvidia.com/gpu.product"] == node_cluster.config.gpu_product
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in obj["spec"]["taints"]
    info = obj["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"].startswith("containerd://1.6"), info
    assert info["kubeletVersion"] == node_cluster.tools.k8s_version


def test_examples_dev_serve_pngs_through_port_forward_and_cluster_ip(node_cluster, node_operator, node_ns, dev_model):
    node_cluster.kubectl("-n", node_ns, "apply", "-f", str(REPO / "examples" / "dev"))
    started = time.monotonic()
    pool = wait_for(lambda: _pool_ready(node_cluster, node_ns, "tiny"), timeout=420, interval=2,
                    what="examples/dev's pool Ready with 2/2 real replicas",
                    detail=lambda: node_cluster.kubectl("-n", node_ns, "get", "pods", "-o", "wide",
                                                        check=False).stdout)
    print(f"examples/dev Ready {time.monotonic() - started:.0f} s after apply")
    pods = _json(node_cluster, "-n", node_ns, "get", "pods", "-l", "diffusion.serving.dev/pool=tiny")["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert len(running) == pool["spec"]["replicas"]
    for p in running:
        assert p["spec"]["nodeName"] == node.NODE_NAME
        assert p["status"]["podIP"].startswith("10.89.0.")
        sampler = next(c for c in p["status"]["containerStatuses"] if c["name"] == "sampler")
        assert sampler["ready"] and sampler["restartCount"] == 0, sampler

    name = running[0]["metadata"]["name"]
    ident = node_cluster.kubectl("-n", node_ns, "exec", name, "-c", "sampler", "--", "id", "-u").stdout.strip()
    assert ident == "10001"
    denied = node_cluster.kubectl("-n", node_ns, "exec", name, "-c", "sampler", "--", "touch", "/opt/x", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr + denied.stdout

    svc = _json(node_cluster, "-n", node_ns, "get", "service", "tiny")
    forward = PortForward(node_cluster, node_ns, "service/tiny", svc["spec"]["ports"][0]["port"])
    try:
        resp = _generate(forward.url, "64x48")
        assert resp.status_code == 200, resp.text
        assert _png_of(resp.json()).size == (64, 48)
    finally:
        forward.close()

    cluster_ip = svc["spec"]["clusterIP"]
    url = f"http://{cluster_ip}:{svc['spec']['ports'][0]['port']}"
    resp = wait_for(lambda: _try_generate(url), timeout=30, what=f"an answer through ClusterIP {cluster_ip}")
    assert resp.status_code == 200, resp.text
    assert _png_of(resp.json()).size == (64, 64)


def _try_generate(url: str) -> requests.Response | None:
    try:
        return _generate(url)
    except (TimeoutError, requests.ConnectionError):
        return None
