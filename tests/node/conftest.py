"""The real-node tier: a local cluster whose only node runs real containers (containerd, runc,
kubelet, kube-proxy on this machine), serving the images built from our Dockerfiles.

The session's ``node_cluster`` (tests/conftest.py), shared with tests/e2e, separate from the
kwok cluster of the integration tier (its pods are meant to stay simulated). It has no kwok
nodes, so every pod here runs for real.
"""

from __future__ import annotations

import pytest

from diffusion_operator.devcluster import images
from tests.conftest import make_namespace, operator_kubeconfig_for
from tests.support.operator_control import OperatorProcess


@pytest.fixture(scope="session")
def node_operator(node_cluster, tmp_path_factory):
    kubeconfig = operator_kubeconfig_for(node_cluster, tmp_path_factory.mktemp("node-operator"))
    op = OperatorProcess(kubeconfig, allow_file_sources=True, allow_fault_injection=True,
                         sampler_image=images.SAMPLER_IMAGE).start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def node_ns(node_cluster, request):
    yield from make_namespace(node_cluster, request, prefix="n")
