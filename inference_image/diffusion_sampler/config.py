"""Typed settings, read once from the environment at startup.

Every variable is documented in ``docs/sampler-contract.md`` (the speed knobs added for the GPU
work, ``SAMPLER_PRECISION`` to ``SAMPLER_FAULT_ENCODE_LATENCY_S``, in ``docs/sampler.md``); the
operator sets them from the DiffusionModel and the pool. Nothing else in the package reads
``os.environ`` (``compile_cache`` writes ``TORCHINDUCTOR_CACHE_DIR``, for torch to read).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PIPELINE_KINDS = ("text-to-image", "image-to-image", "inpainting")
SCHEDULERS = (
    "ddim",
    "ddpm",
    "pndm",
    "euler",
    "euler-ancestral",
    "dpm-solver-multistep",
    "dpm-solver-sde",
    "lms",
    "heun",
    "unipc",
)

# "default": weights and compute in SAMPLER_DTYPE. "fp8": the UNet's linear layers in float8
# (torchao, dynamic activation scaling) on GPUs with compute capability 8.9 or newer; opt-in only,
# its fidelity against fp16 is measured by benchmarks/gpu_bench.py (PSNR on the same seeds).
PRECISIONS = ("default", "fp8")


class ConfigError(ValueError):
    """A setting is missing or malformed; the process refuses to start."""


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    pool: str = "unknown"
    revision: str = "unknown"
    model_name: str = ""
    pipeline_kind: str = "text-to-image"
    dtype: str = "fp16"
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    default_scheduler: str = "dpm-solver-multistep"
    default_steps: int = 30
    default_guidance_scale: float = 7.5
    default_width: int = 512
    default_height: int = 512
    max_steps: int = 100
    max_width: int = 1024
    max_height: int = 1024
    max_images: int = 4
    max_prompt_length: int = 2000
    max_body_bytes: int = 20 * 1024 * 1024
    max_batch_size: int = 8
    max_wait_ms: float = 50.0
    max_queue: int = 64
    request_timeout_s: float = 120.0
    drain_timeout_s: float = 60.0
    safety_checker: str = "auto"
    safety_blocklist: tuple[str, ...] = ()
    safety_replacement: str = "black"
    slo_latency_thresholds_s: tuple[float, ...] = ()
    compile: bool = False
    compile_buckets: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)
    compile_vae: bool = False
    compile_cache_dir: Path | None = None
    precision: str = "default"
    fuse_qkv: bool = False
    channels_last: bool = False
    prompt_cache_size: int = 256
    warmup: bool = True
    fault_error_rate: float = 0.0
    fault_latency_s: float = 0.0
    fault_encode_latency_s: float = 0.0
    #: "nan": every decoded image is NaN (the sampler flags it, serves it flat grey); "noise": every
    #: image is uniform noise. Tests of the golden-render gate only.
    fault_image: str = ""
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            value = env.get(f"SAMPLER_{name}")
            return default if value is None or value == "" else value

        def num(name: str, default, kind=int):
            raw = get(name, str(default))
            try:
                return kind(raw)
            except ValueError as exc:
                raise ConfigError(f"SAMPLER_{name}={raw!r} is not a {kind.__name__}") from exc

        model_dir = env.get("SAMPLER_MODEL_DIR")
        if not model_dir:
            raise ConfigError("SAMPLER_MODEL_DIR is required")
        kind = get("PIPELINE_KIND", "text-to-image")
        if kind not in PIPELINE_KINDS:
            raise ConfigError(f"SAMPLER_PIPELINE_KIND={kind!r}; expected one of {PIPELINE_KINDS}")
        scheduler = get("DEFAULT_SCHEDULER", "dpm-solver-multistep")
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"SAMPLER_DEFAULT_SCHEDULER={scheduler!r}; expected one of {SCHEDULERS}")
        dtype = get("DTYPE", "fp16")
        if dtype not in ("fp16", "bf16", "fp32"):
            raise ConfigError(f"SAMPLER_DTYPE={dtype!r}; expected fp16, bf16 or fp32")
        device = get("DEVICE", "auto")
        if device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"SAMPLER_DEVICE={device!r}; expected auto, cuda or cpu")
        checker = get("SAFETY_CHECKER", "auto")
        if checker not in ("auto", "off"):
            raise ConfigError(f"SAMPLER_SAFETY_CHECKER={checker!r}; expected auto or off")
        replacement = get("SAFETY_REPLACEMENT", "black")
        if replacement not in ("black", "blur"):
            raise ConfigError(f"SAMPLER_SAFETY_REPLACEMENT={replacement!r}; expected black or blur")
        try:
            thresholds = tuple(sorted({float(x) for x in _csv(get("SLO_LATENCY_THRESHOLDS_S", ""))}))
        except ValueError as exc:
            raise ConfigError("SAMPLER_SLO_LATENCY_THRESHOLDS_S must be comma-separated seconds") from exc
        fault_image = get("FAULT_IMAGE", "")
        if fault_image not in ("", "nan", "noise"):
            raise ConfigError(f"SAMPLER_FAULT_IMAGE={fault_image!r}; expected nan or noise (or unset)")
        precision = get("PRECISION", "default")
        if precision not in PRECISIONS:
            raise ConfigError(f"SAMPLER_PRECISION={precision!r}; expected one of {PRECISIONS}")
        if precision == "fp8" and dtype == "fp32":
            raise ConfigError("SAMPLER_PRECISION=fp8 computes in fp16 or bf16: set SAMPLER_DTYPE to one of them")
        cache_dir = get("COMPILE_CACHE_DIR", "")
        error_rate = num("FAULT_ERROR_RATE", 0.0, float)
        if not 0.0 <= error_rate <= 1.0:
            raise ConfigError("SAMPLER_FAULT_ERROR_RATE must be within 0..1")
        settings = cls(
            model_dir=Path(model_dir),
            pool=get("POOL", "unknown"),
            revision=get("REVISION", "unknown"),
            model_name=get("MODEL_NAME", Path(model_dir).name),
            pipeline_kind=kind,
            dtype=dtype,
            device=device,
            host=get("HOST", "127.0.0.1"),
            port=num("PORT", 8000),
            default_scheduler=scheduler,
            default_steps=num("DEFAULT_STEPS", 30),
            default_guidance_scale=num("DEFAULT_GUIDANCE_SCALE", 7.5, float),
            default_width=num("DEFAULT_WIDTH", 512),
            default_height=num("DEFAULT_HEIGHT", 512),
            max_steps=num("MAX_STEPS", 100),
            max_width=num("MAX_WIDTH", 1024),
            max_height=num("MAX_HEIGHT", 1024),
            max_images=num("MAX_IMAGES", 4),
            max_prompt_length=num("MAX_PROMPT_LENGTH", 2000),
            max_body_bytes=num("MAX_BODY_BYTES", 20 * 1024 * 1024),
            max_batch_size=max(1, num("MAX_BATCH_SIZE", 8)),
            max_wait_ms=num("MAX_WAIT_MS", 50.0, float),
            max_queue=max(1, num("MAX_QUEUE", 64)),
            request_timeout_s=num("REQUEST_TIMEOUT_S", 120.0, float),
            drain_timeout_s=num("DRAIN_TIMEOUT_S", 60.0, float),
            safety_checker=checker,
            safety_blocklist=tuple(t.lower() for t in _csv(get("SAFETY_BLOCKLIST", ""))),
            safety_replacement=replacement,
            slo_latency_thresholds_s=thresholds,
            compile=get("COMPILE", "0") == "1",
            compile_buckets=parse_buckets(get("COMPILE_BUCKETS", "")),
            compile_vae=get("COMPILE_VAE", "0") == "1",
            compile_cache_dir=Path(cache_dir) if cache_dir else None,
            precision=precision,
            fuse_qkv=get("FUSE_QKV", "0") == "1",
            channels_last=get("CHANNELS_LAST", "0") == "1",
            prompt_cache_size=max(0, num("PROMPT_CACHE_SIZE", 256)),
            warmup=get("WARMUP", "1") == "1",
            fault_error_rate=error_rate,
            fault_latency_s=num("FAULT_LATENCY_S", 0.0, float),
            fault_encode_latency_s=num("FAULT_ENCODE_LATENCY_S", 0.0, float),
            fault_image=fault_image,
            log_level=get("LOG_LEVEL", "INFO").upper(),
        )
        for name in ("default_width", "default_height", "max_width", "max_height"):
            if getattr(settings, name) % 8:
                raise ConfigError(f"SAMPLER_{name.upper()} must be a multiple of 8")
        return settings


def parse_buckets(spec: str) -> dict[tuple[int, int], tuple[int, ...]]:
    """``"512x512:1,2,4,8;768x768:1,2"`` -> {(512, 512): (1, 2, 4, 8), (768, 768): (1, 2)}."""
    buckets: dict[tuple[int, int], tuple[int, ...]] = {}
    for part in spec.replace(" ", "").split(";"):
        if not part:
            continue
        try:
            size, _, batches = part.partition(":")
            width, height = (int(v) for v in size.lower().split("x"))
            sizes = tuple(sorted({int(b) for b in batches.split(",") if b})) or (1,)
        except ValueError as exc:
            raise ConfigError(f"SAMPLER_COMPILE_BUCKETS: cannot parse {part!r}") from exc
        buckets[(width, height)] = sizes
    return buckets
