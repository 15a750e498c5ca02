#!/usr/bin/env python3
"""Benchmark the sampler against the plain diffusers pipeline on the same model and device.

1. Plain: ``StableDiffusionPipeline.from_pretrained`` in this process, called once per request,
   sequentially (text prompt in, PIL image out).
2. Sampler: ``python -m diffusion_sampler`` as a subprocess on 127.0.0.1, driven by N closed-loop
   clients (threads, one HTTP session each) through ``POST /v1/images/generations`` for
   ``--duration`` seconds per client count, after a short warm phase. Plain and sampler windows
   alternate (``--rounds``) so that load from neighbours on a shared machine hits both alike.

Prints images/s, p50/p95/p99 latency and the mean batch size (from the server's own
``diffusion_sampler_batch_size`` histogram over the measured window), and the ratios to plain;
each row also carries the sampler's time from process start to ready (``ready_s``) and, on
CUDA, its peak allocated GPU memory (``gpu_peak_gib``).

``benchmarks/gpu_bench.py`` drives this script on a GPU with ``--no-plain`` (the plain reference
there is ``plain_diffusers_baseline.py``, run in the same job), ``--env`` for the sampler's knobs,
``--ready-only`` for a restart against a warm compile cache, and ``--images-out`` for the
fidelity check (fixed seeds, saved as PNG).

CPU (the tiny random-weight model, built on the fly):
    python benchmarks/sampler_bench.py --preset tiny --clients 1,16
GPU (SD1.5-shaped, fp16, 512x512, 30 steps):
    python benchmarks/sampler_bench.py --preset sd15 --clients 1,32 \
        --shared-baseline ../shared/bench/plain_diffusers_baseline.py
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.polling import wait_for  # noqa: E402

PRESETS = {
    # Defaults per preset. max_wait is only spent when clients are expected back (see batcher.py);
    # a lone client never waits.
    "tiny": dict(size=32, steps=10, dtype="fp32", max_batch_size=16, max_wait_ms=250, clients="1,16"),
    "sd15": dict(size=512, steps=30, dtype="fp16", max_batch_size=16, max_wait_ms=250, clients="1,32"),
}
PROMPT = "a photo of an astronaut riding a horse on the moon, detailed, cinematic lighting"


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ensure_model(args) -> Path:
    if args.model_dir:
        return Path(args.model_dir)
    out = Path(args.cache_dir) / args.preset
    if not (out / "model_index.json").exists():
        emit(event="building_model", preset=args.preset, out=str(out))
        subprocess.run([sys.executable, "-m", "diffusion_sampler.build_model", "--preset", args.preset,
                        "--out", str(out)], check=True)
    return out


class Plain:
    """The plain diffusers pipeline, in this process: one call per request, sequentially."""

    def __init__(self, args, model_dir: Path) -> None:
        import torch
        from diffusers import StableDiffusionPipeline

        if args.threads:
            torch.set_num_threads(args.threads)
        self.torch = torch
        self.args = args
        self.device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
        if self.device == "cpu":
            dtype = torch.float32
        self.pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), dtype=dtype,
                                                            local_files_only=True).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.name = torch.cuda.get_device_name() if self.device == "cuda" else "cpu"
        self.seed = 0
        for _ in range(args.plain_warmup):
            self.call()

    def call(self):
        self.seed += 1
        a = self.args
        image = self.pipe(PROMPT, height=a.size, width=a.size, num_inference_steps=a.steps, guidance_scale=7.5,
                          generator=self.torch.Generator("cpu").manual_seed(self.seed)).images[0]
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return image

    def window(self, seconds: float) -> tuple[list[float], float]:
        """Call back to back for about ``seconds``; returns latencies and the time taken."""
        latencies = []
        started = time.perf_counter()
        while not latencies or time.perf_counter() - started < seconds:
            t = time.perf_counter()
            self.call()
            latencies.append(time.perf_counter() - t)
        return latencies, time.perf_counter() - started


class Server:
    def __init__(self, args, model_dir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "SAMPLER_MODEL_DIR": str(model_dir),
            "SAMPLER_HOST": "127.0.0.1",
            "SAMPLER_PORT": str(self.port),
            "SAMPLER_POOL": "bench",
            "SAMPLER_REVISION": "bench",
            "SAMPLER_DTYPE": args.dtype,
            "SAMPLER_DEVICE": args.device,
            "SAMPLER_DEFAULT_WIDTH": str(args.size),
            "SAMPLER_DEFAULT_HEIGHT": str(args.size),
            "SAMPLER_DEFAULT_STEPS": str(args.steps),
            "SAMPLER_MAX_BATCH_SIZE": str(args.max_batch_size),
            "SAMPLER_MAX_WAIT_MS": str(args.max_wait_ms),
            "SAMPLER_MAX_QUEUE": "256",
            "SAMPLER_MAX_IMAGES": "4",
            "SAMPLER_REQUEST_TIMEOUT_S": "600",
            "SAMPLER_LOG_LEVEL": "WARNING",
        }
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if args.compile:
            buckets = args.compile_buckets or ",".join(
                str(b) for b in sorted({1, 2, 4, 8, 16, 32} | {args.max_batch_size}) if b <= args.max_batch_size)
            env.update(SAMPLER_COMPILE="1", SAMPLER_COMPILE_BUCKETS=f"{args.size}x{args.size}:{buckets}")
        if args.compile_cache_dir:
            env["SAMPLER_COMPILE_CACHE_DIR"] = args.compile_cache_dir
        for pair in args.env:
            key, sep, value = pair.partition("=")
            if not sep or not key.startswith("SAMPLER_"):
                raise SystemExit(f"--env {pair!r}: expected SAMPLER_NAME=VALUE")
            env[key] = value
        started = time.monotonic()
        # The server's log stays open for the sampler's lifetime; stop() closes it.
        self.log = open(args.server_log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "diffusion_sampler"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.proc.poll() is not None:  # waiting longer cannot help
                raise SystemExit(f"sampler exited with {self.proc.returncode}; see {args.server_log}")
            return requests.get(self.url + "/readyz", timeout=2).status_code == 200

        try:
            wait_for(ready, args.ready_timeout, 0.2, "the sampler to be ready", ignoring=(requests.RequestException,))
        except AssertionError as exc:  # a command-line tool: a message and a status, not a traceback
            raise SystemExit(f"{exc}; see {args.server_log}") from None
        self.ready_s = time.monotonic() - started  # process start to /readyz 200 (0.2 s resolution)

    def gauge(self, name: str, **labels: str) -> float | None:
        """One sample of the server's /metrics (None when absent, e.g. GPU memory on a CPU)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(self.url + "/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return None

    def gpu_peak_gib(self) -> float | None:
        peak = self.gauge("diffusion_sampler_gpu_memory_bytes", kind="peak")
        return None if peak is None else peak / 2**30

    def save_images(self, args, out: Path, seeds: int) -> None:
        """Seeds 1..N, one request each, saved as PNG: the same seeds on two variants compare
        image by image (benchmarks/gpu_bench.py computes the PSNR)."""
        import base64

        out.mkdir(parents=True, exist_ok=True)
        for seed in range(1, seeds + 1):
            resp = requests.post(self.url + "/v1/images/generations", timeout=600,
                                 json={"prompt": PROMPT, "size": f"{args.size}x{args.size}", "steps": args.steps,
                                       "seed": seed})
            resp.raise_for_status()
            (out / f"seed-{seed}.png").write_bytes(base64.b64decode(resp.json()["data"][0]["b64_json"]))

    def batch_totals(self) -> tuple[float, float]:
        text = requests.get(self.url + "/metrics", timeout=10).text
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("diffusion_sampler_batch_size_sum"):
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith("diffusion_sampler_batch_size_count"):
                count = float(line.rsplit(" ", 1)[1])
        return total, count

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(120)
        self.log.close()
        return code


def window(server: Server, args, clients: int, seconds: float) -> tuple[list[float], int, float, float]:
    """Closed loop for one measured window (after ``--warm`` unmeasured seconds): each client sends
    its next request as soon as the last one returns. Every request that completes inside the
    window counts (throughput) with its full latency. Returns latencies, errors and the
    batch-size histogram's (sum, count) increase over the window."""
    size = f"{args.size}x{args.size}"
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    measure_from = time.monotonic() + args.warm
    stop_at = measure_from + seconds

    def client(index: int) -> None:
        session = requests.Session()
        seed = index * 1_000_000 + int(measure_from * 1000) % 1_000_000
        while time.monotonic() < stop_at:
            seed += 1
            started = time.monotonic()
            resp = session.post(server.url + "/v1/images/generations", timeout=600,
                                json={"prompt": PROMPT, "size": size, "steps": args.steps, "seed": seed})
            ended = time.monotonic()
            with lock:
                if resp.status_code != 200:
                    errors[0] += 1
                elif measure_from <= ended <= stop_at:
                    latencies.append(ended - started)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, measure_from - time.monotonic()))
    sum0, count0 = server.batch_totals()
    time.sleep(max(0.0, stop_at - time.monotonic()))
    sum1, count1 = server.batch_totals()
    for t in threads:
        t.join()
    return latencies, errors[0], sum1 - sum0, count1 - count0


def _ratio(row: dict, key: str) -> str:
    if row["mode"] == "plain":
        return "1.00"
    return f"{row[key]:.2f}" if key in row else "-"


def summarize(mode: str, clients: int, latencies: list[float], seconds: float, **extra) -> dict:
    return dict(mode=mode, clients=clients, requests=len(latencies), images_per_s=len(latencies) / seconds,
                p50=percentile(latencies, 50), p95=percentile(latencies, 95), p99=percentile(latencies, 99),
                **extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--model-dir", help="an existing pipeline directory (default: build the preset)")
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/diffusion-sampler-bench"))
    parser.add_argument("--clients", help="comma-separated client counts (preset default)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="measured seconds per client count, for each side (split into --rounds windows)")
    parser.add_argument("--warm", type=float, default=5.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-wait-ms", type=float)
    parser.add_argument("--compile", action="store_true", help="SAMPLER_COMPILE=1 with buckets for --size")
    parser.add_argument("--compile-buckets", help="batch buckets for --compile, e.g. 1,8,16 (default: powers of "
                                                  "two up to the max batch)")
    parser.add_argument("--compile-cache-dir", help="SAMPLER_COMPILE_CACHE_DIR for the sampler")
    parser.add_argument("--env", action="append", default=[], metavar="SAMPLER_NAME=VALUE",
                        help="extra sampler setting (repeatable), e.g. SAMPLER_FUSE_QKV=1")
    parser.add_argument("--no-plain", action="store_true",
                        help="no in-process plain pipeline (the caller runs its own plain reference)")
    parser.add_argument("--ready-only", action="store_true",
                        help="start the sampler, time it to ready, stop it: one 'ready' row")
    parser.add_argument("--images-out", help="after ready, save --fidelity-seeds images (seeds 1..N) here")
    parser.add_argument("--fidelity-seeds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads for both sides (OMP_NUM_THREADS; 0: library default)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating plain/sampler windows per count")
    parser.add_argument("--plain-warmup", type=int, default=3)
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--server-log", default="sampler-bench-server.log")
    parser.add_argument("--shared-baseline", help="also run this plain_diffusers_baseline.py (GPU runs)")
    parser.add_argument("--json-out", help="write all rows here")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) in (None, ""):
            setattr(args, key, value)
    client_counts = [int(c) for c in str(args.clients).split(",") if c]

    model_dir = ensure_model(args)
    emit(event="config", preset=args.preset, size=args.size, steps=args.steps, dtype=args.dtype,
         max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, compile=args.compile,
         threads=args.threads or "default", clients=client_counts, duration_s=args.duration)
    rows: list[dict] = []
    if args.shared_baseline:
        subprocess.run([sys.executable, args.shared_baseline], check=False)
    plain = None if args.no_plain or args.ready_only else Plain(args, model_dir)
    server = Server(args, model_dir)
    emit(event="ready", ready_s=round(server.ready_s, 2))
    if args.ready_only:
        rows.append(dict(mode="ready", clients=0, ready_s=server.ready_s, gpu_peak_gib=server.gpu_peak_gib()))
        emit(event="result", **rows[-1])
        emit(event="server_exit", code=server.stop())
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=2))
        return 0
    if args.images_out:
        server.save_images(args, Path(args.images_out), args.fidelity_seeds)
    # Plain and sampler windows alternate (--rounds of each per client count), so a neighbour's
    # load on a shared machine hits both sides alike; the sampler idles while plain runs.
    per_round = args.duration / args.rounds
    try:
        for clients in client_counts:
            plain_lat, plain_s = [], 0.0
            lat, errors, bsum, bcount = [], 0, 0.0, 0.0
            for _ in range(args.rounds):
                if plain is not None:
                    window_lat, t = plain.window(per_round)
                    plain_lat += window_lat
                    plain_s += t
                window_lat, e, s_, c = window(server, args, clients, per_round)
                lat += window_lat
                errors += e
                bsum += s_
                bcount += c
            row = summarize("sampler", clients, lat, per_round * args.rounds, errors=errors,
                            mean_batch=bsum / bcount if bcount else float("nan"), ready_s=server.ready_s,
                            gpu_peak_gib=server.gpu_peak_gib())
            pair = [row]
            if plain is not None:
                base = summarize("plain", 1, plain_lat, plain_s, device=plain.name, mean_batch=1.0,
                                 paired_with=clients)
                row["throughput_vs_plain"] = row["images_per_s"] / base["images_per_s"]
                row["p50_vs_plain"] = row["p50"] / base["p50"]
                pair = [base, row]
            for r in pair:
                emit(event="result", **r)
            rows += pair
    finally:
        exit_code = server.stop()
    emit(event="server_exit", code=exit_code)

    print()
    device = plain.name if plain is not None else args.device
    print(f"device: {device}; model: {args.preset} ({model_dir}); {args.size}x{args.size}, "
          f"{args.steps} steps, {args.dtype}; max batch {args.max_batch_size}, max wait {args.max_wait_ms:g} ms")
    print("| mode | clients | images/s | p50 s | p95 s | p99 s | mean batch | x plain images/s | p50 / plain p50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mode = f"plain (beside {r['paired_with']} clients)" if r["mode"] == "plain" else "sampler"
        print(f"| {mode} | {r['clients']} | {r['images_per_s']:.2f} | {r['p50']:.3f} | {r['p95']:.3f} | "
              f"{r['p99']:.3f} | {r['mean_batch']:.2f} | {_ratio(r, 'throughput_vs_plain')} | "
              f"{_ratio(r, 'p50_vs_plain')} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
