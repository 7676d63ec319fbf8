"""What the InterNeg and TINS tests share: class prototypes of a synthetic world and a fixed,
deterministic stand-in for the text tower's inversion."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from negspace.data.shots import class_prototypes
from negspace.testing import SyntheticWorld


def prototypes_of(world: SyntheticWorld) -> np.ndarray:
    """The class prototypes of the world's ID images (their labels as the shots' classes)."""
    return class_prototypes(world.id_image_features, world.id_image_labels, len(world.class_names))


def rotating_inverter(world: SyntheticWorld, seed: int, strength: float) -> Callable[[np.ndarray], np.ndarray]:
    """Image features to "learned" unit features: the image turned by a fixed near-identity rotation."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(np.eye(world.dim) + strength * rng.standard_normal((world.dim, world.dim)))[0]

    def invert(features: np.ndarray) -> np.ndarray:
        out = np.asarray(features, np.float64) @ rotation
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    return invert
