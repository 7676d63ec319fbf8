"""A CLIP image transform as data, applied with PIL and NumPy alone (no torch, no torchvision).

The torch backends transform images with a torchvision ``Compose`` (resize the shorter side,
centre-crop, to a float tensor, normalise). :func:`recipe_of` reads such a ``Compose`` into an
:class:`ImageRecipe`, which gives the same ``(3, H, W)`` float32 array: the resize is PIL's, as
torchvision's on a PIL image is, and the crop offsets, padding, ``/ 255`` and ``(x - mean) / std``
are the same float32 operations. What serves images without torch
(:mod:`negspace.encoders.onnx_images`) keeps a recipe only after checking it against the torch
transform it was read from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["ImageRecipe", "recipe_of"]

# torchvision's InterpolationMode values that PIL resamples with (torchvision's own mapping)
_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_RGB_STEPS = ("MaybeConvertMode", "_convert_to_rgb")
_TENSOR_STEPS = ("ToTensor", "MaybeToTensor")


@dataclass(frozen=True)
class ImageRecipe:
    """Resize, centre-crop, scale to [0, 1] and normalise an RGB image.

    Attributes:
        resize: ``(S,)`` resizes the shorter side to ``S`` keeping the aspect ratio (the longer
            side truncated, as torchvision computes it); ``(H, W)`` resizes to that size; ``()``
            does not resize.
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"`` (PIL's resampling).
        crop: ``(H, W)`` of the centre crop (an image smaller than it is padded with black
            first), or ``()`` for none.
        mean, std: per channel, of ``(x / 255 - mean) / std``.
    """

    resize: tuple[int, ...]
    interpolation: str
    crop: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> np.ndarray:
        """The ``(3, H, W)`` float32 model input of an RGB ``image``."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        pixels = np.asarray(self._resized(rgb))
        if self.crop:
            pixels = _centre_crop(pixels, self.crop[0], self.crop[1])
        scaled = pixels.astype(np.float32) / np.float32(255)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))

    def _resized(self, image: Image.Image) -> Image.Image:
        if not self.resize:
            return image
        width, height = image.size
        if len(self.resize) == 1:  # the shorter side to resize[0]; int() as torchvision truncates
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.resize[0], int(self.resize[0] * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            new_h, new_w = self.resize
        if (new_w, new_h) == (width, height):
            return image
        return image.resize((new_w, new_h), _PIL_RESAMPLE[self.interpolation])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecipe:
        """The recipe :meth:`to_json` wrote; a ``ValueError`` for anything else."""
        try:
            recipe = cls(
                resize=tuple(int(v) for v in data["resize"]),
                interpolation=str(data["interpolation"]),
                crop=tuple(int(v) for v in data["crop"]),
                mean=_triple(data["mean"]),
                std=_triple(data["std"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not an image recipe ({err})") from None
        if recipe.interpolation not in _PIL_RESAMPLE or len(recipe.resize) > 2 or len(recipe.crop) not in (0, 2):
            raise ValueError("not an image recipe (unknown interpolation or sizes)")
        return recipe


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


def _centre_crop(pixels: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """torchvision's ``center_crop``: pad with zeros where the image is smaller (the extra pixel
    of an odd padding on the right and bottom), then cut at ``round((size - crop) / 2)``."""
    height, width = pixels.shape[:2]
    if crop_w > width or crop_h > height:
        pad_w, pad_h = max(crop_w - width, 0), max(crop_h - height, 0)
        pixels = np.pad(pixels, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
        height, width = pixels.shape[:2]
    top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)  # half to even, as torchvision
    return pixels[top : top + crop_h, left : left + crop_w]


def _size(value: Any) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def recipe_of(transform: Any) -> ImageRecipe | None:
    """The recipe of a torchvision ``Compose`` of [Resize] [CenterCrop] [to RGB] ToTensor
    Normalize (what open_clip and ``--preprocess openood`` build), or ``None`` for any other
    transform (a Hugging Face image processor, another resize mode, an extra step)."""
    steps = list(getattr(transform, "transforms", None) or [])
    resize: tuple[int, ...] = ()
    crop: tuple[int, ...] = ()
    interpolation = "bicubic"
    if steps and type(steps[0]).__name__ == "Resize":
        step = steps.pop(0)
        mode = getattr(step.interpolation, "value", step.interpolation)
        if getattr(step, "max_size", None) is not None or mode not in _PIL_RESAMPLE:
            return None
        resize, interpolation = _size(step.size), str(mode)
    if steps and type(steps[0]).__name__ == "CenterCrop":
        crop = _size(steps.pop(0).size)
        crop = crop * 2 if len(crop) == 1 else crop
    while steps and getattr(steps[0], "mode", "RGB") == "RGB" and _name(steps[0]) in _RGB_STEPS:
        steps.pop(0)  # every negspace path gives the transform RGB images already
    if len(steps) != 2 or _name(steps[0]) not in _TENSOR_STEPS or type(steps[1]).__name__ != "Normalize":
        return None
    mean, std = steps[1].mean, steps[1].std
    if len(mean) != 3 or len(std) != 3:
        return None
    return ImageRecipe(resize, interpolation, crop, _triple(mean), _triple(std))


def _name(step: Any) -> str:
    return str(getattr(step, "__name__", type(step).__name__))
