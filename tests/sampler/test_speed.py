"""The speed work that runs on a CPU: the prompt-embedding cache, the pipelining of PNG encoding
with the next batch, the opt-in knobs (fused QKV, channels-last) keeping the images, the compile
cache's keying and reuse, and the refusal of fp8 where it cannot run. What these buy on a GPU is
measured by ``benchmarks/gpu_bench.py``, not here."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion_sampler.compile_cache import CompileCache, cache_key
from diffusion_sampler.fidelity import psnr, summary
from diffusion_sampler.prompt_cache import LRUCache
from tests.sampler.conftest import SamplerProcess, png_pixels

pytestmark = pytest.mark.sampler
REPO = Path(__file__).resolve().parents[2]


def _generate(server, prompt: str, seed: int, **extra) -> dict:
    resp = server.post("/v1/generate", {"prompt": prompt, "seed": seed, "width": 64, "height": 64, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()["images"][0]


def _pixels(image: dict) -> np.ndarray:
    return png_pixels(base64.b64decode(image["image"]))


def test_lru_keeps_the_most_recently_used_entries():
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2
    off: LRUCache[str, int] = LRUCache(0)
    off.put("a", 1)
    assert off.get("a") is None and len(off) == 0


def test_a_repeated_prompt_hits_the_cache_and_gives_the_identical_image(server):
    prompt = "a green tree by the river at night"  # used by no other test
    hits = server.sample("diffusion_sampler_prompt_cache_total", result="hit")
    misses = server.sample("diffusion_sampler_prompt_cache_total", result="miss")
    first = _generate(server, prompt, 1234)
    assert server.sample("diffusion_sampler_prompt_cache_total", result="miss") == misses + 1
    second = _generate(server, prompt, 1234)
    assert server.sample("diffusion_sampler_prompt_cache_total", result="hit") == hits + 1
    assert server.sample("diffusion_sampler_prompt_cache_total", result="miss") == misses + 1
    assert np.array_equal(_pixels(first), _pixels(second))
    # another negative prompt is another entry
    _generate(server, prompt, 1234, negative_prompt="blurry")
    assert server.sample("diffusion_sampler_prompt_cache_total", result="miss") == misses + 2


def test_fused_qkv_channels_last_and_no_prompt_cache_give_the_same_image(server, tuned_server):
    for seed in (5, 6):
        on = _pixels(_generate(tuned_server, "a portrait of a horse", seed))
        off = _pixels(_generate(server, "a portrait of a horse", seed))
        # float rounding of a fused matmul / another conv layout: at most a few 8-bit levels
        assert np.abs(on - off).max() <= 3, seed
        assert psnr(on.astype(np.uint8), off.astype(np.uint8)) > 40


def test_next_batch_starts_while_the_previous_one_is_still_being_encoded(tuned_server):
    """One image per batch and 1 s of injected encoding: the second batch's GPU work starts as soon
    as the first batch's pixels are on the host, not after its PNG is encoded and sent."""
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: _generate(tuned_server, "a small bird", s), (11, 12)))
    first, second = sorted((r["timings"] for r in results), key=lambda t: t["batch_started_at"])
    assert first["batch_size"] == second["batch_size"] == 1
    assert first["encode_s"] >= 1.0
    assert second["batch_started_at"] >= first["batch_finished_at"]  # one worker: batches in turn
    assert second["batch_started_at"] < first["batch_finished_at"] + first["encode_s"]


def test_compile_cache_key_and_layout(tmp_path):
    key = cache_key("abc/123 main", "2.11.0+cu130", "NVIDIA H100 80GB HBM3")
    assert key == "abc-123-main--torch-2.11.0-cu130--NVIDIA-H100-80GB-HBM3"
    assert "/" not in cache_key("a/b", "c/d", "e f")
    cache = CompileCache(tmp_path / "cache", key)
    env: dict[str, str] = {}
    assert cache.activate(env) == 0  # cold
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / key / "inductor")
    assert json.loads((cache.path / "key.json").read_text())["key"] == key
    (cache.inductor_dir / "fxgraph").mkdir()
    (cache.inductor_dir / "fxgraph" / "entry").write_text("x")
    assert cache.activate(env) == 1  # warm: what a previous process left


COMPILE_PROBE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from diffusion_sampler.compile_cache import for_process
    cache = for_process(Path(sys.argv[1]), "rev-1", "cpu")
    found = cache.activate()
    import torch
    from torch._dynamo.utils import counters
    f = torch.compile(lambda x: torch.sin(x) * 2 + 1)
    f(torch.ones(8))
    print(json.dumps({"found": found, "files": cache.entries(), "hit": counters["inductor"]["fxgraph_cache_hit"]}))
""")


def test_a_second_process_reuses_the_saved_compile_artifacts(tmp_path):
    """The real torch.compile (Inductor on the CPU) on a trivially small function, twice."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def probe() -> dict:
        out = subprocess.run([sys.executable, "-c", COMPILE_PROBE, str(tmp_path)], capture_output=True, text=True,
                             env=env, timeout=240, cwd=REPO)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    cold = probe()
    assert cold["found"] == 0 and cold["files"] > 0 and cold["hit"] == 0
    warm = probe()
    assert warm["found"] == cold["files"] and warm["hit"] >= 1


def test_fp8_is_refused_at_startup_on_a_cpu(tiny_model, tmp_path):
    proc = SamplerProcess("fp8", tiny_model, tmp_path, SAMPLER_PRECISION="fp8", SAMPLER_DTYPE="fp16",
                          SAMPLER_WARMUP=0)
    try:
        assert proc.proc.wait(120) == 1
    finally:
        proc.stop()
    assert "SAMPLER_PRECISION=fp8 needs a CUDA GPU with compute capability 8.9" in proc.log()


def test_fp8_with_fp32_compute_is_a_configuration_error(tiny_model):
    env = {**os.environ, "SAMPLER_MODEL_DIR": str(tiny_model), "SAMPLER_PRECISION": "fp8", "SAMPLER_DTYPE": "fp32"}
    out = subprocess.run([sys.executable, "-m", "diffusion_sampler"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "SAMPLER_PRECISION=fp8" in out.stderr


def test_psnr_of_identical_and_one_level_apart_images():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a, a + 1) - 48.13) < 0.01
    assert summary([(a, a), (a, a + 1)])["max_abs_diff"] == 1
    png = io.BytesIO()
    Image.fromarray(a).save(png, format="PNG")
    assert png_pixels(png.getvalue()).shape == (8, 8, 3)
