"""``dev down`` leaves nothing of the real node behind: no process, mount, network namespace,
veth, bridge or iptables chain. Runs last in the tier (pytest orders files by name): it stops
the session's node cluster."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from diffusion_operator.devcluster import node

pytestmark = pytest.mark.node


def _cli(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffusion_operator.cli", "dev", *args, "--name", cluster.config.name,
                           "--state-dir", str(cluster.dir)], capture_output=True, text=True, timeout=600)


def test_dev_status_shows_the_node_and_dev_up_is_idempotent(node_cluster):
    status = _cli(node_cluster, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    gpus = node_cluster.config.node_gpus
    assert re.search(rf"node {node.NODE_NAME}\s+Ready; nvidia.com/gpu {gpus}; kubelet v1\.36\.3, containerd://1\.6",
                     status.stdout), status.stdout
    for name in ("containerd", "kubelet", "kube-proxy"):
        assert re.search(rf"{name}\s+pid \d+\s+healthy", status.stdout), status.stdout
    pid = node_cluster.state()["components"]["kubelet"]["pid"]
    again = _cli(node_cluster, "up")
    assert again.returncode == 0 and "already running" in again.stderr
    assert node_cluster.state()["components"]["kubelet"]["pid"] == pid


def test_down_removes_every_process_mount_link_netns_and_chain(node_cluster):
    tools = node_cluster.node_tools()
    assert tools is not None
    during = node_cluster.node_footprint(tools)
    assert during.processes and during.links and during.iptables_chains, during  # the check can see a node
    assert any("KUBE-SERVICES" in c for c in during.iptables_chains)
    stopped = node_cluster.down()
    assert {"containerd", "kubelet", "kube-proxy"} <= set(stopped)
    after = node_cluster.node_footprint(tools)
    assert after == node.Footprint((), (), (), (), ()), after
    assert not node_cluster.node_paths.base.exists()
