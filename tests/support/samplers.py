"""Real sampler processes for tests and benchmarks: the tiny model, built once, and
``python -m diffusion_sampler`` servers on free 127.0.0.1 ports.

Used by ``tests/sampler`` (the sampler's own tests), ``tests/e2e`` (samplers scraped by
Prometheus during rollouts) and ``benchmarks/rollout_timing.py``. The calling process never
imports torch: the model is built, and served, by child processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from diffusion_operator.devcluster.cluster import free_port
from tests.support.polling import wait_for

__all__ = ["ROLLOUT_SAMPLER_ENV", "SamplerProcess", "build_tiny_model", "free_port", "start_samplers"]


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
        # The sampler writes to it for as long as it runs; stop() closes it.
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "diffusion_sampler"], env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300.0) -> SamplerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:  # waiting longer cannot help
                raise RuntimeError(f"sampler {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return requests.get(self.url + "/readyz", timeout=2).status_code == 200

        wait_for(ready, timeout, 0.2, f"sampler {self.name} to be ready", ignoring=(requests.RequestException,),
                 detail=lambda: f"its log ends:\n{self.log()[-3000:]}")
        return self

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


#: What every rollout sampler (tests/e2e, benchmarks/rollout_timing.py) runs: the tiny model at
#: 32x32, one step, on the CPU, with a 1 s latency SLO bucket, so ten requests a second fit on
#: two busy cores.
ROLLOUT_SAMPLER_ENV = {
    "SAMPLER_DTYPE": "fp32",
    "SAMPLER_DEVICE": "cpu",
    "SAMPLER_SAFETY_CHECKER": "off",
    "SAMPLER_DEFAULT_WIDTH": "32",
    "SAMPLER_DEFAULT_HEIGHT": "32",
    "SAMPLER_DEFAULT_STEPS": "1",
    "SAMPLER_MAX_WAIT_MS": "20",
    "SAMPLER_SLO_LATENCY_THRESHOLDS_S": "1",
    "SAMPLER_LOG_LEVEL": "INFO",
}


def start_samplers(model_dir: Path, log_dir: Path,
                   specs: dict[str, tuple[str, str, dict]]) -> dict[str, SamplerProcess]:
    """``{name: (pool, revision, env)}`` -> started and Ready rollout samplers (loaded in
    parallel; ``env`` over :data:`ROLLOUT_SAMPLER_ENV`). All are stopped if one fails."""
    procs: dict[str, SamplerProcess] = {}
    try:
        for name, (pool, revision, env) in specs.items():
            procs[name] = SamplerProcess(name, model_dir, log_dir, pool=pool, revision=revision,
                                         **{**ROLLOUT_SAMPLER_ENV, **env})
        for proc in procs.values():
            proc.wait_ready()
    except BaseException:
        for proc in procs.values():
            proc.stop()
        raise
    return procs
