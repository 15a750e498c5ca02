"""The engine: loads one diffusers pipeline and runs one batch at a time.

Only the batcher's worker thread calls ``Engine.run``: a diffusers pipeline object is not safe
for concurrent calls (the scheduler keeps state; diffusers #1606, #3672, #9833), so nothing here
locks. Each image gets its own seeded CPU generator, so a seed gives the same image whether it
ran alone or inside a batch, and on any device.

GPU habits kept here: prompt embeddings are cached per prompt (``prompt_cache``), so a repeated
prompt skips the text encoder; there is no host-device synchronisation between the denoising
loop and the end of the batch (CUDA events time the phases; the one wait is the copy of the
finished pixels to the host); with ``compile`` every (size, batch) bucket is captured before
ready, the VAE decoder too when ``compile_vae`` is set. The diffusers loop itself waits on the
GPU once per call (DPM-Solver's first step looks its timestep up with ``nonzero()``), never
per step. fp8 is refused, at load, where it cannot run: never a silent fallback.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import compile_cache
from .config import Settings
from .metrics import Metrics
from .prompt_cache import LRUCache
from .safety import DefaultSafetyFilter, SafetyFilter, replace

log = logging.getLogger("diffusion_sampler.engine")

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DECODE_CHUNK = 8  # VAE decode memory grows with batch (diffusers #10350): decode in slices
# Pipelines whose encode_prompt(prompt, device, n, cfg, negative) returns (positive, negative)
# embeddings that __call__ accepts back as prompt_embeds / negative_prompt_embeds.
_CACHEABLE_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
FP8_MIN_CAPABILITY = (8, 9)


class UnsupportedPrecision(RuntimeError):
    """SAMPLER_PRECISION asks for something this machine cannot do; the process must not start."""


def check_fp8(device: str) -> None:
    """Raise unless fp8 can run here: CUDA, compute capability >= 8.9 (Ada, Hopper), torchao."""
    if device != "cuda":
        raise UnsupportedPrecision(
            "SAMPLER_PRECISION=fp8 needs a CUDA GPU with compute capability 8.9 or newer (L4, L40, H100, "
            f"H200); this process runs on {device}. Unset SAMPLER_PRECISION for fp16/bf16.")
    capability = torch.cuda.get_device_capability()
    if tuple(capability) < FP8_MIN_CAPABILITY:
        raise UnsupportedPrecision(
            f"SAMPLER_PRECISION=fp8 needs compute capability 8.9 or newer; {torch.cuda.get_device_name()} has "
            f"{capability[0]}.{capability[1]}. Unset SAMPLER_PRECISION for fp16/bf16.")
    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        raise UnsupportedPrecision("SAMPLER_PRECISION=fp8 needs torchao in the image (pip install torchao)") from exc


def _quantize_fp8(unet: Any) -> None:
    from torchao.quantization import quantize_

    try:  # torchao >= 0.10 names configs by class; older releases by function
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig as Fp8Config
        config = Fp8Config()
    except ImportError:
        from torchao.quantization import float8_dynamic_activation_float8_weight

        config = float8_dynamic_activation_float8_weight()
    quantize_(unet, config)


def _scheduler_factory(name: str):
    import diffusers as d

    table = {
        "ddim": (d.DDIMScheduler, {}),
        "ddpm": (d.DDPMScheduler, {}),
        "pndm": (d.PNDMScheduler, {"skip_prk_steps": True}),
        "euler": (d.EulerDiscreteScheduler, {}),
        "euler-ancestral": (d.EulerAncestralDiscreteScheduler, {}),
        "dpm-solver-multistep": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
        # DPM++ 2M SDE: its noise comes from the per-image generators, so seeds stay per image
        # (the torchsde-based DPMSolverSDEScheduler draws from one Brownian tree per batch).
        "dpm-solver-sde": (d.DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
        "lms": (d.LMSDiscreteScheduler, {}),
        "heun": (d.HeunDiscreteScheduler, {}),
        "unipc": (d.UniPCMultistepScheduler, {}),
    }
    return table[name]


@dataclass(frozen=True)
class Shape:
    """What must be equal for requests to share one pipeline call."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    strength: float = 1.0


@dataclass
class Item:
    """One image to generate."""

    prompt: str
    negative_prompt: str
    seed: int
    image: object = None  # PIL image for image-to-image / inpainting
    mask: object = None  # PIL image ("L"), white = repaint


@dataclass
class ImageResult:
    pixels: np.ndarray  # H x W x 3 uint8
    seed: int
    safety: str  # "passed" or "blocked_image"
    quality: str  # "ok", "blank" or "nan"


@dataclass
class BatchResult:
    images: list[ImageResult]
    denoise_s: float
    decode_s: float
    batch_size: int
    extra: dict = field(default_factory=dict)


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics, safety: SafetyFilter | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.safety = safety or DefaultSafetyFilter(settings.safety_blocklist, settings.safety_checker == "auto")
        # A diffusers pipeline once load() has run. Any: diffusers' pipeline classes are not typed
        # usefully (components such as unet/vae are set dynamically by register_modules).
        self.pipe: Any | None = None
        self.device = "cpu"
        self.dtype = torch.float32
        self._schedulers: dict[str, object] = {}
        self._base_scheduler_config: dict[str, Any] | None = None
        # (revision, prompt, negative) -> (positive, negative) embeddings of one image, on the device
        self.prompt_cache: LRUCache[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]] = LRUCache(
            settings.prompt_cache_size)
        self._cache_prompts = False
        self.compile_cache: compile_cache.CompileCache | None = None

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        import diffusers

        s = self.settings
        if s.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            self.device = s.device
        self.dtype = _DTYPES[s.dtype]
        if self.device == "cpu" and self.dtype != torch.float32:
            log.warning("half precision requested on CPU; using fp32", extra={"requested_dtype": s.dtype})
            self.dtype = torch.float32
        if s.precision == "fp8":
            check_fp8(self.device)  # before the (long) load: a refusal should come at once
        if s.compile and s.compile_cache_dir is not None:
            self.compile_cache = compile_cache.for_process(s.compile_cache_dir, s.revision, self.device)
            found = self.compile_cache.activate()
            log.info("compile cache", extra={"path": str(self.compile_cache.path), "files_found": found,
                                             "warm": found > 0})
        cls = {
            "text-to-image": diffusers.AutoPipelineForText2Image,
            "image-to-image": diffusers.AutoPipelineForImage2Image,
            "inpainting": diffusers.AutoPipelineForInpainting,
        }[s.pipeline_kind]
        kwargs = {"dtype": self.dtype, "local_files_only": True}
        index = json.loads((s.model_dir / "model_index.json").read_text())
        if s.safety_checker == "off" and "safety_checker" in index:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        started = time.perf_counter()
        pipe = cls.from_pretrained(str(s.model_dir), **kwargs)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if self.dtype == torch.float16 and "XL" in type(pipe).__name__ and pipe.vae.config.get("force_upcast"):
            pipe.vae.to(torch.float32)  # SDXL's VAE gives NaN/black in fp16 (diffusers #7188)
        if s.fuse_qkv:
            pipe.fuse_qkv_projections()  # the UNet's and the VAE's attention: one matmul for q, k, v
        if s.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        if s.precision == "fp8":
            _quantize_fp8(pipe.unet)
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self._cache_prompts = s.prompt_cache_size > 0 and type(pipe).__name__ in _CACHEABLE_PIPELINES
        self.pipe = pipe
        for name in {s.default_scheduler}:
            self._scheduler(name)
        if s.compile:
            self._compile()
        if self.device == "cuda":
            self.metrics.enable_gpu()
        log.info(
            "pipeline loaded",
            extra={
                "pipeline": type(pipe).__name__,
                "device": self.device,
                "dtype": str(self.dtype).replace("torch.", ""),
                "load_s": round(time.perf_counter() - started, 2),
                "precision": s.precision,
                "prompt_cache": self._cache_prompts,
                "image_safety_checker": getattr(self.safety, "has_image_checker", lambda p: False)(pipe),
            },
        )

    def _loaded_pipe(self) -> Any:
        if self.pipe is None:
            raise RuntimeError("the engine has no pipeline: Engine.load() must run first")
        return self.pipe

    def _compile(self) -> None:
        mode = "reduce-overhead" if self.device == "cuda" else "default"
        pipe = self._loaded_pipe()
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.unet = torch.compile(pipe.unet, mode=mode, dynamic=False)
        if self.settings.compile_vae:
            # Decoded at bucket sizes only (see run), in chunks of _DECODE_CHUNK: a few graphs.
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, mode=mode, dynamic=False)
        log.info("unet compiled", extra={"mode": mode, "buckets": str(self.settings.compile_buckets),
                                         "vae": self.settings.compile_vae})

    def _scheduler(self, name: str):
        if name not in self._schedulers:
            if self._base_scheduler_config is None:
                raise RuntimeError("the engine has no scheduler config: Engine.load() must run first")
            cls, overrides = _scheduler_factory(name)
            self._schedulers[name] = cls.from_config({**self._base_scheduler_config, **overrides})
        return self._schedulers[name]

    def warmup(self) -> None:
        """One small batch before ready; with compile, every (size, batch) bucket once."""
        s = self.settings
        runs: list[tuple[int, int, int]] = []
        if s.compile and s.compile_buckets:
            for (width, height), sizes in s.compile_buckets.items():
                runs += [(width, height, b) for b in sizes]
        else:
            runs.append((s.default_width, s.default_height, 1))
        for width, height, batch in runs:
            shape = Shape(width, height, min(3, s.default_steps), s.default_guidance_scale, s.default_scheduler, 0.75)
            items = [Item("warm-up", "", i, *self._warmup_inputs(width, height)) for i in range(batch)]
            started = time.perf_counter()
            self.run(shape, items, record=False)
            log.info("warm-up batch done", extra={"width": width, "height": height, "batch": batch,
                                                  "seconds": round(time.perf_counter() - started, 2)})
        if self.compile_cache is not None:
            log.info("compile cache after warm-up", extra={"path": str(self.compile_cache.path),
                                                           "files": self.compile_cache.entries()})

    def _warmup_inputs(self, width: int, height: int):
        from PIL import Image

        kind = self.settings.pipeline_kind
        if kind == "text-to-image":
            return None, None
        image = Image.new("RGB", (width, height), (127, 127, 127))
        mask = Image.new("L", (width, height), 255) if kind == "inpainting" else None
        return image, mask

    # -- running ---------------------------------------------------------------------------
    def padded_size(self, shape: Shape, n: int) -> int:
        """With torch.compile, pad to the batch bucket so no new shape triggers a recompile."""
        if not self.settings.compile:
            return n
        sizes = self.settings.compile_buckets.get((shape.width, shape.height), ())
        return next((b for b in sizes if b >= n), n)

    def _event(self) -> Any:
        """A CUDA event recorded now on the current stream (None on the CPU): times GPU work
        without making the host wait for it."""
        if self.device != "cuda":
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _embeddings(self, items: list[Item], record: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative prompt embeddings for every item; the text encoder runs once, in
        one batch, for the prompts not in the cache. A prompt repeated inside the batch counts as a
        hit (the encoder ran once for it); padding is not counted."""
        pipe = self._loaded_pipe()
        revision = self.settings.revision
        keys = [(revision, it.prompt, it.negative_prompt) for it in items]
        found: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        missing: list[tuple[str, str, str]] = []
        for key in dict.fromkeys(keys):
            hit = self.prompt_cache.get(key)
            if hit is None:
                missing.append(key)
            else:
                found[key] = hit
        if missing:
            positive, negative = pipe.encode_prompt(
                [k[1] for k in missing], self.device, 1, True, [k[2] for k in missing])
            for i, key in enumerate(missing):
                found[key] = (positive[i : i + 1], negative[i : i + 1])
                self.prompt_cache.put(key, found[key])
        if record:
            m = self.metrics
            m.l(m.prompt_cache, result="miss").inc(len(missing))
            m.l(m.prompt_cache, result="hit").inc(len(keys) - len(missing))
        return torch.cat([found[k][0] for k in keys]), torch.cat([found[k][1] for k in keys])

    @torch.inference_mode()
    def run(self, shape: Shape, items: list[Item], record: bool = True) -> BatchResult:
        s = self.settings
        pipe = self._loaded_pipe()
        n = len(items)
        padded = items + [items[-1]] * (self.padded_size(shape, n) - n)
        pipe.scheduler = self._scheduler(shape.scheduler)
        started = time.perf_counter()
        start_event = self._event()
        kwargs: dict[str, Any] = dict(
            num_inference_steps=shape.steps,
            guidance_scale=shape.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(it.seed) for it in padded],
            output_type="latent",
        )
        if self._cache_prompts:
            positive, negative = self._embeddings(items, record)
            pad = len(padded) - n  # padding repeats the last item, so it reuses its embeddings
            kwargs["prompt_embeds"] = torch.cat([positive, positive[-1:].expand(pad, -1, -1)])
            kwargs["negative_prompt_embeds"] = torch.cat([negative, negative[-1:].expand(pad, -1, -1)])
        else:
            kwargs.update(prompt=[it.prompt for it in padded], negative_prompt=[it.negative_prompt for it in padded])
        kind = s.pipeline_kind
        if kind in ("text-to-image", "inpainting"):
            kwargs.update(height=shape.height, width=shape.width)
        if kind in ("image-to-image", "inpainting"):
            kwargs.update(image=[it.image for it in padded], strength=shape.strength)
        if kind == "inpainting":
            kwargs.update(mask_image=[it.mask for it in padded])
        latents = pipe(**kwargs).images
        denoised = time.perf_counter()  # on CUDA: work queued, not done (the events say when)
        denoise_event = self._event()
        # With a compiled decoder, decode the padded batch: bucket shapes only, no recompiles.
        decoded = self._decode(latents if s.compile and s.compile_vae else latents[:n])[:n]
        if s.fault_image == "nan":  # fault injection (tests): a model whose decoder overflows
            decoded = decoded * float("nan")
        elif s.fault_image == "noise":  # fault injection (tests): a model that renders garbage
            decoded = torch.rand_like(decoded) * 2 - 1
        nan = torch.isnan(decoded).flatten(1).any(1)
        flagged = self.safety.check_images(pipe, decoded.nan_to_num(), self.dtype)
        pixels = ((decoded.nan_to_num() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        flat = pixels.flatten(1)
        blank = (flat.amax(1) - flat.amin(1)) <= 1
        # The one wait for the GPU: the finished pixels and the two flags, copied to the host.
        arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
        flags = torch.stack([nan, blank], 1).tolist()
        finished = time.perf_counter()
        if start_event is not None:
            end_event = self._event()
            end_event.synchronize()  # already done: the copy above waited for it
            denoise_s = start_event.elapsed_time(denoise_event) / 1000
            decode_s = denoise_event.elapsed_time(end_event) / 1000
        else:
            denoise_s, decode_s = denoised - started, finished - denoised
        results = []
        for i, it in enumerate(items):
            quality = "nan" if flags[i][0] else "blank" if flags[i][1] else "ok"
            image = arrays[i]
            safety = "passed"
            if flagged[i]:
                safety = "blocked_image"
                image = replace(image, s.safety_replacement)
            results.append(ImageResult(image, it.seed, safety, quality))
        if record:
            m = self.metrics
            m.l(m.batch_size).observe(n)
            m.l(m.images).inc(n)
            effective_steps = max(1, int(shape.steps * (shape.strength if kind != "text-to-image" else 1.0)))
            m.l(m.step_time).observe(denoise_s / effective_steps)
            for r in results:
                m.l(m.safety, outcome=r.safety).inc()
                if r.quality != "ok":
                    m.l(m.blank, kind=r.quality).inc()
            if self.device == "cuda":
                m.l(m.gpu_memory, kind="allocated").set(torch.cuda.memory_allocated())
                m.l(m.gpu_memory, kind="reserved").set(torch.cuda.memory_reserved())
                m.l(m.gpu_memory, kind="peak").set(torch.cuda.max_memory_allocated())
        return BatchResult(results, denoise_s, decode_s, n)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self._loaded_pipe().vae
        scale = vae.config.get("scaling_factor", 0.18215)
        shift = vae.config.get("shift_factor", None) or 0.0
        latents = latents / scale + shift
        chunks = [
            vae.decode(latents[i : i + _DECODE_CHUNK].to(vae.dtype), return_dict=False)[0]
            for i in range(0, latents.shape[0], _DECODE_CHUNK)
        ]
        return torch.cat(chunks).float()

