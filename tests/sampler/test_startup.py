"""Startup and fault injection: bad configuration and unloadable models end the process with a
non-zero status (a crash loop is visible; a pod that never gets ready is not), the injected
error rate answers 500 while the probes stay healthy, injected NaN images are flagged, and the
operator's golden-render probes are counted apart from serving traffic."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest
import requests

from tests.sampler.conftest import png_pixels
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


def test_injected_nan_images_are_flagged_served_flat_and_counted(nan_server):
    resp = nan_server.post("/v1/generate", {"prompt": "a bird", "seed": 3, "n": 2})
    assert resp.status_code == 200
    images = resp.json()["images"]
    assert [im["quality"] for im in images] == ["nan", "nan"]
    pixels = png_pixels(base64.b64decode(images[0]["image"]))
    assert pixels.min() == pixels.max() == 128, "a NaN image is served flat grey (NaN taken as 0)"
    assert nan_server.sample("diffusion_sampler_blank_images_total", kind="nan") >= 2


def test_golden_render_probes_are_counted_apart_from_serving_traffic(server):
    before_probe = server.sample("diffusion_sampler_requests_total", endpoint="golden-render", code="200")
    before_generate = server.sample("diffusion_sampler_requests_total", endpoint="generate")
    resp = server.post("/v1/generate", {"prompt": "a bird", "seed": 3},
                       headers={"X-Diffusion-Probe": "golden-render"})
    assert resp.status_code == 200 and resp.json()["images"][0]["quality"] == "ok"
    assert server.sample("diffusion_sampler_requests_total", endpoint="golden-render", code="200") == before_probe + 1
    # The canary analysis reads the serving endpoints only: the probe is not among them.
    assert server.sample("diffusion_sampler_requests_total", endpoint="generate") == before_generate
