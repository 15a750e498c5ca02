#!/usr/bin/env python3
"""The sampler against plain diffusers on one GPU, in one device run: the prepared measurement.

Three commands:

``prepare`` (here, with network): downloads the wheels the device machine lacks (diffusers and
the sampler's server stack, at the versions of this venv) into ``.gpu-bench/wheels``, copies the
plain baseline (``../shared/bench/plain_diffusers_baseline.py``, which does not travel) into
``.gpu-bench/``, and adds ``/.gpu-bench/`` to ``.git/info/exclude``. The folder is then named in
the device run's ``carry``.

``run --out DIR`` (on the GPU; ``--rehearse`` on a CPU): inside one time budget, in order,

1. builds the SD1.5-shaped model (``--rehearse``: the tiny one);
2. runs the plain baseline (``COMPILE=1``; ``--rehearse``: ``TINY=1``), whose best variant is
   the reference for every ratio;
3. runs ``benchmarks/sampler_bench.py --compile`` (fp16, 512x512, 30 steps, guidance 7.5,
   clients 1, 8 and 32) against an empty compile cache, saving a few fixed-seed images;
4. restarts the sampler against the now warm compile cache and times it to ready;
5. runs the opt-in variants (``--variants``) the same way while the budget lasts, each with a
   PSNR against step 3's images on the same seeds.

A step that cannot fit in what is left of the budget is skipped and recorded as skipped; one
that runs over is stopped. Every row goes to ``DIR/rows.jsonl`` as it is produced (a stopped
run keeps what it had), the table to ``DIR/table.md`` and stdout, child output to
``DIR/steps.log`` and the sampler's logs to ``DIR/server.log``: four files.

``table ROWS.jsonl``: prints the table again from recorded rows.

The command for the device machine, and the results, are in docs/benchmarks.md. This module
must not import torch or diffusers: the children do the GPU work, and the table code is tested
on a CPU without them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / ".gpu-bench"
SHARED_BASELINE = REPO.parent / "shared" / "bench" / "plain_diffusers_baseline.py"

# Missing from the device machine's image (or there at versions this project has not tested).
# Versions come from the venv that runs ``prepare``; --no-deps, so torch is never pulled.
WHEELS = ("diffusers", "transformers", "tokenizers", "accelerate", "safetensors", "huggingface_hub",
          "fastapi", "starlette", "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
          "uvicorn", "python-multipart", "importlib_metadata", "lazy-importer", "opentelemetry-api", "httpx2",
          "httpcore2", "truststore", "hf-xet")
# The device image's packages (/work/.library/device/KINDS.md, read 2026-11-17) that the wheels
# above may rely on; ``prepare`` fails when a wheel needs something in neither list.
DEVICE_HAS = ("torch", "numpy", "pillow", "requests", "urllib3", "certifi", "idna", "charset-normalizer", "filelock",
              "fsspec", "packaging", "pyyaml", "regex", "tqdm", "typing-extensions", "zipp", "anyio", "h11",
              "httpx", "httpcore", "click", "psutil", "prometheus-client", "scipy", "typer", "rich", "shellingham",
              "annotated-doc", "markdown-it-py", "mdurl", "pygments", "jinja2", "markupsafe", "sympy", "networkx")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux1_x86_64")
MAX_CARRY_MIB = 48  # the device run's working tree is capped at 64 MiB

# Opt-in sampler variants, each measured against the main (compiled) run of the same job.
VARIANTS = {
    "fused": {"SAMPLER_FUSE_QKV": "1", "SAMPLER_CHANNELS_LAST": "1"},
    "vae-graphs": {"SAMPLER_COMPILE_VAE": "1"},
    "fp8": {"SAMPLER_PRECISION": "fp8", "SAMPLER_DTYPE": "fp16"},
}

# Seconds a step needs at least, to be worth starting: (GPU, rehearsal). From the H100 notes
# (compiled first calls 43-63 s per shape) and the CPU rehearsal.
MIN_STEP_S = {"model": (60, 20), "plain": (150, 20), "sampler": (200, 30), "warm": (45, 10), "variant": (150, 30)}


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


# -- prepare ---------------------------------------------------------------------------------
def prepare(args) -> int:
    from importlib.metadata import version

    wheels = BENCH_DIR / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    if args.torchao:
        pins.append(f"torchao=={args.torchao}")
    platform_flags = [flag for p in WHEEL_PLATFORMS for flag in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *platform_flags, "-d", str(wheels), *pins]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    missing = unmet_requirements(wheels)
    if missing:
        print("these wheels need packages neither shipped nor on the device machine: "
              + "; ".join(missing), file=sys.stderr)
        return 1
    baseline = Path(args.baseline)
    shutil.copy2(baseline, BENCH_DIR / baseline.name)
    exclude = REPO / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if "/.gpu-bench/" not in lines:
        exclude.write_text("\n".join([*lines, "/.gpu-bench/"]) + "\n")
    size = sum(p.stat().st_size for p in BENCH_DIR.rglob("*") if p.is_file())
    print(f"{BENCH_DIR}: {len(list(wheels.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB")
    if size > MAX_CARRY_MIB * 2**20:
        print(f"over {MAX_CARRY_MIB} MiB: the device run's tree is capped at 64 MiB", file=sys.stderr)
        return 1
    return 0


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def unmet_requirements(wheels: Path) -> list[str]:
    """Requirements of the downloaded wheels (for Python 3.12 on x86-64 Linux, no extras) that
    are neither among the wheels nor in DEVICE_HAS."""
    import zipfile

    from packaging.requirements import Requirement

    env = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_machine": "x86_64",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "extra": "",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    shipped, needs = set(), []
    for wheel in sorted(wheels.glob("*.whl")):
        shipped.add(_norm(wheel.name.split("-")[0]))
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode().splitlines():
                if line.startswith("Requires-Dist:"):
                    req = Requirement(line.split(":", 1)[1].strip())
                    if req.marker is None or req.marker.evaluate(env):
                        needs.append((wheel.name.split("-")[0], _norm(req.name)))
    have = shipped | {_norm(n) for n in DEVICE_HAS}
    return sorted({f"{who} needs {name}" for who, name in needs if name not in have})


# -- run -------------------------------------------------------------------------------------
@dataclass
class Runner:
    out: Path
    budget_s: float
    rehearse: bool
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.rows_path = self.out / "rows.jsonl"
        self.rows_path.write_text("")
        self.log = (self.out / "steps.log").open("a")

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def row(self, **row) -> dict:
        row.setdefault("at_s", round(time.monotonic() - self.started, 1))
        with self.rows_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        emit(**row)
        return row

    def fits(self, step: str, name: str) -> bool:
        need = MIN_STEP_S[step][1 if self.rehearse else 0]
        if self.left() < need:
            self.row(source="meta", event="skipped", step=name,
                     reason=f"budget: {self.left():.0f} s left, the step needs at least {need} s")
            return False
        return True

    def child(self, name: str, cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None,
              why: Callable[[], str] | None = None) -> tuple[int, list[tuple[float, dict]]]:
        """Run a child, tee its output to steps.log; returns its status and its JSON lines, each
        with the seconds since the child started when it was read."""
        timeout = self.left() if timeout is None else min(timeout, self.left())
        self.log.write(f"\n=== {name}: {' '.join(cmd)}\n")
        self.log.flush()
        began = time.monotonic()
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        lines: list[tuple[float, dict]] = []
        assert proc.stdout is not None
        # A watchdog, not select(): the children print line by line, and a kill closes the pipe.
        import threading

        timer = threading.Timer(max(1.0, timeout), proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                self.log.write(line)
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        lines.append((time.monotonic() - began, json.loads(line)))
            code = proc.wait()
        finally:
            timer.cancel()
            self.log.flush()
        if code != 0:
            timed_out = time.monotonic() - began >= timeout - 1
            reason = "stopped: over its share of the budget" if timed_out else (why() if why else "") or \
                "exited non-zero; see steps.log"
            self.row(source="meta", event="step_failed", step=name, code=code, reason=reason)
        return code, lines


def _last_error(log: Path) -> str:
    """The sampler's last error line (its startup refusal, say), for the table."""
    if not log.exists():
        return ""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if "error" in line.lower():
            try:
                entry = json.loads(line)
                text = entry.get("exc") or entry.get("msg", "")
                line = str(text).strip().splitlines()[-1] if text else line
            except ValueError:
                pass
            return line.strip()[:300]
    return ""


def _append_log(src: Path, dest: Path, name: str) -> None:
    if src.exists():
        with dest.open("a") as f:
            f.write(f"\n=== {name}\n")
            f.write(src.read_text(errors="replace"))


def run(args) -> int:
    r = Runner(Path(args.out), args.budget_s, args.rehearse)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-bench-"))
    preset = "tiny" if args.rehearse else "sd15"
    baseline = Path(args.baseline)
    r.row(source="meta", event="config", preset=preset, rehearse=args.rehearse, budget_s=args.budget_s,
          clients=args.clients, duration_s=args.duration, compile=not args.rehearse or args.rehearse_compile,
          variants=args.variants, date=time.strftime("%Y-%m-%d"), python=sys.version.split()[0])
    probe = subprocess.run([sys.executable, "-c", "import torch, json; c = torch.cuda.is_available(); print(json.dumps("
                            "{'torch': torch.__version__, 'device': torch.cuda.get_device_name() if c else 'cpu'}))"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        r.row(source="meta", event="machine", **json.loads(probe.stdout.strip().splitlines()[-1]))

    # 1. the model, built on the CPU (4 threads, niced) while the baseline runs on the GPU: the
    # baseline makes its own model, and its timed calls come after its warm-up calls.
    model = work / f"model-{preset}"
    build: subprocess.Popen | None = None
    began = time.monotonic()
    if not (model / "model_index.json").exists():
        if not r.fits("model", "model"):
            return finish(r)
        build = subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "diffusion_sampler.build_model",
                                  "--preset", preset, "--out", str(model)], cwd=REPO,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "4"},
                                 stdout=r.log, stderr=subprocess.STDOUT)

    # 2. the plain baseline
    if r.fits("plain", "plain"):
        env = {"COMPILE": "1", "BATCHES": args.plain_batches,
               "BUDGET_S": str(max(30, int(min(args.plain_budget_s, r.left() - 240))))}
        if args.rehearse:
            env["TINY"] = "1"
        _, lines = r.child("plain", [sys.executable, str(baseline)], env=env,
                           timeout=args.plain_budget_s + (60 if args.rehearse else 240))
        for received_s, line in lines:
            r.row(source="plain", received_s=round(received_s, 1), **line)
    if build is not None:
        try:
            code = build.wait(timeout=max(1.0, r.left()))
        except subprocess.TimeoutExpired:
            build.kill()
            code = -9
        if code != 0:
            r.row(source="meta", event="step_failed", step="model", code=code, reason="the model build failed")
            return finish(r)
        r.row(source="meta", event="model_built", seconds=round(time.monotonic() - began, 1),
              overlapped_with="plain")

    # 3. the sampler, compiled, against an empty compile cache; 4. restarted against a warm one
    cache = work / "compile-cache"
    shutil.rmtree(cache, ignore_errors=True)
    compiled = not args.rehearse or args.rehearse_compile
    compile_flags = ["--compile", "--compile-buckets", args.buckets] if compiled else []
    images = work / "images"

    def sampler(name: str, extra: list[str], env: list[str]) -> bool:
        rows_file, server_log = work / f"{name}.json", work / f"{name}.log"
        rows_file.unlink(missing_ok=True)
        cmd = [sys.executable, "benchmarks/sampler_bench.py", "--preset", preset, "--model-dir", str(model),
               "--no-plain", "--rounds", "1", "--warm", str(args.warm), "--duration", str(args.duration),
               "--clients", args.clients, "--compile-cache-dir", str(cache), "--server-log", str(server_log),
               "--json-out", str(rows_file), "--ready-timeout", str(max(30, int(r.left()))),
               *compile_flags, *extra, *[f"--env={e}" for e in env]]
        if args.rehearse:
            cmd += ["--threads", "1", "--device", "cpu"]
        code, _ = r.child(name, cmd, env={"HF_HUB_OFFLINE": "1"}, why=lambda: _last_error(server_log))
        _append_log(server_log, r.out / "server.log", name)
        if code == 0 and rows_file.exists():
            for row in json.loads(rows_file.read_text()):
                r.row(source="sampler", variant=name, **row)
        return code == 0

    if r.fits("sampler", "sampler"):
        main_ok = sampler("main", ["--images-out", str(images / "main"), "--fidelity-seeds", str(args.seeds)], [])
        if main_ok and r.fits("warm", "warm-restart"):
            sampler("warm-restart", ["--ready-only"], [])
        for variant in [v for v in args.variants.split(",") if v]:
            if variant not in VARIANTS:
                r.row(source="meta", event="skipped", step=variant, reason="unknown variant")
                continue
            if not main_ok or not r.fits("variant", variant):
                continue
            env = [f"{k}={v}" for k, v in VARIANTS[variant].items()]
            if sampler(variant, ["--images-out", str(images / variant), "--fidelity-seeds", str(args.seeds),
                                 "--clients", args.variant_clients], env):
                fidelity(r, variant, images / "main", images / variant)
    return finish(r)


def fidelity(r: Runner, variant: str, base: Path, other: Path) -> None:
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "inference_image"))
    from diffusion_sampler.fidelity import summary

    pairs = [(np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(other / a.name).convert("RGB")))
             for a in sorted(base.glob("seed-*.png")) if (other / a.name).exists()]
    if pairs:
        r.row(source="fidelity", variant=variant, against="main", **summary(pairs))


def finish(r: Runner) -> int:
    rows = [json.loads(line) for line in r.rows_path.read_text().splitlines() if line]
    text = render(rows, budget_left_s=r.left())
    (r.out / "table.md").write_text(text)
    print()
    print(text)
    return 0


# -- the table -------------------------------------------------------------------------------
def _fmt(value, spec: str = ".2f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _ratio(a, b) -> str:
    if a is None or b in (None, 0):
        return "-"
    return f"{a / b:.2f}x"


def plain_reference(rows: Iterable[dict]) -> dict:
    """The best plain variants of the run: throughput (any batch) and batch-1 time."""
    runs = [r for r in rows if r.get("source") == "plain" and r.get("event") == "pipeline"]
    ref: dict = {"runs": runs}
    if not runs:
        return ref
    best = max(runs, key=lambda r: r["images_per_s"])
    ref.update(images_per_s=best["images_per_s"], peak_gib=best.get("peak_gib"),
               throughput_label=f"{best['variant']}, batch {best['batch']}")
    ones = [r for r in runs if r["batch"] == 1]
    if ones:
        fastest = min(ones, key=lambda r: r["sec_per_call"])
        ref.update(b1_s=fastest["sec_per_call"], b1_label=fastest["variant"])
    loaded = next((r for r in rows if r.get("source") == "plain" and r.get("event") == "loaded"), None)
    compiled = next((r for r in rows if r.get("source") == "plain" and r.get("event") == "cuda_graphs_compile_and_run_s"
                     and r.get("batch") == 1), None)
    compiled_b1 = next((r for r in runs if r["batch"] == 1 and r["variant"] != "eager"), None)
    if loaded is not None:
        ref["ready_eager_s"] = loaded.get("received_s")
        if compiled is not None and compiled_b1 is not None:
            # process start -> model loaded, then the first compiled call (the step minus its 5 timed calls)
            ref["ready_compiled_s"] = loaded.get("received_s", 0) + compiled["s"] - 5 * compiled_b1["sec_per_call"]
    return ref


def render(rows: list[dict], budget_left_s: float | None = None) -> str:
    meta = {r["event"]: r for r in rows if r.get("source") == "meta" and r.get("event") in ("config", "machine")}
    machine, config = meta.get("machine", {}), meta.get("config", {})
    ref = plain_reference(rows)
    sampler_rows = [r for r in rows if r.get("source") == "sampler" and r.get("mode") == "sampler"]
    warm = next((r for r in rows if r.get("source") == "sampler" and r.get("mode") == "ready"), None)
    out = [f"device: {machine.get('device', '?')}; torch {machine.get('torch', '?')}; date {config.get('date', '?')}; "
           f"preset {config.get('preset', '?')}{' (CPU rehearsal)' if config.get('rehearse') else ''}; "
           f"compile {config.get('compile', '?')}"]
    if config.get("rehearse"):
        out.append("CPU rehearsal: the baseline's TINY model (16x16, 4 steps) differs from the sampler's tiny preset "
                   "(32x32, 10 steps), so the ratios below check the plumbing, not the speed")
    if "images_per_s" in ref:
        out.append(f"best plain throughput: {ref['images_per_s']:.2f} images/s ({ref['throughput_label']}, "
                   f"peak {_fmt(ref.get('peak_gib'), '.1f')} GiB); best plain batch-1 call: "
                   f"{_fmt(ref.get('b1_s'), '.3f')} s ({ref.get('b1_label', '-')}); plain to ready: "
                   f"{_fmt(ref.get('ready_eager_s'), '.1f')} s eager, {_fmt(ref.get('ready_compiled_s'), '.1f')} s "
                   "compiled (derived: model loaded + first compiled call)")
    else:
        out.append("no plain baseline rows: ratios cannot be computed")
    out += ["",
            "| variant | clients | images/s | x best plain | p50 s | p95 s | p50 / plain b1 | mean batch | "
            "GPU peak GiB | x plain peak | ready s | ready s, restart on the warm compile cache |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sampler_rows:
        is_main = r.get("variant") == "main"
        out.append(
            f"| {r.get('variant')} | {r['clients']} | {_fmt(r['images_per_s'])} | "
            f"{_ratio(r['images_per_s'], ref.get('images_per_s'))} | {_fmt(r['p50'], '.3f')} | "
            f"{_fmt(r['p95'], '.3f')} | {_ratio(r['p50'], ref.get('b1_s'))} | {_fmt(r.get('mean_batch'))} | "
            f"{_fmt(r.get('gpu_peak_gib'), '.1f')} | {_ratio(r.get('gpu_peak_gib'), ref.get('peak_gib'))} | "
            f"{_fmt(r.get('ready_s'), '.1f')} | {_fmt(warm.get('ready_s'), '.1f') if warm and is_main else '-'} |")
    if not sampler_rows:
        out.append("| (no sampler rows) | | | | | | | | | | | |")
    out += ["", *targets(sampler_rows, ref, warm)]
    fid = [r for r in rows if r.get("source") == "fidelity"]
    if fid:
        out += ["", "| variant | against | images | PSNR mean dB | PSNR min dB | max pixel diff |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['variant']} | {r['against']} | {r['images']} | {_fmt(r['psnr_mean_db'], '.1f')} | "
                f"{_fmt(r['psnr_min_db'], '.1f')} | {r['max_abs_diff']} |" for r in fid]
    notes = [r for r in rows if r.get("source") == "meta" and r.get("event") in ("skipped", "step_failed")]
    if notes:
        out += ["", "Not measured in this run:"]
        out += [f"- {r['step']}: {r.get('reason', '')}" + (f" (exit {r['code']})" if "code" in r else "")
                for r in notes]
    if budget_left_s is not None:
        out += ["", f"budget left at the end: {budget_left_s:.0f} s"]
    return "\n".join(out) + "\n"


def targets(sampler_rows: list[dict], ref: dict, warm: dict | None) -> list[str]:
    """The issue's targets, as ratios to the plain reference of the same run."""
    main = {r["clients"]: r for r in sampler_rows if r.get("variant") == "main"}
    lines = ["Targets (same-run ratios):"]

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else "met" if ok else "missed"

    many = main.get(max(main)) if main and max(main) > 1 else None
    if many is not None and "images_per_s" in ref:
        ratio = many["images_per_s"] / ref["images_per_s"]
        ok = ratio >= 1.3 and many["p95"] < 5
        lines.append(f"- {many['clients']} clients >= 1.3x best plain images/s with p95 < 5 s: {verdict(ok)} "
                     f"({ratio:.2f}x, p95 {many['p95']:.2f} s; moonshot 1.6x)")
    else:
        lines.append(f"- many clients >= 1.3x best plain images/s with p95 < 5 s: {verdict(None)}")
    one = main.get(1)
    if one is not None and ref.get("b1_s"):
        ratio = one["p50"] / ref["b1_s"]
        lines.append(f"- 1 client p50 within 1.1x of the best plain batch-1 call: {verdict(ratio <= 1.1)} "
                     f"({ratio:.2f}x)")
    else:
        lines.append(f"- 1 client p50 within 1.1x of the best plain batch-1 call: {verdict(None)}")
    if warm is not None:
        lines.append(f"- restart with a warm compile cache ready in < 15 s: {verdict(warm['ready_s'] < 15)} "
                     f"({warm['ready_s']:.1f} s)")
    else:
        lines.append(f"- restart with a warm compile cache ready in < 15 s: {verdict(None)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download the wheels and copy the baseline into .gpu-bench/")
    p.add_argument("--baseline", default=str(SHARED_BASELINE))
    p.add_argument("--torchao", help="also download this torchao version (for the fp8 variant)")
    p = sub.add_parser("run", help="the measurement (GPU), or its rehearsal (--rehearse, CPU)")
    p.add_argument("--out", required=True)
    p.add_argument("--rehearse", action="store_true", help="tiny model, CPU, TINY=1 baseline, short windows")
    p.add_argument("--rehearse-compile", action="store_true", help="with --rehearse: compile too (slow on a CPU)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting steps past this (default 7 min)")
    p.add_argument("--baseline", default=None,
                   help="plain_diffusers_baseline.py (default: .gpu-bench/, then ../shared)")
    p.add_argument("--work", help="model, compile cache and images (default: a new temporary directory)")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--variant-clients", default="1,32")
    p.add_argument("--duration", type=float, help="measured seconds per client count (default 15; rehearsal 4)")
    p.add_argument("--warm", type=float, help="unmeasured seconds before each window (default 8; rehearsal 1)")
    p.add_argument("--buckets", default="1,8,16", help="compile buckets (batch sizes) at 512x512")
    p.add_argument("--plain-batches", default="1,8",
                   help="the baseline's eager batch sizes (BATCHES); its compiled runs are batch 1 and 16")
    p.add_argument("--plain-budget-s", type=float, default=170.0, help="the baseline's own BUDGET_S")
    p.add_argument("--seeds", type=int, default=4, help="fixed-seed images per variant, for the PSNR")
    p.add_argument("--variants", default="",
                   help=f"comma-separated, in order, while the budget lasts: {sorted(VARIANTS)}")
    p = sub.add_parser("table", help="print the table from recorded rows")
    p.add_argument("rows")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args)
    if args.command == "table":
        rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.strip()]
        print(render(rows), end="")
        return 0
    if args.baseline is None:
        local = BENCH_DIR / "plain_diffusers_baseline.py"
        args.baseline = str(local if local.exists() else SHARED_BASELINE)
    if args.duration is None:
        args.duration = 4.0 if args.rehearse else 15.0
    if args.warm is None:
        args.warm = 1.0 if args.rehearse else 8.0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
