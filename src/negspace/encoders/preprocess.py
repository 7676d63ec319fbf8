"""Image preprocessing choices shared by the backends.

``"model"`` uses the library's own evaluation transform (what the weights were published with).
``"openood"`` follows the OpenOOD benchmark's CLIP pipeline: resize the shorter side to
``size * 256 / 224`` (256 for a 224-pixel model) with bicubic interpolation, centre-crop ``size``,
then normalise with the model's mean and std (OpenAI CLIP's for CLIP weights). Use it to compare
numbers with papers evaluated under OpenOOD.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from negspace.errors import NegspaceError

if TYPE_CHECKING:  # torch and PIL load with the encoders, not with the command line's options
    import torch
    from PIL import Image

__all__ = ["PREPROCESS_CHOICES", "check_preprocess", "openood_transform", "stable_id"]

PREPROCESS_CHOICES = ("model", "openood")


def check_preprocess(preprocess: str) -> str:
    """Validate a preprocessing name."""
    if preprocess not in PREPROCESS_CHOICES:
        raise NegspaceError(f"Unknown preprocessing {preprocess!r}; choose one of {', '.join(PREPROCESS_CHOICES)}.")
    return preprocess


def openood_transform(
    size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[Callable[[Image.Image], torch.Tensor], str]:
    """Return the OpenOOD-style eval transform for a ``size``-pixel model and its stable id."""
    from torchvision import transforms  # slow to import; only this option needs it

    resize = round(size * 256 / 224)
    transform = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean=list(mean), std=list(std)),
        ]
    )
    ident = stable_id(
        "openood",
        {"resize": resize, "crop": size, "interpolation": "bicubic", "mean": mean, "std": std},
    )
    return transform, ident


def stable_id(kind: str, params: dict[str, object]) -> str:
    """A deterministic text id of a transform (``repr`` of transforms may hold memory addresses)."""
    return kind + ":" + json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
