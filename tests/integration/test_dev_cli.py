"""`diffusion-operator dev up|status|down` as a user runs it: idempotent, observable, leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffusion_operator.cli", *args], capture_output=True, text=True,
                          timeout=600)


def _listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_dev_up_status_down(tmp_path, tools):
    state_dir = tmp_path / "devcluster"
    common = ["--name", "clitest", "--state-dir", str(state_dir)]
    # kwok-only here; the real node's `dev up`/`status`/`down` are checked in tests/node
    up = _cli("dev", "up", *common, "--gpu-nodes", "1", "--gpus-per-node", "4", "--real-nodes", "0")
    assert up.returncode == 0, up.stderr
    assert f"export KUBECONFIG={state_dir / 'kubeconfig'}" in up.stdout
    assert "kubectl get nodes" in up.stdout
    try:
        state = json.loads((state_dir / "state.json").read_text())
        pids = {name: c["pid"] for name, c in state["components"].items()}
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                             "prometheus"}
        ports = set(state["ports"].values())
        assert ports <= _listening_ports()

        again = _cli("dev", "up", *common, "--real-nodes", "0")
        assert again.returncode == 0
        assert "already running" in again.stderr
        assert json.loads((state_dir / "state.json").read_text())["components"]["etcd"]["pid"] == pids["etcd"]

        status = _cli("dev", "status", *common)
        assert status.returncode == 0, status.stdout
        for name in pids:
            assert name in status.stdout
        assert "UNHEALTHY" not in status.stdout and "STOPPED" not in status.stdout

        nodes = subprocess.run([str(tools.kubectl), f"--kubeconfig={state_dir / 'kubeconfig'}", "get", "nodes",
                                "-o", "jsonpath={.items[*].status.allocatable.nvidia\\.com/gpu}"],
                               capture_output=True, text=True, check=True).stdout.split()
        assert nodes == ["4"]
    finally:
        down = _cli("dev", "down", *common)
    assert down.returncode == 0
    assert "kube-apiserver" in down.stdout
    assert not [n for n, p in pids.items() if _pid_alive(p)]
    assert not (ports & _listening_ports())
    after = _cli("dev", "status", *common)
    assert after.returncode == 1
    assert "not running" in after.stdout


def test_failed_start_names_component_and_shows_log(tmp_path):
    state_dir = tmp_path / "broken"
    state_dir.mkdir()
    # etcd refuses a data directory that is a file: the start must fail on etcd and say why.
    (state_dir / "etcd").write_text("not a directory")
    res = _cli("dev", "up", "--name", "broken", "--state-dir", str(state_dir), "--no-prometheus", "--real-nodes", "0")
    assert res.returncode == 1
    assert "etcd failed to start" in res.stderr
    assert "last lines of its log" in res.stderr
    state = json.loads((state_dir / "state.json").read_text())
    assert state["components"] == {}
