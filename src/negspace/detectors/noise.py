"""The 15 synthetic noise images that seed TANL's confident-OOD queue (docs/methods/tanl.md).

Three images each of Gaussian, uniform, Poisson, Gamma and salt-and-pepper noise, as in the
official TANL code: each image is drawn per pixel and channel, min-max normalised to ``[0, 1]``
where the distribution is unbounded (Gaussian ``N(0, 1)``, Poisson ``λ = 5``, Gamma ``k = 2, θ = 1``),
uniform ``U(0, 1)`` as drawn, salt-and-pepper ``0`` or ``1`` with probability 1/2, then stored as
8-bit RGB PIL images so that they go through the encoder's own preprocessing like any image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

NOISE_KINDS = ("gaussian", "uniform", "poisson", "gamma", "salt_and_pepper")
IMAGES_PER_KIND = 3


def _min_max(x: np.ndarray) -> np.ndarray:
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def _draw(rng: np.random.Generator, kind: str, shape: tuple[int, int, int]) -> np.ndarray:
    if kind == "gaussian":
        return _min_max(rng.standard_normal(shape))
    if kind == "uniform":
        return rng.random(shape)
    if kind == "poisson":
        return _min_max(rng.poisson(5.0, shape).astype(np.float64))
    if kind == "gamma":
        return _min_max(rng.gamma(2.0, 1.0, shape))
    if kind == "salt_and_pepper":
        return (rng.random(shape) >= 0.5).astype(np.float64)
    raise ValueError(f"unknown noise kind {kind!r}")


def make_noise_images(size: int = 224, seed: int = 0, per_kind: int = IMAGES_PER_KIND) -> list[Image.Image]:
    """``per_kind`` RGB noise images of each kind in :data:`NOISE_KINDS` order (15 by default).

    Pure and seeded: the same ``size`` and ``seed`` give the same pixels.
    """
    if size < 1 or per_kind < 1:
        raise ValueError(f"size and per_kind must be positive, got {size} and {per_kind}")
    rng = np.random.default_rng(seed)
    images = []
    for kind in NOISE_KINDS:
        for _ in range(per_kind):
            pixels = np.rint(255.0 * _draw(rng, kind, (size, size, 3))).astype(np.uint8)
            images.append(Image.fromarray(pixels))
    return images
