"""The real-node tier: a local cluster whose only node runs real containers (containerd, runc,
kubelet, kube-proxy on this machine), serving the images built from our Dockerfiles.

One session cluster, separate from the kwok cluster of the other tiers (their pods are meant
to stay simulated). It has no kwok nodes, so every pod here runs for real. The images are built
by ``diffusion-operator dev images`` (``make test`` runs it first: the cold build outlasts any
test timeout); the fixture only takes them from the cache.
"""

from __future__ import annotations

import os

import pytest

from diffusion_operator.cli import DEV_MODEL_DIR, _ensure_dev_model
from diffusion_operator.devcluster import images
from diffusion_operator.devcluster.cluster import ClusterConfig, LocalCluster
from tests.conftest import REPO, make_namespace, operator_kubeconfig_for
from tests.support.operator_control import OperatorProcess


@pytest.fixture(scope="session")
def node_images() -> list[images.BuiltImage]:
    return images.ensure_images(s3=True)


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory, tools, node_images):
    state = tmp_path_factory.mktemp("node-cluster")
    archives = tuple(img.archive for img in node_images if img.name != images.PAUSE_IMAGE)
    c = LocalCluster(ClusterConfig(name=f"node-{os.getpid()}", state_dir=state, gpu_nodes=0, cpu_nodes=0,
                                   real_nodes=1, scrape_interval="1s", project_crds=REPO / "crds",
                                   node_images=archives), tools)
    c.up(progress=lambda m: print(f"[node-cluster] {m}", flush=True))
    try:
        yield c
    finally:
        c.down()


@pytest.fixture(scope="session")
def dev_model() -> str:
    """examples/dev's model, where its file:// source points (what `dev up` writes)."""
    _ensure_dev_model()
    return str(DEV_MODEL_DIR)


@pytest.fixture(scope="session")
def node_operator(node_cluster, tmp_path_factory):
    kubeconfig = operator_kubeconfig_for(node_cluster, tmp_path_factory.mktemp("node-operator"))
    op = OperatorProcess(kubeconfig, allow_file_sources=True, sampler_image=images.SAMPLER_IMAGE).start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def node_ns(node_cluster, request):
    yield from make_namespace(node_cluster, request, prefix="n")
