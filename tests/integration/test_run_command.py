"""`diffusion-operator run` as a deployed operator runs: liveness, metrics, scoped to namespaces."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from diffusion_operator.devcluster.cluster import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except OSError as exc:
        return 0, str(exc)


def test_run_serves_liveness_and_metrics(cluster, namespace, operator_kubeconfig, tmp_path):
    live, prom = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(operator_kubeconfig)}
    log = open(tmp_path / "operator.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_operator.cli", "run", "--standalone",
                             "--allow-file-sources", "-n", namespace, "--liveness-port", str(live),
                             "--metrics-port", str(prom)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _get(f"http://127.0.0.1:{live}/healthz")[0] != 200:
            assert proc.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
            time.sleep(0.5)
        assert _get(f"http://127.0.0.1:{live}/healthz")[0] == 200
        cluster.kubectl("-n", namespace, "apply", "-f", str(REPO / "examples/dev"))
        body = ""
        while time.monotonic() < deadline + 60:
            body = _get(f"http://127.0.0.1:{prom}/metrics")[1]
            if 'diffusion_operator_pools{phase="Ready"} 1.0' in body:
                break
            time.sleep(0.5)
        assert 'diffusion_operator_pools{phase="Ready"} 1.0' in body
        assert 'diffusion_operator_reconciles_total{kind="InferencePool",result="ok"}' in body
        assert "diffusion_operator_reconcile_duration_seconds_bucket" in body
        # every line of its log is JSON (structured, greppable)
        lines = [ln for ln in (tmp_path / "operator.log").read_text().splitlines() if ln.strip()]
        import json

        assert lines and all(json.loads(ln) for ln in lines)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
