"""Fixtures for the sampler tests: the tiny model (built once per session) and real server
processes (``python -m diffusion_sampler``) on free ports bound to 127.0.0.1.

The servers are started together, in parallel, the first time any of them is needed, and shared
by every test that leaves them in a usable state. The pytest process itself never imports torch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.support.samplers import SamplerProcess as _SamplerProcess
from tests.support.samplers import build_tiny_model

POOL, REVISION = "test-pool", "rev-1"
BLOCKED_TERM = "forbiddenword"


class SamplerProcess(_SamplerProcess):
    """A sampler server with the sampler tests' defaults and helpers for their assertions."""

    def __init__(self, name: str, model_dir: Path, log_dir: Path, **env: str) -> None:
        super().__init__(name, model_dir, log_dir, pool=POOL, revision=REVISION,
                         **{"SAMPLER_DEFAULT_WIDTH": "64", "SAMPLER_DEFAULT_HEIGHT": "64",
                            "SAMPLER_DEFAULT_STEPS": "4", **env})

    def post(self, path: str, json=None, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        return requests.post(self.url + path, json=json, **kwargs)

    def metrics(self) -> dict[str, list]:
        """Metric family name -> samples (prometheus_client's parser)."""
        text = requests.get(self.url + "/metrics", timeout=10).text
        return {fam.name: fam.samples for fam in text_string_to_metric_families(text)}

    def sample(self, sample_name: str, **labels) -> float:
        """Sum of samples with that exact name whose labels include ``labels``."""
        total = 0.0
        for samples in self.metrics().values():
            for s in samples:
                if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


def png_pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    out = build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-sd")
    assert (out / "model_index.json").exists()
    return out


# name -> settings. All start at once on first use; each test module picks its own.
SERVERS = {
    # Shared by the API tests: batches form within 300 ms; small limits so violations are cheap.
    "main": dict(SAMPLER_MAX_BATCH_SIZE=8, SAMPLER_MAX_WAIT_MS=300, SAMPLER_MAX_STEPS=50, SAMPLER_MAX_WIDTH=128,
                 SAMPLER_MAX_HEIGHT=128, SAMPLER_MAX_IMAGES=4, SAMPLER_MAX_PROMPT_LENGTH=200,
                 SAMPLER_MAX_BODY_BYTES=65536, SAMPLER_SAFETY_BLOCKLIST=f"{BLOCKED_TERM},other term",
                 SAMPLER_SLO_LATENCY_THRESHOLDS_S="0.3,2.5"),
    # One image at a time, 1.5 s each (fault-injected latency), room for two waiting requests.
    "slow": dict(SAMPLER_MAX_BATCH_SIZE=1, SAMPLER_MAX_QUEUE=2, SAMPLER_FAULT_LATENCY_S=1.5,
                 SAMPLER_REQUEST_TIMEOUT_S=60),
    # Shut down by its test.
    "drain": dict(SAMPLER_MAX_BATCH_SIZE=2, SAMPLER_MAX_WAIT_MS=10, SAMPLER_FAULT_LATENCY_S=1.0,
                  SAMPLER_DRAIN_TIMEOUT_S=60),
    # Image-to-image; small limits, since test_fuzz.py fuzzes its edits endpoint as well.
    "img2img": dict(SAMPLER_PIPELINE_KIND="image-to-image", SAMPLER_MAX_STEPS=4, SAMPLER_MAX_WIDTH=64,
                    SAMPLER_MAX_HEIGHT=64, SAMPLER_MAX_IMAGES=2, SAMPLER_MAX_BODY_BYTES=262144),
    # Every generation request fails by fault injection; probes stay healthy.
    "faulty": dict(SAMPLER_FAULT_ERROR_RATE=1.0, SAMPLER_WARMUP=0),
    # Fuzzed from its own OpenAPI document (test_fuzz.py): limits small enough that every request
    # the schema allows is cheap to serve (at most 2 images of 64x64 in 4 steps).
    "fuzz": dict(SAMPLER_MAX_STEPS=4, SAMPLER_MAX_WIDTH=64, SAMPLER_MAX_HEIGHT=64, SAMPLER_MAX_IMAGES=2,
                 SAMPLER_MAX_PROMPT_LENGTH=300, SAMPLER_MAX_BODY_BYTES=65536, SAMPLER_MAX_BATCH_SIZE=4,
                 SAMPLER_MAX_WAIT_MS=5, SAMPLER_REQUEST_TIMEOUT_S=60, SAMPLER_WARMUP=0),
    # Every decoded image is NaN by fault injection (what the golden-render gate must catch).
    "nan": dict(SAMPLER_FAULT_IMAGE="nan", SAMPLER_WARMUP=0),
    # The opt-in speed knobs on and the prompt cache off (its images must match main's), one image
    # per batch, and 1 s of injected PNG-encoding time, to show the worker does not wait for it.
    "tuned": dict(SAMPLER_FUSE_QKV=1, SAMPLER_CHANNELS_LAST=1, SAMPLER_PROMPT_CACHE_SIZE=0,
                  SAMPLER_MAX_BATCH_SIZE=1, SAMPLER_FAULT_ENCODE_LATENCY_S=1.0),
}


@pytest.fixture(scope="session")
def sampler_servers(tiny_model, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    procs = {name: SamplerProcess(name, tiny_model, log_dir, **env) for name, env in SERVERS.items()}
    try:
        for proc in procs.values():
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture(scope="session")
def server(sampler_servers) -> SamplerProcess:
    return sampler_servers["main"]


@pytest.fixture(scope="session")
def slow_server(sampler_servers) -> SamplerProcess:
    return sampler_servers["slow"]


@pytest.fixture(scope="session")
def drain_server(sampler_servers) -> SamplerProcess:
    return sampler_servers["drain"]


@pytest.fixture(scope="session")
def faulty_server(sampler_servers) -> SamplerProcess:
    return sampler_servers["faulty"]


@pytest.fixture(scope="session")
def fuzz_server(sampler_servers) -> SamplerProcess:
    return sampler_servers["fuzz"]


@pytest.fixture(scope="session")
def nan_server(sampler_servers) -> SamplerProcess:
    return sampler_servers["nan"]


@pytest.fixture(scope="session")
def tuned_server(sampler_servers) -> SamplerProcess:
    return sampler_servers["tuned"]


@pytest.fixture(scope="session")
def img2img_server(sampler_servers) -> SamplerProcess:
    return sampler_servers["img2img"]
