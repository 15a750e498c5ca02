"""Request bodies and their validation against the configured limits.

Pydantic checks types; ``resolve`` checks the limits that come from configuration (the operator
sets them from the DiffusionModel) and turns a request into a batch ``Shape`` plus one ``Item``
per image. Every violation is an ``ApiError`` naming the field and the limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import SCHEDULERS, Settings
from .engine import Item, Shape

MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 50.0
_SIZE = re.compile(r"^(\d+)x(\d+)$")


class ApiError(Exception):
    """An error answered in the OpenAI error shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 429:
            kind = "rate_limit_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _Extensions(BaseModel):
    # Strict: JSON types as documented (true is not a guidance scale, "4" not a step count);
    # an integer is still a number.
    model_config = ConfigDict(strict=True)

    negative_prompt: str | None = Field(None, description="What to steer away from.")
    steps: int | None = Field(None, description="Denoising steps (default and limit from configuration).")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance scale, 0..50.")
    seed: int | None = Field(None, description="Seed of the first image; image i uses seed + i. Random if absent.")
    scheduler: Literal[SCHEDULERS] | None = Field(None, description="Sampler; the model's default if absent.")  # type: ignore[valid-type]
    timeout_s: float | None = Field(None, description="Deadline: 504 if the request has not started by then.")


class ImageGenerationRequest(_Extensions):
    """OpenAI ``POST /v1/images/generations`` plus the extensions above. Unknown OpenAI fields
    (quality, style, user, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)
    prompt: str
    model: str | None = None
    n: int | None = Field(None, description="Number of images (1..SAMPLER_MAX_IMAGES).")
    size: str | None = Field(None, description="WIDTHxHEIGHT, multiples of 8, or 'auto'.")
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="b64_json (default) or url (a data: URL; nothing is stored).")


class GenerateRequest(_Extensions):
    """The native form: explicit width/height, input images as base64."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str
    n: int | None = None
    width: int | None = None
    height: int | None = None
    strength: float | None = Field(None, description="Image-to-image/inpainting: how much to change, 0..1.")
    image: str | None = Field(None, description="Base64 PNG/JPEG input image (image-to-image, inpainting).")
    mask: str | None = Field(None, description="Base64 mask; white (or alpha 0) marks what to repaint.")


def parse_size(size: str | None, settings: Settings) -> tuple[int | None, int | None]:
    if size in (None, "", "auto"):
        return None, None
    match = _SIZE.match(size.strip())
    if not match:
        raise ApiError(422, f"size must be WIDTHxHEIGHT (for example 512x512); got {size!r}", "size", "invalid_size")
    return int(match.group(1)), int(match.group(2))


def decode_image(data: bytes, field: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ApiError(422, f"{field} is not a readable image (PNG, JPEG or WebP)", field, "invalid_image") from exc
    return image


def decode_b64_image(text: str, field: str):
    try:
        data = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, f"{field} is not valid base64", field, "invalid_image") from exc
    return decode_image(data, field)


def to_mask(image, width: int, height: int):
    """OpenAI masks mark the area to edit by alpha 0; plain masks by white. diffusers wants white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        mask = alpha.point(lambda a: 255 if a == 0 else 0)
    else:
        mask = image.convert("L")
    return mask.resize((width, height), Image.Resampling.NEAREST)


def _check_range(value, field: str, low, high, what: str = "") -> None:
    if value < low or value > high:
        raise ApiError(422, f"{field} must be between {low} and {high}{what}; got {value}", field, "out_of_range")


def resolve(settings: Settings, *, prompt: str, negative_prompt: str | None, n: int | None,
            width: int | None, height: int | None, steps: int | None, guidance_scale: float | None,
            seed: int | None, scheduler: str | None, timeout_s: float | None, strength: float | None = None,
            image=None, mask=None) -> tuple[Shape, list[Item], float]:
    """Validate against the limits and build the batch shape and items."""
    s = settings
    kind = s.pipeline_kind
    if not prompt or not prompt.strip():
        raise ApiError(422, "prompt must not be empty", "prompt", "empty_prompt")
    for field, text in (("prompt", prompt), ("negative_prompt", negative_prompt or "")):
        if len(text) > s.max_prompt_length:
            raise ApiError(422, f"{field} is {len(text)} characters; the limit is {s.max_prompt_length}",
                           field, "prompt_too_long")
    n = 1 if n is None else n
    _check_range(n, "n", 1, s.max_images, " (images per request)")
    width = s.default_width if width is None else width
    height = s.default_height if height is None else height
    for field, value, limit in (("width", width, s.max_width), ("height", height, s.max_height)):
        if value < 8 or value > limit:
            raise ApiError(422, f"{field} must be between 8 and {limit}; got {value}", field, "out_of_range")
        if value % 8:
            raise ApiError(422, f"{field} must be a multiple of 8; got {value}", field, "not_multiple_of_8")
    steps = s.default_steps if steps is None else steps
    _check_range(steps, "steps", 1, s.max_steps)
    guidance = s.default_guidance_scale if guidance_scale is None else guidance_scale
    _check_range(guidance, "guidance_scale", 0.0, MAX_GUIDANCE)
    if seed is not None:
        _check_range(seed, "seed", 0, MAX_SEED - s.max_images)
    base_seed = secrets.randbelow(2**32) if seed is None else seed
    scheduler = s.default_scheduler if scheduler is None else scheduler
    if scheduler not in SCHEDULERS:
        raise ApiError(422, f"scheduler must be one of {', '.join(SCHEDULERS)}", "scheduler", "invalid_scheduler")
    timeout = s.request_timeout_s if timeout_s is None else timeout_s
    if timeout <= 0 or timeout > s.request_timeout_s:
        raise ApiError(422, f"timeout_s must be above 0 and at most {s.request_timeout_s}; got {timeout}",
                       "timeout_s", "out_of_range")
    if kind == "text-to-image":
        if image is not None or mask is not None:
            raise ApiError(422, "this model's pipeline kind is text-to-image; it does not accept input images",
                           "image" if image is not None else "mask", "unsupported_pipeline_kind")
        if strength is not None:
            raise ApiError(422, "strength applies to image-to-image and inpainting models only", "strength",
                           "unsupported_pipeline_kind")
        strength = 1.0
    else:
        if image is None:
            raise ApiError(422, f"image is required: this model's pipeline kind is {kind}", "image", "missing_image")
        if kind == "inpainting" and mask is None:
            raise ApiError(422, "mask is required: this model's pipeline kind is inpainting", "mask", "missing_mask")
        if kind == "image-to-image" and mask is not None:
            raise ApiError(422, "this model's pipeline kind is image-to-image; it does not take a mask "
                                "(an inpainting model does)", "mask", "unsupported_pipeline_kind")
        strength = (0.75 if kind == "image-to-image" else 1.0) if strength is None else strength
        if not 0.0 < strength <= 1.0:
            raise ApiError(422, f"strength must be above 0 and at most 1; got {strength}", "strength", "out_of_range")
        if kind == "image-to-image" and int(steps * strength) < 1:
            raise ApiError(422, f"steps x strength must be at least 1; got {steps} x {strength}", "strength",
                           "out_of_range")
        from PIL import Image

        image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        mask = to_mask(mask, width, height) if mask is not None else None
    shape = Shape(width, height, steps, float(guidance), scheduler, float(strength))
    items = [Item(prompt, negative_prompt or "", base_seed + i, image, mask) for i in range(n)]
    return shape, items, timeout
