"""The golden-render gate: a canary renders a fixed set of prompts and seeds before it gets any
traffic, and is judged against the stable's renders of the same requests. Pure, no I/O.

The DiffusionModel lists the prompts (``spec.goldenRenders``); :mod:`.renderer` asks both
revisions' samplers for the images; :func:`judge` compares them here:

- a canary image the sampler flagged as NaN fails at once (``GoldenRenderNaN``): a NaN
  never is a model's intended output (fp16 overflow in a VAE, a broken checkpoint);
- a canary image that is blank (one flat colour: the sampler's own flag, or a pixel standard
  deviation under ``BLANK_STDDEV``) where the stable's render of the same request is not fails
  (``GoldenRenderBlank``);
- otherwise each pair is compared by the mean absolute pixel difference over RGB, as a share
  of full scale (0 = identical, 1 = black against white), and any pair above
  ``maxMeanDifference`` fails (``GoldenRenderMismatch``, naming the worst prompt by index
  and seed, its difference and the threshold).

The metric is a pixel metric, on purpose: a learned perceptual metric (LPIPS) needs a network
of its own to be served next to the operator. Same weights, same seed and same request give
the same image up to batching and kernel noise (a difference near 0); a fine-tuned checkpoint
moves it moderately; a broken one (noise, wrong VAE, swapped channels) moves it a lot. The
threshold says which a rollout accepts; ``docs/rollouts.md`` gives measured values.

Prompts are never written to status, events or logs: a render is named by its index and seed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BLANK_STDDEV",
    "GoldenOutcome",
    "GoldenPrompt",
    "GoldenReason",
    "GoldenResult",
    "GoldenSpec",
    "PairComparison",
    "Render",
    "judge",
    "mean_abs_difference",
    "unavailable",
]

#: Pixel standard deviation (0..255, the largest over R, G, B) under which an image is blank:
#: one flat colour, as a NaN the sampler served or a black safety replacement is.
BLANK_STDDEV = 2.0


class GoldenOutcome:
    PASSED = "Passed"
    FAILED = "Failed"
    #: Not judged yet: a revision could not render (not answering, an error status).
    PENDING = "Pending"


class GoldenReason:
    PASSED = "GoldenRenderPassed"
    MISMATCH = "GoldenRenderMismatch"
    BLANK = "GoldenRenderBlank"
    NAN = "GoldenRenderNaN"
    UNAVAILABLE = "GoldenRenderUnavailable"


@dataclass(frozen=True)
class GoldenPrompt:
    prompt: str
    seed: int


@dataclass(frozen=True)
class GoldenSpec:
    """``DiffusionModel.spec.goldenRenders``."""

    prompts: tuple[GoldenPrompt, ...]
    max_mean_difference: float = 0.1
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("goldenRenders needs at least one prompt")
        if not 0.0 <= self.max_mean_difference <= 1.0:
            raise ValueError(f"maxMeanDifference must be in 0..1, got {self.max_mean_difference}")
        if self.timeout_s <= 0:
            raise ValueError("goldenRenders.timeoutSeconds must be positive")

    @classmethod
    def from_spec(cls, golden: Mapping[str, Any] | None) -> GoldenSpec | None:
        """From the CRD's field names; None when the model sets no golden renders."""
        if not golden:
            return None
        return cls(
            prompts=tuple(GoldenPrompt(str(p["prompt"]), int(p.get("seed", 0))) for p in golden.get("prompts") or ()),
            max_mean_difference=float(golden.get("maxMeanDifference", 0.1)),
            steps=_opt(golden.get("steps"), int),
            width=_opt(golden.get("width"), int),
            height=_opt(golden.get("height"), int),
            guidance_scale=_opt(golden.get("guidanceScale"), float),
            negative_prompt=golden.get("negativePrompt"),
            timeout_s=float(golden.get("timeoutSeconds", 60)),
        )

    def request(self, index: int) -> dict[str, Any]:
        """The sampler's native ``POST /v1/generate`` body for prompt ``index``: one image, its
        seed, and the fixed settings (the model's defaults where the spec leaves them out)."""
        p = self.prompts[index]
        body: dict[str, Any] = {"prompt": p.prompt, "seed": p.seed, "n": 1, "timeout_s": self.timeout_s}
        for key, value in (("steps", self.steps), ("width", self.width), ("height", self.height),
                           ("guidance_scale", self.guidance_scale), ("negative_prompt", self.negative_prompt)):
            if value is not None:
                body[key] = value
        return body


def _opt(value: Any, kind: type) -> Any:
    return None if value is None else kind(value)


@dataclass(frozen=True)
class Render:
    """One image a sampler returned: the PNG and the sampler's own flags."""

    png: bytes
    #: The sampler's quality flag: ``ok``, ``blank`` or ``nan``.
    quality: str = "ok"


@dataclass(frozen=True)
class PairComparison:
    index: int
    seed: int
    #: Mean absolute pixel difference, 0..1 (None when the canary's image was not usable).
    difference: float | None
    canary: str  # ok | blank | nan
    stable: str

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "seed": self.seed, "canary": self.canary, "stable": self.stable}
        if self.difference is not None:
            out["meanDifference"] = round(self.difference, 6)
        return out


@dataclass(frozen=True)
class GoldenResult:
    revision: str
    outcome: str
    reason: str
    message: str
    threshold: float | None = None
    pairs: tuple[PairComparison, ...] = ()

    @property
    def final(self) -> bool:
        return self.outcome in (GoldenOutcome.PASSED, GoldenOutcome.FAILED)

    def to_status(self, at: str) -> dict[str, Any]:
        """``status.rollout.goldenRender``."""
        out: dict[str, Any] = {"revision": self.revision, "outcome": self.outcome, "reason": self.reason,
                               "message": self.message, "at": at, "renders": [p.to_dict() for p in self.pairs]}
        if self.threshold is not None:
            out["maxMeanDifference"] = self.threshold
        return out


def unavailable(revision: str, message: str) -> GoldenResult:
    """Not judged: a revision could not render. The rollout holds; the progress deadline ends it."""
    return GoldenResult(revision, GoldenOutcome.PENDING, GoldenReason.UNAVAILABLE, message)


def _rgb(png: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    return image.convert("RGB")


def _is_blank(image) -> bool:
    from PIL import ImageStat

    return max(ImageStat.Stat(image).stddev) < BLANK_STDDEV


def mean_abs_difference(a, b) -> float:
    """Mean absolute difference of two RGB images over all pixels and channels, 0..1. ``b`` is
    resized to ``a``'s size first (a revision that renders another size is compared as seen)."""
    from PIL import Image, ImageChops, ImageStat

    if b.size != a.size:
        b = b.resize(a.size, Image.Resampling.BILINEAR)
    means = ImageStat.Stat(ImageChops.difference(a, b)).mean
    return sum(means) / len(means) / 255.0


def _quality(render: Render, image) -> str:
    if render.quality == "nan":
        return "nan"
    if render.quality == "blank" or _is_blank(image):
        return "blank"
    return "ok"


def judge(spec: GoldenSpec, revision: str, stable: Sequence[Render], canary: Sequence[Render]) -> GoldenResult:
    """Canary ``revision``'s renders against the stable's, pair by pair (same prompt, same seed)."""
    if len(stable) != len(spec.prompts) or len(canary) != len(spec.prompts):
        raise ValueError("one stable and one canary render per golden prompt")
    pairs = []
    for i, (s, c) in enumerate(zip(stable, canary, strict=True)):
        s_img, c_img = _rgb(s.png), _rgb(c.png)
        s_q, c_q = _quality(s, s_img), _quality(c, c_img)
        difference = None if c_q == "nan" else mean_abs_difference(s_img, c_img)
        pairs.append(PairComparison(i, spec.prompts[i].seed, difference, c_q, s_q))
    t = spec.max_mean_difference

    def result(outcome: str, reason: str, message: str) -> GoldenResult:
        return GoldenResult(revision, outcome, reason, message, t, tuple(pairs))

    def named(p: PairComparison) -> str:
        return f"golden render {p.index} (seed {p.seed})"

    nan = [p for p in pairs if p.canary == "nan"]
    if nan:
        return result(GoldenOutcome.FAILED, GoldenReason.NAN,
                      f"{named(nan[0])}: the canary's image is NaN ({len(nan)} of {len(pairs)} renders)")
    blank = [p for p in pairs if p.canary == "blank" and p.stable != "blank"]
    if blank:
        return result(GoldenOutcome.FAILED, GoldenReason.BLANK,
                      f"{named(blank[0])}: the canary's image is blank where the stable's is not "
                      f"({len(blank)} of {len(pairs)} renders)")
    worst = max(pairs, key=lambda p: p.difference or 0.0)
    d = worst.difference or 0.0
    if d > t:
        over = sum(1 for p in pairs if (p.difference or 0.0) > t)
        return result(GoldenOutcome.FAILED, GoldenReason.MISMATCH,
                      f"{named(worst)}: mean pixel difference to the stable's render {d:.4f} above "
                      f"maxMeanDifference {t:g} ({over} of {len(pairs)} renders above)")
    return result(GoldenOutcome.PASSED, GoldenReason.PASSED,
                  f"{len(pairs)} golden renders within maxMeanDifference {t:g} of the stable's "
                  f"(largest {d:.4f}, render {worst.index})")
