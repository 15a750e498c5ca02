"""Shared fixtures: the real local cluster (session-scoped) and a namespace per test.

The cluster is the same code as ``diffusion-operator dev up``, started in a temporary state
directory on free ports, so it never collides with a developer's running ``dev`` cluster.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from diffusion_operator.devcluster import toolchain
from diffusion_operator.devcluster.cluster import ClusterConfig, LocalCluster

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tools() -> toolchain.Toolchain:
    return toolchain.ensure_toolchain()


@pytest.fixture(scope="session")
def prometheus_bin(tools) -> Path:
    return tools.prometheus


@pytest.fixture(scope="session")
def promtool_bin(tools) -> Path:
    return tools.promtool


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


@pytest.fixture
def namespace(cluster, request):
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
