"""Real sampler processes for tests and benchmarks: the tiny model, built once, and
``python -m diffusion_sampler`` servers on free 127.0.0.1 ports.

Shared by ``tests/sampler`` (the sampler's own tests), ``tests/e2e`` (samplers scraped by
Prometheus during rollouts) and ``benchmarks/rollout_timing.py``. The calling process never
imports torch: the model is built, and served, by child processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from diffusion_operator.devcluster.cluster import free_port

__all__ = ["SamplerProcess", "build_tiny_model", "free_port"]


def build_tiny_model(out: Path, timeout: float = 600) -> Path:
    """Build the tiny random-weight pipeline into ``out`` (skipped when already there)."""
    if not (out / "model_index.json").exists():
        subprocess.run([sys.executable, "-m", "diffusion_sampler.build_model", "--preset", "tiny", "--out", str(out)],
                       check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                       capture_output=True, timeout=timeout)
    return out


class SamplerProcess:
    """One sampler server labelled ``pool``/``revision``; ``env`` adds SAMPLER_* settings.

    Starting does not wait: start several, then :meth:`wait_ready` each, so they load in
    parallel."""

    def __init__(self, name: str, model_dir: Path, log_dir: Path, *, pool: str, revision: str, **env) -> None:
        self.name, self.pool, self.revision = name, pool, revision
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"sampler-{name}.log"
        full_env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",  # 2 busy cores: one intra-op thread is far faster than two
            "SAMPLER_MODEL_DIR": str(model_dir),
            "SAMPLER_HOST": "127.0.0.1",
            "SAMPLER_PORT": str(self.port),
            "SAMPLER_POOL": pool,
            "SAMPLER_REVISION": revision,
            **{k: str(v) for k, v in env.items()},
        }
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "diffusion_sampler"], env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300.0) -> "SamplerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sampler {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"sampler {self.name} not ready after {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
