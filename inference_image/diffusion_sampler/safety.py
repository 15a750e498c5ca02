"""The safety filter: a prompt blocklist plus, where the model ships one, the pipeline's own
image safety checker. Pluggable: anything with ``check_prompt`` and ``check_images`` works.

A blocked image is never returned as generated: it is replaced (black or blurred) and flagged.
The filter must not log prompts or matched terms (a matched term would reveal the prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image, ImageFilter


class SafetyFilter(Protocol):
    def check_prompt(self, prompt: str) -> bool:
        """True when the prompt may be generated."""

    def check_images(self, pipe, decoded, dtype) -> list[bool]:
        """One flag per image of a decoded batch (tensor in [-1, 1]); True means blocked."""


class DefaultSafetyFilter:
    def __init__(self, blocklist: Sequence[str], use_pipeline_checker: bool) -> None:
        self.blocklist = tuple(term.lower() for term in blocklist if term)
        self.use_pipeline_checker = use_pipeline_checker

    def check_prompt(self, prompt: str) -> bool:
        lowered = prompt.lower()
        return not any(term in lowered for term in self.blocklist)

    def has_image_checker(self, pipe) -> bool:
        return (
            self.use_pipeline_checker
            and getattr(pipe, "safety_checker", None) is not None
            and hasattr(pipe, "run_safety_checker")
        )

    def check_images(self, pipe, decoded, dtype) -> list[bool]:
        if not self.has_image_checker(pipe):
            return [False] * decoded.shape[0]
        _, flags = pipe.run_safety_checker(decoded, decoded.device, dtype)
        if flags is None:
            return [False] * decoded.shape[0]
        return [bool(flag) for flag in flags]


def replace(image: np.ndarray, how: str) -> np.ndarray:
    """The stand-in for a blocked image: black, or blurred past recognition."""
    if how == "blur":
        height, width = image.shape[:2]
        small = Image.fromarray(image).resize((max(1, width // 32), max(1, height // 32)), Image.Resampling.BILINEAR)
        big = small.resize((width, height), Image.Resampling.BILINEAR)
        big = big.filter(ImageFilter.GaussianBlur(max(width, height) / 16))
        return np.asarray(big, dtype=np.uint8).copy()
    return np.zeros_like(image)
