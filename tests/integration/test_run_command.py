"""`diffusion-operator run` as a deployed operator runs: liveness, metrics, scoped to namespaces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_operator.devcluster.cluster import free_port
from tests.support.http import http_get as _get
from tests.support.polling import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_run_serves_liveness_and_metrics(cluster, namespace, operator_kubeconfig, tmp_path):
    live, prom = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(operator_kubeconfig)}
    # Handed to the operator process as its stdout for the whole test, not a scoped block.
    log = open(tmp_path / "operator.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_operator.cli", "run", "--standalone",
                             "--allow-file-sources", "-n", namespace, "--liveness-port", str(live),
                             "--metrics-port", str(prom)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def live_or_exited():
            assert proc.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
            return _get(f"http://127.0.0.1:{live}/healthz")[0] == 200
        wait_for(live_or_exited, timeout=60, what="/healthz 200")
        cluster.kubectl("-n", namespace, "apply", "-f", str(REPO / "examples/dev"))
        body = wait_for(lambda: (b := _get(f"http://127.0.0.1:{prom}/metrics")[1])
                        and 'diffusion_operator_pools{phase="Ready"} 1.0' in b and b,
                        timeout=120, what="the pool counted Ready in the operator's metrics")
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
