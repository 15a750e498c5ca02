"""Runs the installed ``kubectl-diffusion`` plugin against a local cluster, as an SRE would
(the integration tests on kwok pools and the e2e SRE-action scenario on real pods)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLUGIN = Path(sys.executable).with_name("kubectl-diffusion")


def run_plugin(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    proc = subprocess.run([str(PLUGIN), *args], capture_output=True, text=True, env=env, timeout=60)
    if check:
        assert proc.returncode == 0, f"kubectl-diffusion {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc
