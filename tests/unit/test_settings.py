"""The operator's settings: environment defaults and the `run` flags over them."""

from __future__ import annotations

import pytest

from diffusion_operator.cli import build_parser, settings_from_args
from diffusion_operator.settings import Settings
from tests.unit.fakekube import FakeKube

pytestmark = pytest.mark.unit


def test_fault_injection_is_off_by_default_and_set_by_env_or_flag(monkeypatch):
    monkeypatch.delenv("DIFFUSION_OPERATOR_ALLOW_FAULT_INJECTION", raising=False)
    assert Settings().allow_fault_injection is False
    assert Settings.from_env({}).allow_fault_injection is False
    assert Settings.from_env({"DIFFUSION_OPERATOR_ALLOW_FAULT_INJECTION": "true"}).allow_fault_injection is True
    assert Settings.from_env({"DIFFUSION_OPERATOR_ALLOW_FAULT_INJECTION": "0"}).allow_fault_injection is False
    assert settings_from_args(build_parser().parse_args(["run"])).allow_fault_injection is False
    flagged = settings_from_args(build_parser().parse_args(["run", "--allow-fault-injection"]))
    assert flagged.allow_fault_injection is True and flagged.allow_file_sources is False
    monkeypatch.setenv("DIFFUSION_OPERATOR_ALLOW_FAULT_INJECTION", "1")
    assert settings_from_args(build_parser().parse_args(["run"])).allow_fault_injection is True


def test_operator_state_passes_the_gates_to_every_pool():
    from diffusion_operator.handlers.runtime import OperatorState

    state = OperatorState(Settings(allow_fault_injection=True), kube=FakeKube())
    assert state.options.allow_fault_injection is True and state.options.allow_file_sources is False
    assert OperatorState(Settings(), kube=FakeKube()).options.allow_fault_injection is False
