"""The operator as a user installs it: the chart, real Helm, and the operator image built from
our Dockerfile, running on the real node under the chart's ServiceAccount and restricted
securityContext. It reconciles examples/dev, answers /healthz and /metrics, survives
``helm upgrade`` and goes with ``helm uninstall``.

The local cluster's API server listens on 127.0.0.1 only, so the operator pod runs in the
node's network namespace (the chart's ``hostNetwork``) and is pointed at it through
``KUBERNETES_SERVICE_HOST``/``PORT``; everything else is the chart's defaults. This file runs
before the tier's in-process operator starts (files run by name), so never two operators act.
"""

from __future__ import annotations

import json
import os
import subprocess
from urllib.parse import urlparse

import pytest

from diffusion_operator.devcluster import images, toolchain
from tests.conftest import REPO
from tests.node.test_real_node import _json, _pool_ready
from tests.support.http import http_get
from tests.support.polling import wait_for

pytestmark = pytest.mark.node

CHART = REPO / "charts" / "diffusion-operator"
RELEASE, NS = "ops", "diffusion-helm"


def _helm(cluster, *args: str) -> subprocess.CompletedProcess:
    home = cluster.dir / "helm-home"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    proc = subprocess.run([str(toolchain.ensure_helm(progress=None)), *args], capture_output=True, text=True,
                          env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _values(cluster, tmp_path, **extra) -> str:
    server = urlparse(cluster.server)
    values = {
        "hostNetwork": True,
        "replicas": 1,
        "extraArgs": ["--allow-file-sources"],  # examples/dev reads its model from the node
        "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": server.hostname},
                     {"name": "KUBERNETES_SERVICE_PORT", "value": str(server.port)}],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "samplerImage": images.SAMPLER_IMAGE,
        **extra,
    }
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(values))
    return str(path)


def _operator_pod(cluster) -> dict | None:
    pods = _json(cluster, "-n", NS, "get", "pods", "-l", "app.kubernetes.io/name=diffusion-operator")["items"]
    ready = [p for p in pods if not p["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
    return ready[0] if len(ready) == 1 and len(pods) == 1 else None


def test_helm_install_upgrade_uninstall_runs_the_operator_image_on_the_real_node(node_cluster, node_ns, dev_model,
                                                                                   tmp_path):
    _helm(node_cluster, "install", RELEASE, str(CHART), "-n", NS, "--create-namespace", "-f",
          _values(node_cluster, tmp_path), "--wait", "--timeout=5m")
    try:
        pod = wait_for(lambda: _operator_pod(node_cluster), timeout=120, what="the operator pod Ready")
        spec = pod["spec"]
        assert spec["serviceAccountName"] == f"{RELEASE}-diffusion-operator"
        assert spec["containers"][0]["image"] == images.OPERATOR_IMAGE
        assert node_cluster.kubectl("-n", NS, "exec", pod["metadata"]["name"], "--", "id", "-u").stdout.strip() == \
            "65532"
        ip = pod["status"]["podIP"]  # the node's: the pod shares its network namespace
        # Ready (the chart's readiness probe) means Kopf answers /healthz
        assert http_get(f"http://{ip}:8080/healthz")[0] == 200
        status, metrics = http_get(f"http://{ip}:9090/metrics")
        assert status == 200 and "diffusion_operator_" in metrics

        node_cluster.kubectl("-n", node_ns, "apply", "-f", str(REPO / "examples" / "dev"))
        wait_for(lambda: _pool_ready(node_cluster, node_ns, "tiny"), timeout=300, interval=2,
                 what="examples/dev Ready, reconciled by the in-cluster operator")

        _helm(node_cluster, "upgrade", RELEASE, str(CHART), "-n", NS, "-f",
              _values(node_cluster, tmp_path, verbose=True), "--wait", "--timeout=5m")
        upgraded = wait_for(lambda: (p := _operator_pod(node_cluster)) and
                            p["metadata"]["name"] != pod["metadata"]["name"] and p,
                            timeout=180, what="the upgraded operator pod Ready")
        assert "--verbose" in upgraded["spec"]["containers"][0]["args"]
        # the new operator carries on: a change to the pool is reconciled
        node_cluster.kubectl("-n", node_ns, "scale", "inferencepool", "tiny", "--replicas=1")
        wait_for(lambda: _json(node_cluster, "-n", node_ns, "get", "deployment", "-l",
                               "diffusion.serving.dev/pool=tiny")["items"][0]["spec"]["replicas"] == 1,
                 timeout=60, what="the upgraded operator to scale the pool's Deployment")
    finally:
        node_cluster.kubectl("-n", node_ns, "delete", "inferencepool,diffusionmodel", "--all", "--wait=true",
                             "--timeout=120s", check=False)
        _helm(node_cluster, "uninstall", RELEASE, "-n", NS, "--wait", "--timeout=3m")
    left = node_cluster.kubectl("-n", NS, "get", "deployment,serviceaccount,role,rolebinding", "-l",
                                f"app.kubernetes.io/instance={RELEASE}", "-o", "name").stdout.strip()
    assert left == "", left
    assert node_cluster.kubectl("get", "clusterrole", f"{RELEASE}-diffusion-operator", check=False).returncode != 0
