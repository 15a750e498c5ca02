"""Fixtures for the end-to-end rollout tests; the machinery they are built from lives in
``tests/support`` (:mod:`~tests.support.rollouts` for what a scenario is, and the sampler,
Prometheus, load and operator modules it uses).

Only fixtures here: nothing imports this module. Session-scoped: the tiny model, the predicted
revisions and the samplers (all loaded at session start, in parallel). Per test: the operator
(:func:`operator_ctl`) and one :class:`~tests.support.rollouts.Scenario` in its own namespace.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.operator_control import OperatorControl
from tests.support.rollouts import FLAVOURS, POOL, Scenario, predict_revisions
from tests.support.samplers import build_tiny_model, start_samplers


def _running_session_operator(request):
    """The session-scoped ``operator`` of tests/conftest.py, if an earlier test started it."""
    try:
        defs = request._fixturemanager.getfixturedefs("operator", request.node) or ()
    except Exception:  # noqa: BLE001 - pytest internals; without them we cannot check
        return None
    for fd in defs:
        cached = getattr(fd, "cached_result", None)
        value = cached[0] if cached else None
        if value is not None and getattr(value, "running", False):
            return value
    return None


@pytest.fixture
def operator_ctl(operator_kubeconfig, request):
    """The operator for one test, which the test may stop and start again."""
    session_op = _running_session_operator(request)
    if session_op is not None:
        session_op.stop()  # two operators on one cluster would fight over every pool
    ctl = OperatorControl(operator_kubeconfig)
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop()
        if session_op is not None:
            session_op.start()


@pytest.fixture(scope="session")
def e2e_tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("e2e-model") / "tiny-sd")


@pytest.fixture(scope="session")
def revisions(cluster, e2e_tiny_model) -> tuple[str, str]:
    ns = f"e2e-predict-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        return predict_revisions(cluster, ns, e2e_tiny_model)
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="session")
def samplers(e2e_tiny_model, revisions, tmp_path_factory):
    """Every sampler flavour (``tests.support.rollouts.FLAVOURS``), Ready, by name."""
    log_dir = tmp_path_factory.mktemp("e2e-sampler-logs")
    by_role = dict(zip(("stable", "canary"), revisions, strict=True))
    specs = {name: (POOL, by_role[role], env) for name, (role, env) in FLAVOURS.items()}
    procs = start_samplers(e2e_tiny_model, log_dir, specs)
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture
def scenario(cluster, namespace, revisions, e2e_tiny_model):
    s = Scenario(cluster, namespace, revisions, e2e_tiny_model)
    try:
        yield s
    finally:
        s.close()
