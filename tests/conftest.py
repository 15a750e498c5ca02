"""Shared fixtures: the real local clusters (session-scoped) and a namespace per test.

Both clusters are the same code as ``diffusion-operator dev up``, started in temporary state
directories on free ports, so they never collide with a developer's running ``dev`` cluster:

- ``cluster``: kwok's simulated GPU nodes only (pods become Ready without running), for the
  integration tier's many pools;
- ``node_cluster``: the real node (containerd, kubelet, kube-proxy) running our images, Traefik
  as the Gateway API data plane and Prometheus discovering pods, for the e2e and node tiers.
  One per machine (the node owns a bridge and iptables chains), shared by both tiers;
  tests/node/test_zz_down.py stops it last.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import yaml

from diffusion_operator.devcluster import images, toolchain
from diffusion_operator.devcluster.cluster import ClusterConfig, LocalCluster
from diffusion_operator.devcluster.first_run import DEV_MODEL_DIR, ensure_dev_model
from tests.support.operator_control import OperatorProcess

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tools() -> toolchain.Toolchain:
    return toolchain.ensure_toolchain()


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return toolchain.ensure_prometheus()[0]


@pytest.fixture(scope="session")
def promtool_bin() -> Path:
    return toolchain.ensure_prometheus()[1]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, tools):
    state = tmp_path_factory.mktemp("cluster")
    c = LocalCluster(ClusterConfig(name=f"test-{os.getpid()}", state_dir=state, scrape_interval="1s",
                                   project_crds=REPO / "crds"), tools)
    c.up(progress=lambda m: print(f"[cluster] {m}", flush=True))
    try:
        yield c
    finally:
        c.down()


def make_namespace(cluster: LocalCluster, request, prefix: str = "t"):
    """A namespace named after the test, deleted (without waiting) afterwards."""
    name = f"{prefix}-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(cluster, request):
    yield from make_namespace(cluster, request)


OPERATOR_NS = "diffusion-system"


def operator_kubeconfig_for(cluster: LocalCluster, directory: Path) -> Path:
    """A kubeconfig for a ServiceAccount bound to exactly the chart's RBAC rules: the operator
    under test runs with it, not as cluster admin, so a missing permission fails a test."""
    rules = yaml.safe_load((REPO / "charts/diffusion-operator/files/rbac-rules.yaml").read_text())
    objs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "diffusion-operator", "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "diffusion-operator-test"},
         "rules": rules["framework"] + rules["application"]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "diffusion-operator-test"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "diffusion-operator-test"},
         "subjects": [{"kind": "ServiceAccount", "name": "diffusion-operator", "namespace": OPERATOR_NS}]},
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))
    token = cluster.kubectl("-n", OPERATOR_NS, "create", "token", "diffusion-operator", "--duration=6h").stdout.strip()
    return cluster.token_kubeconfig(token, directory / "kubeconfig", OPERATOR_NS)


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster, tmp_path_factory) -> Path:
    return operator_kubeconfig_for(cluster, tmp_path_factory.mktemp("operator"))


@pytest.fixture(scope="session")
def operator(operator_kubeconfig):
    op = OperatorProcess(operator_kubeconfig, allow_file_sources=True).start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture(scope="session")
def node_images() -> list[images.BuiltImage]:
    """Built by ``diffusion-operator dev images`` (``make test`` runs it first: the cold build
    outlasts any test timeout); here only taken from the cache."""
    return images.ensure_images(s3=True)


#: GPUs the real node advertises in tests: a rollout's two revisions, plus the pods of the
#: previous test's namespace while they terminate.
NODE_GPUS = 4


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory, tools, node_images):
    state = tmp_path_factory.mktemp("node-cluster")
    archives = tuple(img.archive for img in node_images if img.name != images.PAUSE_IMAGE)
    c = LocalCluster(ClusterConfig(name=f"node-{os.getpid()}", state_dir=state, gpu_nodes=0, cpu_nodes=0,
                                   real_nodes=1, node_gpus=NODE_GPUS, gateway=True, scrape_interval="1s",
                                   project_crds=REPO / "crds", node_images=archives), tools)
    c.up(progress=lambda m: print(f"[node-cluster] {m}", flush=True))
    try:
        yield c
    finally:
        c.down()


@pytest.fixture(scope="session")
def dev_model() -> str:
    """examples/dev's model, where its file:// source points (what `dev up` writes)."""
    ensure_dev_model(print)
    return str(DEV_MODEL_DIR)
