"""Two real ``diffusion-operator run`` processes on one cluster: one leads, one waits, and the
Lease moves when the leader dies (SIGKILL: after the lease duration) or stops (SIGTERM: at once,
it releases the Lease). Both run as the chart's ServiceAccount, in the test's namespace, with
the production lease timings (15 s / 10 s / 2 s), so the takeover times printed are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffusion_operator.devcluster.cluster import free_port
from tests.support.http import http_get as _get
from tests.support.polling import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LEASE = "diffusion-operator"
LEASE_DURATION_S = 15
RETRY_PERIOD_S = 2


class Operator:
    """One ``diffusion-operator run`` subprocess with its own ports and log."""

    def __init__(self, identity: str, namespace: str, kubeconfig: Path, logdir: Path):
        self.identity, self.namespace, self.kubeconfig = identity, namespace, kubeconfig
        self.log_path = logdir / f"{identity}-{time.monotonic_ns()}.log"
        self.live, self.prom = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Operator:
        self._log = open(self.log_path, "w")  # noqa: SIM115 (open for the process's lifetime; closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "diffusion_operator.cli", "run", "--allow-file-sources", "-n", self.namespace,
             "--lease-namespace", self.namespace, "--lease-name", LEASE, "--identity", self.identity,
             "--liveness-port", str(self.live), "--metrics-port", str(self.prom)],
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)}, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        return self

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is None

    def healthz(self) -> int:
        assert self.alive(), f"{self.identity} exited with {self.proc.returncode}:\n{self.output[-3000:]}"
        return _get(f"http://127.0.0.1:{self.live}/healthz")[0]

    def reconciles(self) -> float:
        """diffusion_operator_reconciles_total, all labels: 0 on a replica that never led."""
        status, body = _get(f"http://127.0.0.1:{self.prom}/metrics")
        assert status == 200, body
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith("diffusion_operator_reconciles_total{"))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self._log.close()


def lease(cluster, ns) -> dict:
    res = cluster.kubectl("-n", ns, "get", "lease", LEASE, "-o", "json", check=False)
    return json.loads(res.stdout)["spec"] if res.returncode == 0 else {}


def holder(cluster, ns) -> str | None:
    return lease(cluster, ns).get("holderIdentity")


def pool_status(cluster, ns) -> dict:
    res = cluster.kubectl("-n", ns, "get", "inferencepool", "tiny", "-o", "json", check=False)
    return (json.loads(res.stdout).get("status") or {}) if res.returncode == 0 else {}


def set_steps(cluster, ns, steps: int) -> None:
    cluster.kubectl("-n", ns, "patch", "diffusionmodel", "tiny", "--type=merge",
                    "-p", json.dumps({"spec": {"defaults": {"steps": steps}}}))


def wait_new_revision(cluster, ns, old: str, timeout: float, what: str) -> str:
    return wait_for(lambda: (r := pool_status(cluster, ns).get("desiredRevision")) and r != old and r,
                    timeout=timeout, interval=0.25, what=what)


def test_one_leader_and_failover(cluster, namespace, operator_kubeconfig, tmp_path):
    ops: list[Operator] = []

    def start(identity: str) -> Operator:
        op = Operator(identity, namespace, operator_kubeconfig, tmp_path).start()
        ops.append(op)
        return op

    def detail() -> str:
        return "\n".join(f"--- {op.identity} ---\n{op.output[-2500:]}" for op in ops)

    measured: dict[str, float] = {}
    try:
        # op-a first, so it is the leader; then op-b, which must wait as a standby.
        a = start("op-a")
        wait_for(lambda: a.healthz() == 200 and holder(cluster, namespace) == "op-a", timeout=90,
                 what="op-a leading", detail=detail)
        b = start("op-b")
        wait_for(lambda: b.healthz() == 200, timeout=60, what="the standby's /healthz", detail=detail)
        wait_for(lambda: "waiting as standby" in b.output, timeout=30, what="op-b waiting as standby", detail=detail)
        assert holder(cluster, namespace) == "op-a"

        cluster.kubectl("-n", namespace, "apply", "-f", str(REPO / "examples/dev"))
        wait_for(lambda: pool_status(cluster, namespace).get("phase") == "Ready", timeout=120,
                 what="pool Ready", detail=detail)
        # Exactly one reconciles: the standby has not handled a single event, and opened no
        # watches (Kopf never started in it: none of its log lines is Kopf's).
        assert a.reconciles() > 0
        assert b.reconciles() == 0
        assert b.healthz() == 200
        assert not [ln for ln in b.output.splitlines() if '"logger": "kopf' in ln]

        # A change made while both run is reconciled (by the leader).
        rev0 = pool_status(cluster, namespace)["desiredRevision"]
        set_steps(cluster, namespace, 5)
        rev1 = wait_new_revision(cluster, namespace, rev0, 60, "a model change reconciled with two replicas")
        assert b.reconciles() == 0

        # SIGKILL the leader; change the model at once: the standby must take the Lease within
        # the lease duration plus a few retry periods, and reconcile the change.
        t_kill = time.monotonic()
        a.signal(signal.SIGKILL)
        set_steps(cluster, namespace, 6)
        wait_for(lambda: holder(cluster, namespace) == "op-b",
                 timeout=LEASE_DURATION_S + 4 * RETRY_PERIOD_S + 5, interval=0.2,
                 what="op-b to take the Lease over after SIGKILL", detail=detail)
        measured["sigkill_lease_s"] = time.monotonic() - t_kill
        rev2 = wait_new_revision(cluster, namespace, rev1, 60, "the change reconciled by the new leader")
        measured["sigkill_reconciled_s"] = time.monotonic() - t_kill
        assert b.reconciles() > 0
        assert "became leader" in b.output
        assert b.healthz() == 200  # Kopf's liveness endpoint now, on the port the standby freed
        assert lease(cluster, namespace)["leaseTransitions"] >= 1

        # op-a comes back as a standby; SIGTERM the leader: it releases the Lease, so op-a takes
        # over within a retry period or two, not a lease duration.
        a = start("op-a")
        wait_for(lambda: a.healthz() == 200 and "waiting as standby" in a.output, timeout=60,
                 what="op-a back as a standby", detail=detail)
        t_term = time.monotonic()
        b.signal(signal.SIGTERM)
        wait_for(lambda: holder(cluster, namespace) == "op-a", timeout=LEASE_DURATION_S, interval=0.2,
                 what="op-a to take the released Lease", detail=detail)
        measured["sigterm_lease_s"] = time.monotonic() - t_term
        assert b.proc.wait(timeout=30) == 0
        assert "released the lease" in b.output
        set_steps(cluster, namespace, 7)
        wait_new_revision(cluster, namespace, rev2, 60, "a change reconciled after the SIGTERM handover")
        measured["sigterm_reconciled_s"] = time.monotonic() - t_term
        assert measured["sigterm_lease_s"] < 3 * RETRY_PERIOD_S + 2, measured

        for op in ops:
            assert "Traceback" not in op.output, f"{op.identity}:\n{op.output[-5000:]}"
            assert "AssertionError" not in op.output, f"{op.identity}:\n{op.output[-5000:]}"
    finally:
        for op in ops:
            op.stop()
        print("failover timings (s): " + json.dumps({k: round(v, 1) for k, v in measured.items()}))
