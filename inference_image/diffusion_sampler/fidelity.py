"""Image fidelity between two runs of the same seeds (fp8 against fp16, a knob on against off).

PSNR in dB over 8-bit RGB: 20 * log10(255 / RMSE). Identical images give ``inf``; images one
8-bit level apart everywhere give 48.1 dB; above ~40 dB differences are hard to see. Used by
``benchmarks/gpu_bench.py``; numpy only, so it runs anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 20 * math.log10(255.0) - 10 * math.log10(mse)


def summary(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean and worst PSNR over image pairs, plus the largest per-pixel difference (levels)."""
    values, worst_diff = [], 0
    for a, b in pairs:
        values.append(psnr(a, b))
        worst_diff = max(worst_diff, int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
    if not values:
        raise ValueError("no image pairs")
    finite = [v for v in values if math.isfinite(v)]
    # The mean of dB values over the finite ones; identical pairs count as the best of them.
    mean = sum(finite) / len(finite) if finite else math.inf
    return {"images": len(values), "psnr_mean_db": mean, "psnr_min_db": min(values), "max_abs_diff": worst_diff}
