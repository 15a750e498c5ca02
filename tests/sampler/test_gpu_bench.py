"""The prepared GPU measurement (``benchmarks/gpu_bench.py``): its table from a small recorded
input shaped like a GPU run, and its CPU rehearsal end to end (tiny model, ~40 s), so the one
device run spends its minutes measuring rather than debugging."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sampler
REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu_bench.py")
assert _spec is not None and _spec.loader is not None
gpu_bench = importlib.util.module_from_spec(_spec)
sys.modules["gpu_bench"] = gpu_bench  # its dataclasses look their module up
_spec.loader.exec_module(gpu_bench)

# Plain figures from the H100 notes; sampler figures invented for the arithmetic.
RECORDED = [
    {"source": "meta", "event": "config", "preset": "sd15", "rehearse": False, "compile": True, "date": "2026-12-03"},
    {"source": "meta", "event": "machine", "torch": "2.11.0+cu130", "device": "NVIDIA H200"},
    {"source": "plain", "event": "loaded", "received_s": 12.0},
    {"source": "plain", "event": "pipeline", "variant": "eager", "batch": 8, "sec_per_call": 1.713,
     "images_per_s": 4.67, "peak_gib": 5.8},
    {"source": "plain", "event": "pipeline", "variant": "compiled+cudagraphs", "batch": 1, "sec_per_call": 0.226,
     "images_per_s": 4.42, "peak_gib": 5.8},
    {"source": "plain", "event": "cuda_graphs_compile_and_run_s", "batch": 1, "s": 47.13},
    {"source": "plain", "event": "pipeline", "variant": "compiled+cudagraphs", "batch": 16, "sec_per_call": 2.281,
     "images_per_s": 7.0, "peak_gib": 10.0},
    {"source": "sampler", "variant": "main", "mode": "sampler", "clients": 1, "images_per_s": 4.0, "p50": 0.240,
     "p95": 0.260, "mean_batch": 1.0, "gpu_peak_gib": 12.0, "ready_s": 150.0},
    {"source": "sampler", "variant": "main", "mode": "sampler", "clients": 32, "images_per_s": 9.1, "p50": 3.4,
     "p95": 4.2, "mean_batch": 16.0, "gpu_peak_gib": 20.0, "ready_s": 150.0},
    {"source": "sampler", "variant": "warm-restart", "mode": "ready", "clients": 0, "ready_s": 12.5},
    {"source": "fidelity", "variant": "fp8", "against": "main", "images": 4, "psnr_mean_db": 31.25,
     "psnr_min_db": 29.5, "max_abs_diff": 60},
    {"source": "meta", "event": "skipped", "step": "vae-graphs", "reason": "budget: 90 s left, the step needs at "
                                                                           "least 150 s"},
]


def test_table_from_recorded_rows_gives_same_run_ratios_and_verdicts():
    ref = gpu_bench.plain_reference(RECORDED)
    assert ref["images_per_s"] == 7.0 and ref["b1_s"] == 0.226 and ref["peak_gib"] == 10.0
    assert ref["ready_compiled_s"] == pytest.approx(12.0 + 47.13 - 5 * 0.226)
    text = gpu_bench.render(RECORDED)
    assert "device: NVIDIA H200; torch 2.11.0+cu130; date 2026-12-03" in text
    assert "best plain throughput: 7.00 images/s (compiled+cudagraphs, batch 16" in text
    assert "| main | 32 | 9.10 | 1.30x | 3.400 | 4.200 | 15.04x | 16.00 | 20.0 | 2.00x | 150.0 | 12.5 |" in text
    assert "| main | 1 | 4.00 | 0.57x | 0.240 | 0.260 | 1.06x |" in text
    assert "32 clients >= 1.3x best plain images/s with p95 < 5 s: met (1.30x" in text
    assert "1 client p50 within 1.1x of the best plain batch-1 call: met (1.06x)" in text
    assert "warm compile cache ready in < 15 s: met (12.5 s)" in text
    assert "| fp8 | main | 4 | 31.2 | 29.5 | 60 |" in text
    assert "- vae-graphs: budget: 90 s left" in text


def test_table_without_plain_rows_says_so():
    text = gpu_bench.render([r for r in RECORDED if r["source"] != "plain"])
    assert "no plain baseline rows" in text and "not measured" in text


def test_cpu_rehearsal_runs_every_step_and_writes_rows_and_table(tiny_model, tmp_path):
    baseline = REPO.parent / "shared" / "bench" / "plain_diffusers_baseline.py"
    local = REPO / ".gpu-bench" / "plain_diffusers_baseline.py"
    baseline = local if local.exists() else baseline
    # CI and every session have ../shared beside the checkout; the device run carries .gpu-bench/.
    assert baseline.exists(), "plain_diffusers_baseline.py is neither in ../shared/bench nor in .gpu-bench/"
    work = tmp_path / "work"
    work.mkdir()
    (work / "model-tiny").symlink_to(tiny_model, target_is_directory=True)  # built once per session
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_bench.py", "run", "--rehearse", "--out", str(out), "--work", str(work),
         "--baseline", str(baseline), "--clients", "1,4", "--duration", "2", "--warm", "0.5", "--variants", "fp8",
         "--seeds", "1", "--budget-s", "240"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert any(r["source"] == "plain" and r.get("event") == "pipeline" for r in rows)
    assert {r["clients"] for r in rows if r.get("variant") == "main" and r.get("mode") == "sampler"} == {1, 4}
    assert any(r.get("mode") == "ready" and r["ready_s"] > 0 for r in rows)
    refused = [r for r in rows if r.get("event") == "step_failed" and r["step"] == "fp8"]
    assert refused and "compute capability 8.9" in refused[0]["reason"]
    table = (out / "table.md").read_text()
    assert "| main | 4 |" in table and "CPU rehearsal" in table
    assert sorted(p.name for p in out.iterdir()) == ["rows.jsonl", "server.log", "steps.log", "table.md"]
