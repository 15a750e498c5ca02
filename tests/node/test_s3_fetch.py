"""The fetch-model init container against a real S3-compatible server on this machine.

The server is Versity's S3 gateway (``versitygw``, built from the Go module proxy) running as a
pod on the real node, serving a directory through the S3 API with SigV4 authentication; the
model is laid out as objects under ``s3://models/tiny/``. The DiffusionModel names the
credentials Secret and the server's Service as its endpoint, as a user with MinIO would.

- the right key: the init container downloads the model into the cache volume, the pool turns
  Ready, and an image comes back;
- a wrong key: the pool says ``ModelFetchFailed`` with the server's own error, rather than
  sitting at 0/1 ready while the init container restarts.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pytest
import yaml

from diffusion_operator.devcluster import images
from tests.node.test_real_node import PortForward, _generate, _json, _png_of, _pool_ready
from tests.support.polling import wait_for

pytestmark = pytest.mark.node

ACCESS, SECRET = "diffusion-test", "s3cr3t-" + uuid.uuid4().hex[:12]


@pytest.fixture
def s3_endpoint(node_cluster, node_ns, dev_model):
    """The S3 server in the test's namespace, its bucket ``models`` holding the tiny model."""
    root = node_cluster.dir / f"s3-{node_ns}"
    shutil.copytree(dev_model, root / "models" / "tiny")
    for path in [root, *root.rglob("*")]:
        os.chown(path, 10001, 10001)
    objs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-root"},
         "stringData": {"ROOT_ACCESS_KEY": ACCESS, "ROOT_SECRET_KEY": SECRET}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "s3"},
         "spec": {"selector": {"matchLabels": {"app": "s3"}}, "template": {
             "metadata": {"labels": {"app": "s3"}},
             "spec": {"automountServiceAccountToken": False,
                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                      "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                          "seccompProfile": {"type": "RuntimeDefault"}},
                      "containers": [{
                          "name": "versitygw", "image": images.S3_IMAGE, "imagePullPolicy": "Never",
                          "args": ["--port", ":7070", "posix", "/data"],
                          "envFrom": [{"secretRef": {"name": "s3-root"}}],
                          "ports": [{"name": "s3", "containerPort": 7070}],
                          "readinessProbe": {"tcpSocket": {"port": "s3"}, "periodSeconds": 1},
                          "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                          "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                              "capabilities": {"drop": ["ALL"]}}}],
                      "volumes": [{"name": "data", "hostPath": {"path": str(root), "type": "Directory"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s3"},
         "spec": {"selector": {"app": "s3"}, "ports": [{"name": "s3", "port": 7070, "targetPort": "s3"}]}},
    ]
    node_cluster.kubectl("-n", node_ns, "apply", "-f", "-", input=yaml.safe_dump_all(objs))
    node_cluster.kubectl("-n", node_ns, "rollout", "status", "deployment/s3", "--timeout=120s", timeout=150)
    ip = _json(node_cluster, "-n", node_ns, "get", "service", "s3")["spec"]["clusterIP"]
    try:
        yield f"http://{ip}:7070"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _model_and_pool(endpoint: str, secret: str) -> str:
    return yaml.safe_dump_all([
        {"apiVersion": "diffusion.serving.dev/v1alpha1", "kind": "DiffusionModel", "metadata": {"name": "tiny-s3"},
         "spec": {"source": {"uri": "s3://models/tiny", "endpoint": endpoint, "region": "us-east-1",
                             "credentialsSecretRef": {"name": secret}},
                  "precision": "fp32", "defaults": {"steps": 2, "width": 64, "height": 64}}},
        {"apiVersion": "diffusion.serving.dev/v1alpha1", "kind": "InferencePool", "metadata": {"name": "tiny-s3"},
         "spec": {"modelRef": {"name": "tiny-s3"}, "replicas": 1, "gpu": {"count": 1},
                  "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}}},
    ])


def _credentials(name: str, secret_key: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": secret_key}}


def test_the_model_is_fetched_from_s3_with_the_named_credentials(node_cluster, node_operator, node_ns, s3_endpoint):
    node_cluster.kubectl("-n", node_ns, "apply", "-f", "-", input=yaml.safe_dump(_credentials("s3-creds", SECRET)))
    node_cluster.kubectl("-n", node_ns, "apply", "-f", "-", input=_model_and_pool(s3_endpoint, "s3-creds"))
    wait_for(lambda: _pool_ready(node_cluster, node_ns, "tiny-s3"), timeout=300, interval=2,
             what="the pool Ready with its model fetched from S3",
             detail=lambda: node_cluster.kubectl("-n", node_ns, "get", "pods", "-o", "wide", check=False).stdout)
    pod = _json(node_cluster, "-n", node_ns, "get", "pods", "-l", "diffusion.serving.dev/pool=tiny-s3")["items"][0]
    fetch = next(c for c in pod["status"]["initContainerStatuses"] if c["name"] == "fetch-model")
    assert fetch["state"]["terminated"]["exitCode"] == 0 and fetch["restartCount"] == 0, fetch
    logs = node_cluster.kubectl("-n", node_ns, "logs", pod["metadata"]["name"], "-c", "fetch-model").stdout
    assert '"model fetched"' in logs and SECRET not in logs
    forward = PortForward(node_cluster, node_ns, "service/tiny-s3", 80)
    try:
        resp = _generate(forward.url)
        assert resp.status_code == 200, resp.text
        assert _png_of(resp.json()).size == (64, 64)
    finally:
        forward.close()


def test_a_wrong_key_is_named_on_the_pool(node_cluster, node_operator, node_ns, s3_endpoint):
    node_cluster.kubectl("-n", node_ns, "apply", "-f", "-", input=yaml.safe_dump(_credentials("s3-bad", "wrong")))
    node_cluster.kubectl("-n", node_ns, "apply", "-f", "-", input=_model_and_pool(s3_endpoint, "s3-bad"))

    def fetch_failed():
        st = _json(node_cluster, "-n", node_ns, "get", "inferencepool", "tiny-s3").get("status") or {}
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "ModelFetchFailed" else None

    ready = wait_for(fetch_failed, timeout=120, interval=1, what="Ready=False with reason ModelFetchFailed")
    assert ready["status"] == "False"
    assert "SignatureDoesNotMatch" in ready["message"] or "InvalidAccessKeyId" in ready["message"], ready
    assert "wrong" not in ready["message"]  # the Secret's value never shows
