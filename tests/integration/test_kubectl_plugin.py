"""``kubectl-diffusion`` against the real API server: actions land as the annotation, status
prints without an operator running (empty status fields print as ``-``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.kubectl_plugin import PLUGIN, run_plugin

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
POOLS = "inferencepools.diffusion.serving.dev"
ANNOTATION = "diffusion.serving.dev/action"


def annotation(cluster, namespace: str, name: str) -> str | None:
    out = cluster.kubectl("get", POOLS, name, "-n", namespace, "-o", "json").stdout
    return (json.loads(out)["metadata"].get("annotations") or {}).get(ANNOTATION)


@pytest.fixture
def pool(cluster, namespace) -> str:
    for f in ("diffusionmodel-minimal.yaml", "inferencepool-minimal.yaml"):
        cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / f))
    return "sd-turbo"


def test_plugin_is_installed():
    assert PLUGIN.exists(), f"{PLUGIN} missing: pip install -e . declares the console script"


def test_abort_then_promote_set_the_action_annotation(cluster, namespace, pool):
    out = run_plugin(cluster, "abort", pool, "-n", namespace).stdout
    first = annotation(cluster, namespace, pool)
    assert first and first.startswith("abort@"), first
    assert first in out

    run_plugin(cluster, "promote", pool, "-n", namespace)
    second = annotation(cluster, namespace, pool)
    assert second.startswith("promote@") and second != first
    # a second request of the same verb is a new id, so the operator applies it again
    run_plugin(cluster, "promote", pool, "-n", namespace)
    third = annotation(cluster, namespace, pool)
    assert third.startswith("promote@") and third != second

    # the spec Git owns is untouched
    spec = json.loads(cluster.kubectl("get", POOLS, pool, "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["modelRef"] == {"name": "sd-turbo"}


def test_status_prints_name_and_phase_without_an_operator(cluster, namespace, pool):
    out = run_plugin(cluster, "status", pool, "-n", namespace).stdout
    assert f"InferencePool {namespace}/{pool}" in out
    assert "Phase:" in out
    assert "Stable:        -" in out  # nothing reconciled it yet: dashes, no crash


def test_status_reads_what_the_status_subresource_holds(cluster, namespace, pool):
    status = {"status": {"phase": "Progressing", "rollout": {
        "phase": "Progressing", "stableRevision": "aaa", "canaryRevision": "bbb", "canaryWeight": 10,
        "currentStep": 0,
        "lastAnalysis": {"at": "2025-01-01T00:00:00Z", "outcome": "pass", "reason": "BurnRateWithinBudget",
                         "burnRates": [{"sli": "availability", "factor": 14.4, "longWindowSeconds": 720,
                                        "shortWindowSeconds": 60, "longBurnRate": 0.5, "shortBurnRate": 0.25,
                                        "requests": 100, "state": "ok"}]}}}}
    cluster.kubectl("patch", POOLS, pool, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))
    out = run_plugin(cluster, "status", pool, "-n", namespace).stdout
    assert "Phase:         Progressing" in out
    assert "Canary:        bbb   weight 10%" in out and "Stable:        aaa   weight 90%" in out
    assert "step 1/4" in out  # the CRD's default steps
    row = next(line for line in out.splitlines() if line.strip().startswith("availability"))
    assert row.split()[:5] == ["availability", "12m/1m", "0.50", "0.25", "14.4x"]


def test_default_namespace_comes_from_the_context(cluster, namespace, pool, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(Path(cluster.kubeconfig).read_text())
    cluster.kubectl("config", "set-context", "--current", f"--namespace={namespace}", kubeconfig=kubeconfig)
    proc = subprocess.run([str(PLUGIN), "--kubeconfig", str(kubeconfig), "pause", pool],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    assert annotation(cluster, namespace, pool).startswith("pause@")


def test_missing_pool_is_a_clear_error(cluster, namespace):
    proc = run_plugin(cluster, "abort", "nope", "-n", namespace, check=False)
    assert proc.returncode == 1
    assert 'inferencepools.diffusion.serving.dev "nope" not found' in proc.stderr
    assert "Traceback" not in proc.stderr
