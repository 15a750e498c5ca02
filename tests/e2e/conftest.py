"""Fixtures for the end-to-end rollout tests; the machinery they are built from lives in
``tests/support`` (:mod:`~tests.support.rollouts` for what a scenario is, the load, Prometheus
and operator modules it uses).

Only fixtures here: nothing imports this module. Session-scoped: the node cluster and the tiny
model on its disk (tests/conftest.py). Per test: the operator (:func:`operator_ctl`) and one
:class:`~tests.support.rollouts.Scenario` in its own namespace, whose pods run on the real node.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion_operator.devcluster import images
from tests.conftest import make_namespace, operator_kubeconfig_for
from tests.support.operator_control import OperatorControl
from tests.support.rollouts import Scenario


def _running_session_operator(request):
    """The session-scoped ``node_operator`` of tests/node, if an earlier test started it."""
    try:
        defs = request._fixturemanager.getfixturedefs("node_operator", request.node) or ()
    except Exception:  # noqa: BLE001 - pytest internals; without them we cannot check
        return None
    for fd in defs:
        cached = getattr(fd, "cached_result", None)
        value = cached[0] if cached else None
        if value is not None and getattr(value, "running", False):
            return value
    return None


@pytest.fixture(scope="session")
def e2e_operator_kubeconfig(node_cluster, tmp_path_factory) -> Path:
    return operator_kubeconfig_for(node_cluster, tmp_path_factory.mktemp("e2e-operator"))


@pytest.fixture
def operator_ctl(e2e_operator_kubeconfig, request):
    """The operator for one test, which the test may stop and start again: file:// sources and
    fault injection allowed, pods from our sampler image."""
    session_op = _running_session_operator(request)
    if session_op is not None:
        session_op.stop()  # two operators on one cluster would fight over every pool
    ctl = OperatorControl(e2e_operator_kubeconfig, sampler_image=images.SAMPLER_IMAGE)
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop()
        if session_op is not None:
            session_op.start()


@pytest.fixture
def e2e_ns(node_cluster, request):
    yield from make_namespace(node_cluster, request, prefix="e")


@pytest.fixture
def scenario(node_cluster, e2e_ns, dev_model):
    s = Scenario(node_cluster, e2e_ns, f"file://{dev_model}")
    try:
        yield s
    finally:
        s.close()
