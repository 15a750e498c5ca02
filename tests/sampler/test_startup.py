"""Startup and fault injection: bad configuration and unloadable models end the process with a
non-zero status (a crash loop is visible; a pod that never gets ready is not), and the injected
error rate answers 500 while the probes stay healthy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from tests.support.samplers import free_port

pytestmark = pytest.mark.sampler


def _start(tmp_path, **env):
    return subprocess.Popen(
        [sys.executable, "-m", "diffusion_sampler"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "SAMPLER_HOST": "127.0.0.1",
             "SAMPLER_PORT": str(free_port()), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_bad_configuration_and_missing_model_exit_non_zero(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_config = _start(tmp_path, SAMPLER_MODEL_DIR=str(empty), SAMPLER_DTYPE="fp8")
    no_model = _start(tmp_path, SAMPLER_MODEL_DIR=str(empty))
    out, _ = bad_config.communicate(timeout=120)
    assert bad_config.returncode == 2
    assert "SAMPLER_DTYPE" in out
    out, _ = no_model.communicate(timeout=120)
    assert no_model.returncode == 1
    assert "model load failed" in out


def test_injected_error_rate_answers_500_and_probes_stay_up(faulty_server):
    resp = faulty_server.post("/v1/images/generations", {"prompt": "a bird"})
    assert resp.status_code == 500
    assert resp.json()["error"]["code"] == "injected_fault"
    assert requests.get(faulty_server.url + "/readyz", timeout=5).status_code == 200
    assert faulty_server.sample("diffusion_sampler_requests_total", endpoint="generations", code="500") >= 1
