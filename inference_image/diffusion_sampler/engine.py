"""The engine: loads one diffusers pipeline and runs one batch at a time.

Only the batcher's worker thread calls ``Engine.run``: a diffusers pipeline object is not safe
for concurrent calls (the scheduler keeps state; diffusers #1606, #3672, #9833), so nothing here
locks. Each image gets its own seeded CPU generator, so a seed gives the same image whether it
ran alone or inside a batch, and on any device.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import Settings
from .metrics import Metrics
from .safety import DefaultSafetyFilter, SafetyFilter, replace

log = logging.getLogger("diffusion_sampler.engine")

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DECODE_CHUNK = 8  # VAE decode memory grows with batch (diffusers #10350): decode in slices


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
        self._base_scheduler_config = dict(pipe.scheduler.config)
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
        log.info("unet compiled", extra={"mode": mode, "buckets": str(self.settings.compile_buckets)})

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

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def run(self, shape: Shape, items: list[Item], record: bool = True) -> BatchResult:
        s = self.settings
        pipe = self._loaded_pipe()
        n = len(items)
        padded = items + [items[-1]] * (self.padded_size(shape, n) - n)
        pipe.scheduler = self._scheduler(shape.scheduler)
        kwargs = dict(
            prompt=[it.prompt for it in padded],
            negative_prompt=[it.negative_prompt for it in padded],
            num_inference_steps=shape.steps,
            guidance_scale=shape.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(it.seed) for it in padded],
            output_type="latent",
        )
        kind = s.pipeline_kind
        if kind in ("text-to-image", "inpainting"):
            kwargs.update(height=shape.height, width=shape.width)
        if kind in ("image-to-image", "inpainting"):
            kwargs.update(image=[it.image for it in padded], strength=shape.strength)
        if kind == "inpainting":
            kwargs.update(mask_image=[it.mask for it in padded])
        started = time.perf_counter()
        latents = pipe(**kwargs).images
        self._sync()
        denoised = time.perf_counter()
        decoded = self._decode(latents[:n])
        nan = torch.isnan(decoded).flatten(1).any(1).tolist()
        flagged = self.safety.check_images(pipe, decoded.nan_to_num(), self.dtype)
        pixels = ((decoded.nan_to_num() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        flat = pixels.flatten(1)
        blank = ((flat.amax(1) - flat.amin(1)) <= 1).tolist()
        arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
        self._sync()
        finished = time.perf_counter()
        results = []
        for i, it in enumerate(items):
            quality = "nan" if nan[i] else "blank" if blank[i] else "ok"
            image = arrays[i]
            safety = "passed"
            if flagged[i]:
                safety = "blocked_image"
                image = replace(image, s.safety_replacement)
            results.append(ImageResult(image, it.seed, safety, quality))
        denoise_s, decode_s = denoised - started, finished - denoised
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

