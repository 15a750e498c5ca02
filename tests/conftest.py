"""Shared fixtures: the real local cluster (session-scoped) and a namespace per test.

The cluster is the same code as ``diffusion-operator dev up``, started in a temporary state
directory on free ports, so it never collides with a developer's running ``dev`` cluster.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from diffusion_operator.devcluster import toolchain
from diffusion_operator.devcluster.cluster import ClusterConfig, LocalCluster

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tools() -> toolchain.Toolchain:
    return toolchain.ensure_toolchain()


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return toolchain.ensure_prometheus()[0]


@pytest.fixture(scope="session")
def promtool_bin() -> Path:
    return toolchain.ensure_prometheus()[1]


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


OPERATOR_NS = "diffusion-system"


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster, tmp_path_factory) -> Path:
    """A kubeconfig for a ServiceAccount bound to exactly the chart's RBAC rules: the operator
    under test runs with it, not as cluster admin, so a missing permission fails a test."""
    rules = yaml.safe_load((REPO / "charts/diffusion-operator/files/rbac-rules.yaml").read_text())
    objs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "diffusion-operator", "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "diffusion-operator-test"},
         "rules": rules["framework"] + rules["application"]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "diffusion-operator-test"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "diffusion-operator-test"},
         "subjects": [{"kind": "ServiceAccount", "name": "diffusion-operator", "namespace": OPERATOR_NS}]},
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))
    token = cluster.kubectl("-n", OPERATOR_NS, "create", "token", "diffusion-operator", "--duration=6h").stdout.strip()
    return cluster.token_kubeconfig(token, tmp_path_factory.mktemp("operator") / "kubeconfig", OPERATOR_NS)


class OperatorProcess:
    """The operator in this process (Kopf on a thread), authenticated as its ServiceAccount.

    Tests pass settings, not environment: ``OperatorProcess(kubeconfig, allow_file_sources=True)``
    takes any field of ``diffusion_operator.settings.Settings``. No leader election and no
    listeners (the run-command and failover tests start real processes for those).
    """

    def __init__(self, kubeconfig: Path, **overrides):
        from diffusion_operator.settings import Settings

        self.settings = Settings(kubeconfig=str(kubeconfig), leader_election=False, liveness_port=0, metrics_port=0,
                                 tick_seconds=1).but(**overrides)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._log = io.StringIO()
        self._handler = logging.StreamHandler(self._log)
        self.error: BaseException | None = None

    def start(self):
        from diffusion_operator.main import JsonFormatter, run_kopf

        self._handler.setFormatter(JsonFormatter())
        logging.getLogger().addHandler(self._handler)
        logging.getLogger().setLevel(logging.INFO)
        ready = threading.Event()
        self._stop.clear()

        def run():
            try:
                run_kopf(self.settings, stop_flag=self._stop, ready_flag=ready)
            except BaseException as exc:  # noqa: BLE001 - reported by start() or stop()
                self.error = exc
                ready.set()

        self._thread = threading.Thread(target=run, name="operator", daemon=True)
        self._thread.start()
        assert ready.wait(60), "the operator did not start within 60 s"
        assert self.error is None, f"the operator failed to start: {self.error!r}"
        return self

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(60)
            assert not self._thread.is_alive(), "the operator did not stop within 60 s"
            self._thread = None
        logging.getLogger().removeHandler(self._handler)

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def output(self) -> str:
        return self._log.getvalue()


@pytest.fixture(scope="session")
def operator(operator_kubeconfig):
    op = OperatorProcess(operator_kubeconfig, allow_file_sources=True).start()
    try:
        yield op
    finally:
        op.stop()
