"""Colours and surface textures: a colour near a palette's, smooth noise, and the brightness
fields (paint, fabric weave, wood grain, rough stone or carpet, leaves, gloss) that keep surfaces
from looking flat, as a model that learns flat colours learns little about photos.
"""

import math

import numpy as np
from PIL import Image


def pick_colour(rng: np.random.Generator, palette) -> np.ndarray:
    """A colour near one of the palette's, as the same class differs from photo to photo."""
    base = np.asarray(palette[rng.integers(len(palette))], dtype=np.float32)
    return base * rng.normal(1, 0.05, 3).astype(np.float32) * rng.uniform(0.85, 1.12)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise (about unit variance) with features about `cell` pixels wide."""
    grid = rng.standard_normal(
        (max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)), dtype=np.float32
    )
    resized = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized) * 1.6


def texture_field(rng: np.random.Generator, kind: str, height: int, width: int, angle: float = 0.0):
    """A brightness field around 1: plain paint, fabric weave, wood grain along `angle`,
    rough (stone, concrete, carpet), leaves or a glossy gradient."""
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    if kind == "plain":
        return 1 + 0.015 * smooth_noise(rng, height, width, 60)
    if kind == "fabric":
        weave = np.sin(cols * 2.2) * np.sin(rows * 2.2)
        fine = rng.standard_normal((height, width), dtype=np.float32)
        return 1 + 0.06 * smooth_noise(rng, height, width, 20) + 0.04 * weave + 0.035 * fine
    if kind == "wood":
        across = -cols * math.sin(angle) + rows * math.cos(angle)
        phase = across * rng.uniform(0.6, 1.5) + 1.2 * smooth_noise(rng, height, width, 24)
        return (
            1
            + 0.07 * np.sin(phase)
            + 0.04 * np.sin(2.7 * phase)
            + 0.03 * smooth_noise(rng, height, width, 30)
        )
    if kind == "rough":
        fine = rng.standard_normal((height, width), dtype=np.float32)
        return 1 + 0.05 * smooth_noise(rng, height, width, 5) + 0.04 * fine
    if kind == "leaves":
        fine = rng.standard_normal((height, width), dtype=np.float32)
        return np.clip(1 + 0.3 * smooth_noise(rng, height, width, 3) + 0.15 * fine, 0.3, 1.8)
    if kind == "gloss":
        return 0.85 + 0.3 * rows / max(1, height - 1) + 0.02 * smooth_noise(rng, height, width, 30)
    raise ValueError(f"unknown texture {kind!r}")
